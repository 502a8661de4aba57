"""A batch whose durable commit fails is answered 503 and leaves no learned link in force: the inventory's
learning is a transaction with the batch's (``DurableEngine``), in both state layouts of a single node.

An 8.2 that moves an activated ESME to another Comms Hub fails to commit (the store's ``messages`` table
is gone for a moment: a real SQLite failure in the commit). It used to stay learned in memory, so an AD1
of that hub, decided next, was attributed to the ESME's activation and suppressed, on evidence the store
never kept and the DSP might never deliver again. It is decided as if the 8.2 had never arrived."""

from __future__ import annotations

from pathlib import Path

import pytest
from servicekit import DNO_USER, Receiver, make_lab, pipeline_config, running

from gateway.service.serve import build_gateway, make_service
from gateway.service.simulate import DspSimulator, TimedMessage


@pytest.mark.parametrize("state_in_store", [True, False], ids=["one-database", "two-databases"])
async def test_a_failed_batch_leaves_no_learned_link_and_a_later_ad1_is_decided_as_if_it_never_happened(
    tmp_path: Path, receiver: Receiver, state_in_store: bool
) -> None:
    lab = make_lab("failed-learning", tmp_path / "reference", stream=0, first_meter=300, first_counter=3000)
    world, f = lab.world, lab.world.factory
    steps = {s.label: s for s in lab.demo.steps}
    esme, _ch, mpan = world.meter(1)
    _other, other_hub, other_mpan = world.meter(2)
    t = lab.demo.t
    activation = [
        TimedMessage(steps[label].at, steps[label].lane, steps[label].body)
        for label in ("11.3 request, meter 1 (immediate)", "11.3 response: success")
    ]
    rehomed = f.inventory_response(t("08:01:00"), 7003, [(esme, "ESME", mpan, "Landis+Gyr", "E470"),
                                                         (other_hub, "CHF", None, "Toshiba", "CHF1")])  # fmt: skip
    ad1 = TimedMessage(
        t("08:06:10"), "inline", f.ad1(other_hub, other_mpan, t("08:03:40"), t("08:06:10"), 7101)
    )
    cfg = pipeline_config(tmp_path, lab.reference, receiver.url, DNO_USER, state_in_store=state_in_store)
    gateway = build_gateway(cfg)
    async with (
        running(make_service(gateway)) as service,
        DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp,
    ):
        proc = gateway.processor
        assert proc is not None and proc.one_transaction is state_in_store
        durable = proc.durable
        assert durable is not None
        for m in activation:
            assert (await dsp.post(m)).decision == "observe"

        def rename(old: str, new: str) -> None:
            durable.store._conn().execute(f"ALTER TABLE {old} RENAME TO {new}")

        await proc.call(lambda: rename("messages", "messages_away"))
        failed = await dsp.post(TimedMessage(t("08:05:00"), "observation", rehomed))
        assert failed.status == 503 and failed.text.startswith("store_unavailable"), failed
        await proc.call(lambda: rename("messages_away", "messages"))
        answer = await dsp.post(ad1)
        assert (answer.status, answer.decision) == (200, "forward"), answer.text  # it was suppressed
        assert gateway.inventory.ch_for_esme(esme) != other_hub  # the 8.2 is not durable, nor in force
        await receiver.wait_for(1)
        reasons = {str(m["message_id"]): str(m["reason"]) for m in await proc.call(durable.store.messages)}
    assert reasons[str(answer.message_id)] == "no-activation"  # meter 2's own hub, without meter 1
    assert [r.body for r in receiver.log] == [ad1.body]

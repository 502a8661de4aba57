"""A running gateway takes the DSP's status change alerts that end links: after its Comms Hub is
decommissioned (``CHFDecommissioning``) and its MPxN corrected (``MeterIdentity`` stating another), an
activated ESME's hub's AD1 carrying the old MPxN is no longer attributed to the activation: it reaches
the DNO, and the ends outlive a restart (an older 8.2 re-delivered after it does not restore them)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from servicekit import DNO_USER, Receiver, make_lab, pipeline_config, running

from gateway.duis.encode import encode
from gateway.duis.model import DCCAlertMessage, DeviceStatusChangeEvent, MeterMPxNs, Response, ResponseHeader
from gateway.duis.values import MessageId
from gateway.duis.xmldsig import sign
from gateway.service.serve import build_gateway, engine_db_path, make_service
from gateway.service.simulate import DspSimulator, TimedMessage
from gateway.store.sqlite import SqliteStore
from gateway.testkit.messages import DCC_EUI, SUPPLIER_EUI
from gateway.testkit.scenario import World


def _alert(world: World, alert: DeviceStatusChangeEvent, at: dt.datetime, counter: int) -> TimedMessage:
    header = ResponseHeader("I0", at, None, MessageId(DCC_EUI, SUPPLIER_EUI, counter))
    body = sign(encode(Response(header, DCCAlertMessage("N16", alert))), world.dsp.key, world.dsp.certificate)
    return TimedMessage(at, "observation", body)


async def test_a_decommissioned_hub_and_a_corrected_mpxn_end_the_links_on_a_running_gateway_and_after_a_restart(
    tmp_path: Path, receiver: Receiver
) -> None:
    lab = make_lab("status-unlink", tmp_path / "reference", stream=0, first_meter=300, first_counter=3000)
    world, f = lab.world, lab.world.factory
    steps = {s.label: s for s in lab.demo.steps}
    esme, ch, mpan = world.meter(1)
    t = lab.demo.t
    activation = [
        TimedMessage(steps[label].at, steps[label].lane, steps[label].body)
        for label in ("11.3 request, meter 1 (immediate)", "11.3 response: success")
    ]
    hub_down = _alert(world, DeviceStatusChangeEvent(ch, "CHFDecommissioning"), t("08:01:00"), 7001)
    corrected = DeviceStatusChangeEvent(esme, "MeterIdentity", MeterMPxNs("1900000007774"), "A")
    identity = _alert(world, corrected, t("08:01:30"), 7002)
    ad1 = TimedMessage(t("08:06:10"), "inline", f.ad1(ch, mpan, t("08:03:40"), t("08:06:10"), 7101))
    cfg = pipeline_config(tmp_path, lab.reference, receiver.url, DNO_USER)
    async with (
        running(make_service(build_gateway(cfg))) as service,
        DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp,
    ):
        for m in (*activation, hub_down, identity):
            assert (await dsp.post(m)).decision == "observe"
        answer = await dsp.post(ad1)
        ad1_ids = [answer.message_id]
        # it used to be suppressed (the hub and the MPAN both joined the activated ESME)
        assert (answer.status, answer.decision) == (200, "forward"), answer.text
        await receiver.wait_for(1)
    # restarted: an 8.2 of 07:00 (before both ends), re-delivered now, does not restore the links
    old_read = f.inventory_response(t("07:00"), 7003, [(esme, "ESME", mpan, "Landis+Gyr", "E470"),
                                                       (ch, "CHF", None, "Toshiba", "CHF1")])  # fmt: skip
    again = TimedMessage(t("08:10:00"), "inline", f.ad1(ch, mpan, t("08:07:00"), t("08:10:00"), 7102))
    async with (
        running(make_service(build_gateway(cfg))) as service,
        DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp,
    ):
        assert (await dsp.post(TimedMessage(t("08:09:00"), "observation", old_read))).decision == "observe"
        answer = await dsp.post(again)
        ad1_ids.append(answer.message_id)
        assert (answer.status, answer.decision) == (200, "forward"), answer.text
        await receiver.wait_for(2)
    assert [r.body for r in receiver.log] == [ad1.body, again.body]
    store = SqliteStore(engine_db_path(cfg), checkpoint_interval=0)
    try:
        reasons = {str(m["message_id"]): str(m["reason"]) for m in store.messages()}
    finally:
        store.close()
    assert [reasons[str(a)] for a in ad1_ids] == ["ch-unknown", "ch-unknown"]
    notes = [r for r in reasons.values() if r.startswith("unlinked by ")]
    assert sorted(n.split(":")[0].split(" at ")[0] for n in notes) == [
        "unlinked by CHFDecommissioning",
        "unlinked by MeterIdentity",
    ], reasons

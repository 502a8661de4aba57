"""The decision pipeline writes each batch's routes and outbox rows from its engine thread (the transport
store's thread), on the store's connection.

Pinned down, with the decision state in its own file (``state_in_store = false``): a request is answered
only once its forward is in the outbox; when that outbox transaction fails, the request gets 503
``store_unavailable`` while its decision stays durable, and the forward still reaches the DNO exactly
once, through the DSP's re-delivery or through the gateway's own redelivery scan.

With the decision state in the transport store's database (``state_in_store = true``, the default),
decision, route and outbox row are one transaction: a failure leaves nothing of the request behind (503,
no decision, no row), the DSP's re-delivery decides it afresh and it reaches the DNO exactly once.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from servicekit import Receiver, outages, pipeline_config, running

from gateway.service.serve import build_gateway, make_service
from gateway.service.simulate import DspSimulator
from gateway.testkit.messages import DNO_EUI
from gateway.testkit.scenario import World
from gbcs.eui import format_eui

DNO_USER = format_eui(DNO_EUI)


@pytest.fixture(scope="module")
def world_and_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[World, dict[str, Path]]:
    world = World.generated("pipeline-outbox")
    return world, world.write_reference(tmp_path_factory.mktemp("reference"))


@pytest.mark.parametrize("recovery", ["dsp-redelivers", "redelivery-scan"])
async def test_a_failed_outbox_write_is_503_and_the_forward_still_reaches_the_dno_once(
    tmp_path: Path, world_and_reference: tuple[World, dict[str, Path]], recovery: str
) -> None:
    world, reference = world_and_reference
    first, broken, last = outages(world, 3)
    receiver = Receiver()
    await receiver.start()
    try:
        gateway = build_gateway(pipeline_config(tmp_path, reference, receiver.url, DNO_USER, state_in_store=False))
        service = make_service(gateway)
        async with running(service):
            proc = gateway.processor
            assert proc is not None and not proc.one_transaction
            assert (tmp_path / "state" / "engine.sqlite3").is_file()
            async with DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp:
                ok = await dsp.post(first)
                assert (ok.status, ok.decision) == (200, "forward")
                await receiver.wait_for(1)  # answered only once its outbox row was committed

                # the outbox database refuses the routes row (a real SQLite error: the table is gone)
                await proc.store.write(lambda c: c.execute("ALTER TABLE routes RENAME TO routes_away"))
                failed = await dsp.post(broken)
                assert failed.status == 503 and failed.text.startswith("store_unavailable"), failed
                durable = proc.durable
                assert durable is not None
                kept = {bytes(m["raw"]): m for m in await proc.call(durable.store.messages)}
                assert kept[broken.body]["status"] == "forward"  # decided, durably

                await proc.store.write(lambda c: c.execute("ALTER TABLE routes_away RENAME TO routes"))
                if recovery == "dsp-redelivers":  # the DCC re-delivers what it got no 2xx for
                    again = await dsp.post(broken)
                    assert (again.status, again.decision) == (200, "forward")
                else:  # the gateway's redelivery scan (at start-up, then every few seconds) finds the forward
                    await proc.redeliver()  # decision not flagged as in the outbox (0 if it already ran)
                after = await dsp.post(last)
                assert (after.status, after.decision) == (200, "forward")
                await receiver.wait_for(3)
                await asyncio.sleep(0.3)  # a duplicate delivery would show up now
    finally:
        await receiver.stop()
    # each forward delivered exactly once, with its original bytes
    assert len({r.message_id for r in receiver.log}) == len(receiver.log) == 3
    assert sorted(r.body for r in receiver.log) == sorted(m.body for m in (first, broken, last))


async def test_with_the_state_in_the_store_a_failed_outbox_write_leaves_nothing_and_the_redelivery_forwards_once(
    tmp_path: Path, world_and_reference: tuple[World, dict[str, Path]]
) -> None:
    world, reference = world_and_reference
    first, broken, last = outages(world, 3)
    receiver = Receiver()
    await receiver.start()
    try:
        cfg = pipeline_config(tmp_path, reference, receiver.url, DNO_USER)
        assert cfg.pipeline.state_in_store  # the default
        gateway = build_gateway(cfg)
        service = make_service(gateway)
        async with running(service):
            proc = gateway.processor
            assert proc is not None and proc.one_transaction
            assert not (tmp_path / "state" / "engine.sqlite3").exists()
            async with DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp:
                ok = await dsp.post(first)
                assert (ok.status, ok.decision) == (200, "forward")
                await receiver.wait_for(1)
                engine_commits = proc.batches

                await proc.store.write(lambda c: c.execute("ALTER TABLE routes RENAME TO routes_away"))
                failed = await dsp.post(broken)
                assert failed.status == 503 and failed.text.startswith("store_unavailable"), failed
                durable = proc.durable
                assert durable is not None
                kept = {bytes(m["raw"]) for m in await proc.call(durable.store.messages)}
                assert broken.body not in kept  # the decision went with the outbox row: nothing is half-done
                assert await proc.redeliver() == 0  # and there is nothing for the scan to repair

                await proc.store.write(lambda c: c.execute("ALTER TABLE routes_away RENAME TO routes"))
                again = await dsp.post(broken)  # the DCC re-delivers what it got no 2xx for
                assert (again.status, again.decision) == (200, "forward")
                after = await dsp.post(last)
                assert (after.status, after.decision) == (200, "forward")
                await receiver.wait_for(3)
                await asyncio.sleep(0.3)  # a duplicate delivery would show up now
                assert proc.batches > engine_commits
                # every forward is flagged as in the outbox in its own transaction: nothing left to flag
                assert await proc.call(durable.store.undelivered) == []
    finally:
        await receiver.stop()
    assert len({r.message_id for r in receiver.log}) == len(receiver.log) == 3
    assert sorted(r.body for r in receiver.log) == sorted(m.body for m in (first, broken, last))

"""``[pipeline] state_in_store`` (the default): the decision state lives in the transport store's database,
so a batch's decisions, its routes, its outbox rows and their in-the-outbox flags are ONE transaction on
the store's one connection. Pinned down: the statements of one inline message's batch, in the order the
connection ran them; refusing to start when the decision state is in the other place (a held message or
its evidence would silently be forgotten); where the audit CLI finds the state.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from servicekit import Receiver, outages, pipeline_config, running

from gateway.engine.errors import StoreError
from gateway.service.serve import build_gateway, engine_db_path, make_service
from gateway.service.simulate import DspSimulator
from gateway.testkit.messages import DNO_EUI
from gateway.testkit.scenario import World
from gbcs.eui import format_eui

DNO_USER = format_eui(DNO_EUI)


@pytest.fixture(scope="module")
def world_and_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[World, dict[str, Path]]:
    world = World.generated("state-in-store")
    return world, world.write_reference(tmp_path_factory.mktemp("reference"))


async def test_one_message_is_decided_routed_enqueued_and_flagged_in_one_transaction(
    tmp_path: Path, world_and_reference: tuple[World, dict[str, Path]]
) -> None:
    world, reference = world_and_reference
    (ad1,) = outages(world, 1)
    receiver = Receiver()
    await receiver.start()
    try:
        gateway = build_gateway(pipeline_config(tmp_path, reference, receiver.url, DNO_USER))
        service = make_service(gateway)
        async with running(service):
            proc = gateway.processor
            assert proc is not None and proc.one_transaction
            statements: list[str] = []
            conn = await proc.call(proc.store.thread_connection)
            await proc.call(lambda: conn.set_trace_callback(statements.append))
            async with DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp:
                ok = await dsp.post(ad1)
            assert (ok.status, ok.decision) == (200, "forward")
            await proc.call(lambda: conn.set_trace_callback(None))
            await receiver.wait_for(1)
    finally:
        await receiver.stop()
    start = next(i for i, s in enumerate(statements) if s.startswith("INSERT INTO messages"))
    begin = max(i for i, s in enumerate(statements[:start]) if s.startswith("BEGIN"))
    end = start + next(i for i, s in enumerate(statements[start:]) if s == "COMMIT")
    batch = statements[begin : end + 1]
    firsts = [" ".join(s.split()[:4]) for s in batch]
    assert firsts[0] == "BEGIN IMMEDIATE" and firsts[-1] == "COMMIT"
    assert sum(1 for s in batch if s == "COMMIT") == 1  # ONE transaction ...
    for part in ("INSERT INTO messages", "INSERT INTO decisions(seq, message_id,",  # ... the decision
                 "INSERT OR IGNORE INTO routes", "INSERT OR IGNORE INTO outbox",  # its route and outbox row
                 "UPDATE messages SET delivered=1"):  # fmt: skip
        assert any(s.startswith(part) for s in batch), (part, firsts)


async def test_a_gateway_refuses_to_start_when_its_decision_state_is_in_the_other_place(
    tmp_path: Path, world_and_reference: tuple[World, dict[str, Path]]
) -> None:
    world, reference = world_and_reference
    first, second = outages(world, 2)
    receiver = Receiver()
    await receiver.start()
    try:
        for separate, ad1 in ((True, first), (False, second)):
            work = tmp_path / ("separate" if separate else "in-store")
            cfg = pipeline_config(work, reference, receiver.url, DNO_USER, state_in_store=not separate)
            service = make_service(build_gateway(cfg))
            async with (
                running(service),
                DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp,
            ):
                assert (await dsp.post(ad1)).status == 200
            other = pipeline_config(work, reference, receiver.url, DNO_USER, state_in_store=separate)
            refused = make_service(build_gateway(other))
            with pytest.raises(StoreError, match="state_in_store"):
                await refused.start()
            await refused.stop()
    finally:
        await receiver.stop()


def test_the_decision_state_file_is_the_transport_store_unless_state_in_store_is_off(
    tmp_path: Path, world_and_reference: tuple[World, dict[str, Path]]
) -> None:
    _world, reference = world_and_reference
    cfg = pipeline_config(tmp_path, reference, "http://127.0.0.1:9/", DNO_USER)
    assert engine_db_path(cfg) == Path(cfg.store.path)
    separate = pipeline_config(tmp_path, reference, "http://127.0.0.1:9/", DNO_USER, state_in_store=False)
    assert engine_db_path(separate) == tmp_path / "state" / "engine.sqlite3"

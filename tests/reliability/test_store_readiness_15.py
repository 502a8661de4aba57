"""``/readyz`` and ``[store] busy_timeout`` with the decision state in a database of its own
(``[pipeline] state_in_store = false``: ``state_dir/engine.sqlite3``).

- ``/readyz`` probed the transport store's database only: with the engine's database read-only, full or locked by
  another process, every decision was refused (503) while ``/readyz`` answered ``ready`` — a load balancer kept
  sending the DSP's messages to an instance that could decide none. It now also commits a one-page write in the
  engine's database (on the engine thread, in order with the decisions).
- The engine's database was opened with the default five-second lock wait whatever ``[store] busy_timeout`` said:
  with another process holding its lock, each request waited 5 s before its 503 (the DSP's own timeout may be
  shorter). It waits ``busy_timeout`` now, as the transport store does.

The faults are real SQLite conditions on the gateway's own files: another connection holding the write lock,
``PRAGMA query_only`` on the engine's connection.
"""

from __future__ import annotations

import time
from pathlib import Path

from servicekit import Receiver, outages, running
from test_store_metrics_transport_15 import (  # the same gateway set-up and probes as the store-metric tests
    DNO_USER,
    config,
    gateway_and_dsp,
    processor_of,
    readyz,
    world_and_reference,  # noqa: F401  (a fixture)
    write_lock,
)

from gateway.service.serve import build_gateway, engine_db_path, make_service
from gateway.service.simulate import DspSimulator
from gateway.testkit.scenario import World


async def test_with_two_databases_readyz_says_store_unavailable_while_the_engine_database_cannot_record(
    tmp_path: Path,
    world_and_reference: tuple[World, dict[str, Path]],  # noqa: F811
    receiver: Receiver,
) -> None:
    world, reference = world_and_reference
    (first,) = outages(world, 1)
    async with gateway_and_dsp(config(tmp_path, reference, receiver, two_databases=True)) as (gateway, service, dsp):
        proc = processor_of(gateway)
        assert not proc.one_transaction and proc.durable is not None
        engine_store = proc.durable.store
        assert await readyz(service) == (200, "ready")
        await proc.call(lambda: engine_store._conn().execute("PRAGMA query_only = 1"))  # type: ignore[attr-defined]
        refused = await dsp.post(first)
        assert refused.status == 503 and refused.text.startswith("store_unavailable"), refused
        assert await readyz(service) == (503, "store_unavailable")
        await proc.call(lambda: engine_store._conn().execute("PRAGMA query_only = 0"))  # type: ignore[attr-defined]
        assert await readyz(service) == (200, "ready")
        taken = await dsp.post(first)
        assert (taken.status, taken.decision) == (200, "forward"), taken
        await receiver.wait_for(1)


async def test_with_two_databases_a_lock_on_the_engine_database_is_waited_for_busy_timeout_not_five_seconds(
    tmp_path: Path,
    world_and_reference: tuple[World, dict[str, Path]],  # noqa: F811
    receiver: Receiver,
) -> None:
    world, reference = world_and_reference
    (first,) = outages(world, 1)
    gateway = build_gateway(config(tmp_path, reference, receiver, two_databases=True))  # busy_timeout = 0.2
    service = make_service(gateway)
    async with (
        running(service),
        DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp,
    ):
        proc = processor_of(gateway)
        assert not proc.one_transaction
        with write_lock(engine_db_path(gateway.config)):
            began = time.monotonic()
            refused = await dsp.post(first)
            waited = time.monotonic() - began
            assert refused.status == 503 and refused.text.startswith("store_unavailable"), refused
            assert waited < 2.5, waited  # 5 s and more with the default lock wait
            assert await readyz(service) == (503, "store_unavailable")
        assert await readyz(service) == (200, "ready")
        taken = await dsp.post(first)
        assert (taken.status, taken.decision) == (200, "forward"), taken

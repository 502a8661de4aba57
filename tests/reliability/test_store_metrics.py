"""The storage's health in ``/metrics`` (``duisgw_store_…``), under the faults of test_storage_faults.py, on a
real ``duisgw serve``: the disk full (``RLIMIT_FSIZE``), a write lock held past ``busy_timeout``, the WAL
deleted. An operator's Prometheus alerts on ``duisgw_store_unavailable`` and on the failures by reason, not only
on the rejects, the logs and ``/readyz``; and the engine is rebuilt from the store once per fault at most (a
rebuild reads every idempotency key within the retention: ~35 s at 2 M keys), not once per refused batch.

Last, the second layout (``state_in_store = false``): the outbox database's commit of a batch's routes and
outbox rows is checked for changed files after it commits too, as every other commit is (in-process gateway:
the files are deleted from inside that very transaction, by a trigger, so that the check before it passes).
"""

from __future__ import annotations

import os
import resource
import sqlite3
from pathlib import Path

from e2ekit import Traffic, scrape
from servicekit import DNO_USER, Receiver, make_lab, pipeline_config, running
from test_storage_faults import (
    FULL,
    Gateway,
    gateways,
    make_gateway,
    post,
    post_all,
    post_until_taken,
    prlimit_allowed,
    started,
    traffic,
)

from gateway.service.serve import build_gateway, make_service
from gateway.service.simulate import DspSimulator, TimedMessage

__all__ = ["gateways", "prlimit_allowed", "traffic"]  # (the fixtures of test_storage_faults)

REASONS = ("locked", "full", "io", "readonly", "corrupt", "files_changed", "other")


async def store_metrics(gw: Gateway) -> dict[str, float]:
    """The ``duisgw_store_…`` samples of the gateway's ``/metrics``, by name (and ``reason`` / ``database.file``)."""
    out: dict[str, float] = {}
    for (name, labels), value in (await scrape(gw.admin_port)).items():
        if not name.startswith("duisgw_store_"):
            continue
        tags = dict(labels)
        key = name
        if "reason" in tags:
            key = f"{name}.{tags['reason']}"
        elif "le" in tags:
            continue
        elif "database" in tags:
            key = f"{name}.{tags['database']}" + (f".{tags['file']}" if "file" in tags else "")
        out[key] = value
    return out


def failures(m: dict[str, float]) -> dict[str, float]:
    return {r: m[f"duisgw_store_commit_failures_total.{r}"] for r in REASONS}


async def test_a_full_disk_shows_in_the_store_metrics_and_the_engine_is_rebuilt_once_when_it_clears(
    tmp_path: Path, traffic: Traffic, receiver: Receiver, gateways: list[Gateway], prlimit_allowed: None
) -> None:
    msgs = traffic.merged()
    gw = await started(make_gateway(tmp_path / "gw", traffic, receiver, gateways, tmp_path / "logs"))
    await post_all(gw, msgs[:8])
    healthy = await store_metrics(gw)
    assert healthy["duisgw_store_unavailable"] == 0
    assert healthy["duisgw_store_commit_seconds_count"] >= 1
    assert set(failures(healthy).values()) == {0.0}  # every reason's series exists from the start
    assert healthy["duisgw_store_engine_rebuild_seconds_count"] == 0
    db = gw.config.parent / "outbox.sqlite3"
    assert healthy["duisgw_store_file_bytes.store.db"] == os.stat(db).st_size > 0
    assert "duisgw_store_file_bytes.store.wal" in healthy
    assert "duisgw_store_file_bytes.engine.db" not in healthy  # (one database: state_in_store)

    gw.limit_file_size(FULL)  # the disk is full from here on
    refused = []
    for m in msgs[8:14]:
        a = await post(gw, m)
        assert (a.status, a.text) == (503, "store_unavailable"), a
        refused.append(m)
    during = await store_metrics(gw)
    assert during["duisgw_store_unavailable"] == 1
    by_reason = failures(during)
    assert by_reason["full"] + by_reason["io"] >= len(refused), by_reason  # (a short write: full, or EIO)
    assert by_reason["locked"] == by_reason["files_changed"] == 0
    assert during["duisgw_store_engine_rebuild_seconds_count"] == 0  # not one rebuild per refused batch

    gw.limit_file_size(resource.RLIM_INFINITY)  # space again: no restart
    for m in refused:
        a = await post_until_taken(gw, m)
        assert a.status in (200, 202, 204), (a, gw.log_tail())
    after = await store_metrics(gw)
    assert after["duisgw_store_unavailable"] == 0
    assert after["duisgw_store_engine_rebuild_seconds_count"] == 1  # once, when the store could record again
    assert after["duisgw_store_commit_seconds_count"] > healthy["duisgw_store_commit_seconds_count"]
    assert gw.terminate() == 0


async def test_a_lock_held_past_busy_timeout_counts_as_locked_and_rebuilds_nothing(
    tmp_path: Path, traffic: Traffic, receiver: Receiver, gateways: list[Gateway]
) -> None:
    msgs = traffic.merged()
    gw = await started(
        make_gateway(
            tmp_path / "gw", traffic, receiver, gateways, tmp_path / "logs", store="busy_timeout = 0.5"
        )
    )
    await post_all(gw, msgs[:6])
    holder = sqlite3.connect(str(gw.config.parent / "outbox.sqlite3"), isolation_level=None, timeout=10)
    try:
        holder.execute("BEGIN IMMEDIATE")
        refused = msgs[6:9]
        for m in refused:
            a = await post(gw, m)
            assert (a.status, a.text) == (503, "store_unavailable"), a
        during = await store_metrics(gw)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert during["duisgw_store_unavailable"] == 1
    assert failures(during)["locked"] >= len(refused)
    for m in refused:
        a = await post_until_taken(gw, m)
        assert a.status in (200, 202, 204), a
    after = await store_metrics(gw)
    assert after["duisgw_store_unavailable"] == 0
    # the batch fails when it opens its transaction, before the engine decides it: nothing to rebuild
    assert after["duisgw_store_engine_rebuild_seconds_count"] == 0
    assert gw.terminate() == 0


async def test_deleted_wal_files_show_as_files_changed_and_the_store_unavailable_until_a_restart(
    tmp_path: Path, traffic: Traffic, receiver: Receiver, gateways: list[Gateway]
) -> None:
    msgs = traffic.merged()
    gw = await started(make_gateway(tmp_path / "gw", traffic, receiver, gateways, tmp_path / "logs"))
    await post_all(gw, msgs[:6])
    db = gw.config.parent / "outbox.sqlite3"
    os.unlink(f"{db}-wal")
    os.unlink(f"{db}-shm")
    # found at the next scrape already, before any commit tried
    assert (await store_metrics(gw))["duisgw_store_unavailable"] == 1
    for m in msgs[6:9]:
        a = await post(gw, m)
        assert (a.status, a.text) == (503, "store_unavailable"), a
    m = await store_metrics(gw)
    assert m["duisgw_store_unavailable"] == 1
    assert failures(m)["files_changed"] >= 1
    assert m["duisgw_store_engine_rebuild_seconds_count"] == 0  # every batch fails before it is decided
    gw.kill()


async def test_with_state_in_store_off_a_route_commit_that_finds_the_files_changed_after_committing_is_not_acknowledged(
    tmp_path: Path, receiver: Receiver
) -> None:
    """``state_in_store = false``: the engine commits into ``engine.sqlite3``, then the batch's route and outbox
    row commit into the transport store's database. Its ``-wal`` and ``-shm`` are deleted while that transaction
    is open (after the check before it): the commit goes into files no restart finds. It was acknowledged
    (200 forward); it is answered 503 now, what was committed saved (checkpointed into the database file), and
    counted as ``files_changed``."""
    lab = make_lab("route-files", tmp_path / "reference", stream=0, first_meter=300, first_counter=3000)
    world, f = lab.world, lab.world.factory
    _esme, ch, mpan = world.meter(5)
    t = lab.demo.t
    first = TimedMessage(t("08:06:10"), "inline", f.ad1(ch, mpan, t("08:03:40"), t("08:06:10"), 7201))
    _esme2, ch2, mpan2 = world.meter(6)
    second = TimedMessage(t("08:07:10"), "inline", f.ad1(ch2, mpan2, t("08:04:40"), t("08:07:10"), 7202))
    cfg = pipeline_config(tmp_path, lab.reference, receiver.url, DNO_USER, state_in_store=False)
    gateway = build_gateway(cfg)
    async with (
        running(make_service(gateway)) as service,
        DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp,
    ):
        proc = gateway.processor
        assert proc is not None and not proc.one_transaction
        ok = await dsp.post(first)
        assert (ok.status, ok.decision) == (200, "forward"), ok.text
        db = Path(proc.store.path)
        conn = await proc.call(proc.store.thread_connection)

        def delete_files() -> int:
            for suffix in ("-wal", "-shm"):
                os.unlink(f"{db}{suffix}")
            return 0

        def arm() -> None:
            conn.create_function("delete_files", 0, delete_files)
            conn.execute("CREATE TEMP TRIGGER gone AFTER INSERT ON routes BEGIN SELECT delete_files(); END")

        await proc.call(arm)
        answer = await dsp.post(second)
        assert answer.status == 503 and answer.text.startswith("store_unavailable"), (
            answer.status,
            answer.text,
        )
        m = {name: v for (name, labels), v in (await scrape(service.admin_port)).items()
             if name == "duisgw_store_commit_failures_total" and dict(labels) == {"reason": "files_changed"}}  # fmt: skip
        # the route commit's failure at least; a later transaction of the same database (a delivery mark of the
        # first message's forward) may find the files changed too, and is counted alike
        assert m.get("duisgw_store_commit_failures_total", 0.0) >= 1.0, m
    # what the transaction committed was saved into the database file: no restart loses the two routes
    with sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True) as c:
        assert c.execute("SELECT count(*) FROM routes").fetchone() == (2,)

"""``duisgw audit`` across two real ``duisgw serve`` processes on one real redis-server (each instance
with its own state folder and outbox): the DSP re-delivers two suppressed AD1s, decided by instance A, to
instance B.

Pinned down: B's audit records them as A's decisions (``decided_by = gw-a``, ``recorded_as =
duplicate``), and ``audit list`` from either configuration names A as their decider (``--json`` key, last
text column); an operator release names the instance it was recorded on; ``audit export`` from EITHER instance's configuration lists each suppression exactly once
(the shared suppression index), ``export --local`` lists it only in A's; ``audit release`` is exactly
once across instances: a release on A then on B enqueues and delivers the message once, B's refused with
who released it and when; two ``release`` processes started together on A and B: exactly one wins, one
outbox row and one delivery in all; each release is in the shared decision log once; the export then
says ``released``.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import os
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from e2ekit import DNO_USER, PROJECT, GatewayProcess, write_config
from redisfixture import RedisServer, free_port
from servicekit import Receiver, timed

from gateway.service.simulate import DspSimulator
from gateway.testkit.scenario import Scenario, World

pytestmark = pytest.mark.slow


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


async def cli(*args: str) -> tuple[int, str, str]:
    """``python -m gateway ARGS`` as a real process (without blocking the receiver's event loop)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args, env={**os.environ, "PYTHONPATH": str(PROJECT)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return int(proc.returncode or 0), out.decode(), err.decode()


def outbox_rows(config: Path, message_id: str) -> int:
    with contextlib.closing(sqlite3.connect(config.parent / "outbox.sqlite3")) as conn:
        return int(
            conn.execute("SELECT count(*) FROM outbox WHERE message_id = ?", (message_id,)).fetchone()[0]
        )


def export_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def released_in_log(url: str) -> list[tuple[str, str]]:
    client = redis.Redis.from_url(url)
    try:
        rows = client.xrange("duisgw:decisions")
    finally:
        client.close()
    out = []
    for _id, fields in rows:
        if b"r" in fields:
            item = json.loads(fields[b"r"])
            out.append((str(item["owner"]), str(item["release"]["message_id"])))
    return out


@asynccontextmanager
async def one_shared_gateway(
    tmp_path: Path, redis_server: RedisServer, world: World, story: Scenario, receiver_url: str
) -> AsyncIterator[tuple[Path, list[Any]]]:
    """A shared-state gateway ``gw-a`` (in ``tmp_path / "gw-a"``, Redis flushed first, delivering to
    ``receiver_url``) that took ``story``'s messages from a DSP simulator: its configuration and the answers."""
    redis_server.flush()
    reference = world.write_reference(tmp_path / "reference")
    folder = tmp_path / "gw-a"
    folder.mkdir()
    port, admin = free_port(), free_port()
    state = f'[state]\nbackend = "redis"\nredis_url = "{redis_server.url}"\ninstance = "gw-a"\n'
    cfg = write_config(folder / "gateway.toml", port=port, admin_port=admin, reference=reference,
                       destinations=[{"name": "dno-a", "user": DNO_USER, "url": receiver_url}])  # fmt: skip
    cfg.write_text(cfg.read_text(encoding="utf-8") + "\n" + state, encoding="utf-8")
    gw = GatewayProcess(cfg, admin)
    try:
        gw.start()
        await gw.wait_ready()
        async with DspSimulator(f"http://127.0.0.1:{port}", DNO_USER, retry_for=0) as dsp:
            answers = [await dsp.post(m) for m in timed(story)]
        yield cfg, answers
    finally:
        gw.terminate()


def leave_killed_release_marker(redis_url: str, cfg: Path, message_id: str) -> None:
    """What a release by alice ("killed"), killed right after taking the shared marker, leaves behind: the
    marker of ``message_id`` naming ``gw-a``'s store (``cfg``'s folder) on this host, and nothing else."""
    from gateway.store.shared_audit import SharedAudit

    marker = json.dumps({"message_id": message_id, "action": "release-forward", "reason": "operator-release",
                         "operator": "alice", "note": "killed", "decided_at": "2026-11-23T00:00:00+00:00",
                         "instance": "gw-a", "host": socket.gethostname(),
                         "store": str((cfg.parent / "state" / "engine.sqlite3").resolve())},
                        separators=(",", ":"))  # fmt: skip
    shared = SharedAudit(redis_url, "duisgw:")
    try:
        assert shared.claim_release(message_id, marker) is None
    finally:
        shared.close()


def scenario(world: World) -> Scenario:
    s = Scenario("two-suppressed", world)
    f, t = world.factory, s.t
    esme, ch, mpan = world.meter(1)
    s.observe("08:00:00", f.activate_request(esme, 5001), "11.3 request")
    s.observe("08:00:35", f.activate_response(esme, 5001, t("08:00:35")), "11.3 response: success")
    s.inline("08:06:10", f.ad1(ch, mpan, t("08:03:30"), t("08:06:10"), 101), "suppress", "activation-window")
    s.inline("08:07:10", f.ad1(ch, mpan, t("08:04:30"), t("08:07:10"), 102), "suppress", "activation-window")
    return s


async def test_redelivered_suppressions_are_exported_once_and_released_once_across_two_instances(
    tmp_path: Path, redis_server: RedisServer, receiver: Receiver
) -> None:
    redis_server.flush()
    world = World.generated("shared-audit")
    story = scenario(world)
    reference = world.write_reference(tmp_path / "reference")
    gws: dict[str, GatewayProcess] = {}
    ports: dict[str, int] = {}
    for name in ("gw-a", "gw-b"):
        folder = tmp_path / name
        folder.mkdir()
        ports[name], admin = free_port(), free_port()
        state = f'[state]\nbackend = "redis"\nredis_url = "{redis_server.url}"\ninstance = "{name}"\n'
        cfg = write_config(folder / "gateway.toml", port=ports[name], admin_port=admin, reference=reference,
                           destinations=[{"name": "dno-a", "user": DNO_USER, "url": receiver.url}])  # fmt: skip
        cfg.write_text(cfg.read_text(encoding="utf-8") + "\n" + state, encoding="utf-8")
        gws[name] = GatewayProcess(cfg, admin)
    a, b = gws["gw-a"], gws["gw-b"]
    try:
        for gw in gws.values():
            gw.start()
        for gw in gws.values():
            await gw.wait_ready()
        messages = timed(story)
        async with DspSimulator(f"http://127.0.0.1:{ports['gw-a']}", DNO_USER, retry_for=0) as dsp:
            answers = [await dsp.post(m) for m in messages]
        first, second = [str(x.message_id) for x in answers if x.decision == "suppress"]
        # the DSP re-delivers both AD1s to the other instance (e.g. A's acknowledgement was lost)
        async with DspSimulator(f"http://127.0.0.1:{ports['gw-b']}", DNO_USER, retry_for=0) as dsp:
            again = [await dsp.post(m) for m in messages if m.lane == "inline"]
        assert [x.status for x in again] == [200, 200]  # answered as duplicates of A's decisions

        # B recorded A's decisions, as A's
        rc, out, err = await cli("audit", "show", "--config", str(b.config), first)
        assert rc == 0, err
        (row,) = json.loads(out)["decisions"]
        assert (row["action"], row["decided_by"], row["recorded_as"]) == ("suppress", "gw-a", "duplicate")
        day = row["decided_at"][:10]
        # `audit list` names the decider too, from either configuration: JSON key and a last text column
        for gw in gws.values():
            rc, out, err = await cli(
                "audit", "list", "--config", str(gw.config), "--decision", "suppress", "--json"
            )
            assert rc == 0, err
            listed = [json.loads(line) for line in out.splitlines()]
            assert [(r["message_id"], r["decided_by"]) for r in listed] == [(first, "gw-a"), (second, "gw-a")]
        rc, out, err = await cli(
            "audit", "list", "--config", str(b.config), "--decision", "suppress", "--limit", "1"
        )
        assert rc == 0, err
        assert out.split()[-2:] == [first, "gw-a"] and len(out.splitlines()) == 1

        # the export from either configuration: both suppressions, each once
        exports = {}
        for name, gw in gws.items():
            rc, out, err = await cli("audit", "export", "--config", str(gw.config), "--date", day)
            assert rc == 0, err
            exports[name] = out
        assert exports["gw-a"] == exports["gw-b"]
        assert [(r["message_id"], r["destination"], r["status"]) for r in export_rows(exports["gw-a"])] == [
            (first, "dno-a", "suppressed"), (second, "dno-a", "suppressed")]  # fmt: skip
        # --local: the suppressions each instance decided itself, so across instances each once
        local = {}
        for name, gw in gws.items():
            rc, out, err = await cli("audit", "export", "--config", str(gw.config), "--date", day, "--local")
            local[name] = [r["message_id"] for r in export_rows(out)]
        assert (local["gw-a"], local["gw-b"]) == ([first, second], [])

        # a release on A, then on B: the second is refused, the message delivered once
        rc, out, err = await cli("audit", "release", "--config", str(a.config), first, "--operator", "alice",
                                 "--note", "field visit: genuine outage")  # fmt: skip
        assert rc == 0, err
        rc, out, err = await cli("audit", "release", "--config", str(b.config), first, "--operator", "bob",
                                 "--note", "customer called")  # fmt: skip
        assert rc == 1
        assert f"message '{first}' was already released by alice on instance gw-a at " in err
        assert "not released again" in err
        await receiver.wait_for(1)

        # two releases started together, one per instance: exactly one wins
        results = await asyncio.gather(*(
            cli("audit", "release", "--config", str(gw.config), second, "--operator", who, "--note", "race")
            for gw, who in ((a, "alice"), (b, "bob"))))  # fmt: skip
        assert sorted(rc for rc, _out, _err in results) == [0, 1], results
        (loser,) = [err for rc, _out, err in results if rc == 1]
        assert "already released by" in loser
        await receiver.wait_for(2)
        await asyncio.sleep(1.5)  # a second delivery, if any, would arrive within a few outbox polls
        delivered = sorted(r.message_id for r in receiver.log)
        assert delivered == sorted([first, second])
        assert outbox_rows(a.config, first) + outbox_rows(b.config, first) == 1
        assert outbox_rows(a.config, second) + outbox_rows(b.config, second) == 1
        assert sorted(mid for _owner, mid in released_in_log(redis_server.url)) == sorted([first, second])
        assert ("gw-a", first) in released_in_log(redis_server.url)

        # each release names the instance it was recorded on, in `show` and in `list`
        rc, out, err = await cli("audit", "list", "--config", str(a.config), "--json")
        latest = {r["message_id"]: (r["action"], r["decided_by"]) for r in map(json.loads, out.splitlines())}
        assert latest[first] == ("release-forward", "gw-a")
        winner = "gw-a" if latest[second][0] == "release-forward" else "gw-b"
        rc, out, err = await cli("audit", "show", "--config", str(gws[winner].config), second)
        last = json.loads(out)["decisions"][-1]
        assert (last["action"], last["decided_by"]) == ("release-forward", winner)

        rc, out, err = await cli("audit", "export", "--config", str(b.config), "--date", day)
        assert [(r["message_id"], r["status"]) for r in export_rows(out)] == [
            (first, "released"),
            (second, "released"),
        ]
    finally:
        for gw in gws.values():
            gw.terminate()


async def test_a_release_marker_left_by_a_release_that_recorded_nothing_is_not_exported_as_a_release(
    tmp_path: Path, redis_server: RedisServer, receiver: Receiver
) -> None:
    """``audit release`` takes the shared marker first; killed before its local record, it leaves the marker
    and nothing else: the message is still suppressed and was never delivered, so the shared export must not
    say ``released`` (it reads confirmed releases only); a release from the same store then takes the marker
    again, and once recorded and confirmed the export says ``released``."""

    world = World.generated("shared-audit-marker")
    async with one_shared_gateway(tmp_path, redis_server, world, scenario(world), receiver.url) as (cfg, answers):
        first = next(str(x.message_id) for x in answers if x.decision == "suppress")
        rc, out, err = await cli("audit", "show", "--config", str(cfg), first)
        assert rc == 0, err
        day = json.loads(out)["decisions"][0]["decided_at"][:10]
        leave_killed_release_marker(redis_server.url, cfg, first)
        rc, out, err = await cli("audit", "export", "--config", str(cfg), "--date", day)
        assert {r["message_id"]: r["status"] for r in export_rows(out)}[first] == "suppressed", out
        assert first not in [r.message_id for r in receiver.log]
        # a release from this configuration: recorded, confirmed, delivered once; the export then says so
        rc, out, err = await cli("audit", "release", "--config", str(cfg), first, "--operator", "bob",
                                 "--note", "genuine outage")  # fmt: skip
        assert rc == 0, err
        rc, out, err = await cli("audit", "export", "--config", str(cfg), "--date", day)
        assert {r["message_id"]: r["status"] for r in export_rows(out)}[first] == "released", out


def paired_scenario(world: World) -> Scenario:
    s = Scenario("paired-restoration", world)
    f, t = world.factory, s.t
    esme, ch, mpan = world.meter(1)
    s.observe("08:00:00", f.activate_request(esme, 5001), "11.3 request")
    s.observe("08:00:35", f.activate_response(esme, 5001, t("08:00:35")), "11.3 response: success")
    s.inline("08:06:10", f.ad1(ch, mpan, t("08:03:40"), t("08:06:10"), 101), "suppress", "activation-window")
    s.inline("08:09:00", f.restoration(esme, t("08:03:40"), t("08:05:20"), t("08:09:00")), "suppress",
             "restoration-paired")  # fmt: skip
    return s


async def test_releasing_an_ad1_on_shared_state_releases_its_paired_restoration_after_it_once(
    tmp_path: Path, redis_server: RedisServer, receiver: Receiver
) -> None:
    """Shared state: the AD1's release and its paired restoration's each take and confirm their shared
    release marker (exactly once across instances, in the shared decision log, ``released`` in the shared
    export); the DNO receives the AD1, then its restoration."""
    world = World.generated("shared-audit-paired")
    async with one_shared_gateway(tmp_path, redis_server, world, paired_scenario(world), receiver.url) as (cfg, answers):
        ad1, restoration = [str(x.message_id) for x in answers if x.decision == "suppress"]
        rc, out, err = await cli("audit", "show", "--config", str(cfg), ad1)
        day = json.loads(out)["decisions"][0]["decided_at"][:10]

        rc, out, err = await cli("audit", "release", "--config", str(cfg), ad1, "--operator", "alice",
                                 "--note", "genuine outage")  # fmt: skip
        assert (rc, err) == (0, "")
        assert out.splitlines() == [
            f"released {ad1} to dno-a (1 outbox row(s)) by alice",
            f"released {restoration} to dno-a (1 outbox row(s)), the restoration paired with {ad1}, queued "
            "after it, by alice",
        ]
        await receiver.wait_for(2)
        assert [r.message_id for r in receiver.log] == [ad1, restoration]
        assert released_in_log(redis_server.url) == [("gw-a", ad1), ("gw-a", restoration)]
        rc, out, err = await cli("audit", "export", "--config", str(cfg), "--date", day)
        assert {r["message_id"]: r["status"] for r in export_rows(out)} == {
            ad1: "released",
            restoration: "released",
        }
        rc, out, err = await cli("audit", "show", "--config", str(cfg), restoration)
        last = json.loads(out)["decisions"][-1]
        assert (last["action"], last["operator"], last["decided_by"]) == ("release-forward", "alice", "gw-a")
        assert last["note"] == f"follows the release of {ad1}: genuine outage"
        # once: neither is released again, from this configuration
        for mid in (ad1, restoration):
            rc, out, err = await cli(
                "audit", "release", "--config", str(cfg), mid, "--operator", "bob", "--note", "x"
            )
            assert (rc, out) == (1, ""), err
        await asyncio.sleep(1.0)  # a second delivery, if any, would arrive within a few outbox polls
        assert [r.message_id for r in receiver.log] == [ad1, restoration]
        assert len(released_in_log(redis_server.url)) == 2


async def test_a_paired_restoration_another_instance_recorded_is_named_for_release_with_its_configuration(
    tmp_path: Path, redis_server: RedisServer, receiver: Receiver
) -> None:
    """The restoration reached instance B (its bytes are in B's store only) and was paired there with the
    AD1 that A suppressed: releasing the AD1 on A releases the AD1 and says, on stderr, that the paired
    restoration was recorded by gw-b and is released with gw-b's configuration; there it is released once."""
    redis_server.flush()
    world = World.generated("shared-audit-paired-b")
    story = paired_scenario(world)
    reference = world.write_reference(tmp_path / "reference")
    gws: dict[str, tuple[GatewayProcess, int]] = {}
    for name in ("gw-a", "gw-b"):
        folder = tmp_path / name
        folder.mkdir()
        port, admin = free_port(), free_port()
        state = f'[state]\nbackend = "redis"\nredis_url = "{redis_server.url}"\ninstance = "{name}"\n'
        cfg = write_config(folder / "gateway.toml", port=port, admin_port=admin, reference=reference,
                           destinations=[{"name": "dno-a", "user": DNO_USER, "url": receiver.url}])  # fmt: skip
        cfg.write_text(cfg.read_text(encoding="utf-8") + "\n" + state, encoding="utf-8")
        gws[name] = (GatewayProcess(cfg, admin), port)
    (a, port_a), (b, port_b) = gws["gw-a"], gws["gw-b"]
    try:
        for gw, _port in gws.values():
            gw.start()
        for gw, _port in gws.values():
            await gw.wait_ready()
        *first, last = timed(story)
        async with DspSimulator(f"http://127.0.0.1:{port_a}", DNO_USER, retry_for=0) as dsp:
            answers = [await dsp.post(m) for m in first]
        async with DspSimulator(f"http://127.0.0.1:{port_b}", DNO_USER, retry_for=0) as dsp:
            answers.append(await dsp.post(last))
        assert [x.decision for x in answers[-2:]] == ["suppress", "suppress"]
        ad1, restoration = (str(x.message_id) for x in answers[-2:])

        rc, out, err = await cli("audit", "release", "--config", str(a.config), ad1, "--operator", "alice",
                                 "--note", "genuine outage")  # fmt: skip
        assert rc == 0, err
        assert out == f"released {ad1} to dno-a (1 outbox row(s)) by alice\n"
        assert (
            f"the restoration {restoration} paired with {ad1} was recorded by instance gw-b, not here: "
            "release it with that instance's configuration"
        ) in err
        rc, out, err = await cli("audit", "release", "--config", str(b.config), restoration, "--operator", "alice",
                                 "--note", f"follows {ad1}")  # fmt: skip
        assert (rc, out) == (0, f"released {restoration} to dno-a (1 outbox row(s)) by alice\n"), err
        await receiver.wait_for(2)
        assert [r.message_id for r in receiver.log] == [ad1, restoration]
    finally:
        for gw, _port in gws.values():
            gw.terminate()


async def test_the_shared_export_of_a_gb_day_reads_the_two_utc_days_of_the_index_it_overlaps(
    tmp_path: Path, redis_server: RedisServer, receiver: Receiver
) -> None:
    """The shared suppression index is by UTC day; the GB day the clocks go back (25 October 2026: 25 hours,
    from 23:00 UTC on the 24th) takes the suppressions of two of its days, within its bounds only; each
    once; ``--local`` (this instance's own audit) gives the same day."""
    redis_server.flush()
    world = World.generated("shared-audit-gb-day")
    s = Scenario("gb-day", world, day=datetime(2026, 10, 24, tzinfo=UTC))
    f, t = world.factory, s.t
    times = [("22:50:00", 0), ("23:00:00", 0), ("23:50:00", 1), ("00:00:00", 2)]
    for n, (at, days) in enumerate(times, start=1):
        esme, ch, mpan = world.meter(n)
        start = t(at, days=days)
        s.observe(start, f.activate_request(esme, 5000 + n), "11.3 request")
        s.observe(start + timedelta(seconds=35), f.activate_response(esme, 5000 + n, start + timedelta(seconds=35)),
                  "11.3 response: success")  # fmt: skip
        decided = (
            start + timedelta(minutes=6, seconds=10) if n != 1 else start + timedelta(minutes=9, seconds=30)
        )
        s.inline(decided, f.ad1(ch, mpan, start + timedelta(minutes=3, seconds=40), decided, 100 + n), "suppress",
                 "activation-window")  # fmt: skip
    reference = world.write_reference(tmp_path / "reference")
    folder = tmp_path / "gw-a"
    folder.mkdir()
    port, admin = free_port(), free_port()
    state = f'[state]\nbackend = "redis"\nredis_url = "{redis_server.url}"\ninstance = "gw-a"\n'
    cfg = write_config(folder / "gateway.toml", port=port, admin_port=admin, reference=reference,
                       destinations=[{"name": "dno-a", "user": DNO_USER, "url": receiver.url}])  # fmt: skip
    cfg.write_text(cfg.read_text(encoding="utf-8") + "\n" + state, encoding="utf-8")
    gw = GatewayProcess(cfg, admin)
    try:
        gw.start()
        await gw.wait_ready()
        async with DspSimulator(f"http://127.0.0.1:{port}", DNO_USER, retry_for=0) as dsp:
            answers = [await dsp.post(m) for m in timed(s)]
        # decided 22:59:30 UTC (23:59:30 BST, the 24th), 23:06:10 UTC (00:06:10 BST, the 25th),
        # 23:56:10 UTC on the 25th (23:56:10 GMT), 00:06:10 UTC on the 26th
        m1, m2, m3, m4 = [str(x.message_id) for x in answers if x.decision == "suppress"]
        gb = ("--tz", "Europe/London")
        rc, out, err = await cli("audit", "export", "--config", str(cfg), "--date", "2026-10-25", *gb)
        assert rc == 0, err
        assert out.splitlines()[0].startswith("date_Europe/London,destination,message_id,")
        assert [(r["date_Europe/London"], r["message_id"]) for r in export_rows(out)] == [
            ("2026-10-25", m2),
            ("2026-10-25", m3),
        ]
        rc, out, err = await cli(
            "audit", "export", "--config", str(cfg), "--date", "2026-10-25", *gb, "--local"
        )
        assert [r["message_id"] for r in export_rows(out)] == [m2, m3], err
        rc, out, err = await cli("audit", "export", "--config", str(cfg), "--date", "2026-10-24", *gb)
        assert [r["message_id"] for r in export_rows(out)] == [m1], err
        rc, out, err = await cli("audit", "export", "--config", str(cfg), "--date", "2026-10-26", *gb)
        assert [r["message_id"] for r in export_rows(out)] == [m4], err
        rc, out, err = await cli("audit", "export", "--config", str(cfg), "--date", "2026-10-24")  # UTC
        assert [r["message_id"] for r in export_rows(out)] == [m1, m2], err
    finally:
        gw.terminate()

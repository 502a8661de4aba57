"""``duisgw audit export`` on shared state (``[state] backend = "redis"``, the shared suppression index) says when
the gateway suppressed each row and, for a released one, when it was released, by whom and with what note
(``decided_at, released_at, released_by, release_note``), as the release was recorded: a real ``duisgw serve``
on a real redis-server, ``release`` and ``export`` as real processes. The release details come from the
confirmed release (the shared done flag): a release that took again the marker an earlier, killed attempt of
its store left (that attempt's operator, note and time) confirms what it recorded itself, not the marker's.
(The single-node and archive exports: tests/cli/test_audit_export_release_columns.py.)
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from e2ekit import PROJECT
from redisfixture import RedisServer
from servicekit import Receiver
from test_shared_audit_cli import leave_killed_release_marker, one_shared_gateway

from gateway.testkit.scenario import Scenario, World

pytestmark = pytest.mark.slow

RELEASE_COLUMNS = ("released_at", "released_by", "release_note")


async def cli(*args: str) -> tuple[int, str, str]:
    """``python -m gateway ARGS`` as a real process (without blocking the receiver's event loop)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *args, env={**os.environ, "PYTHONPATH": str(PROJECT)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return int(proc.returncode or 0), out.decode(), err.decode()


def scenario(world: World) -> Scenario:
    s = Scenario("two-suppressed", world)
    f, t = world.factory, s.t
    esme, ch, mpan = world.meter(1)
    s.observe("08:00:00", f.activate_request(esme, 5001), "11.3 request")
    s.observe("08:00:35", f.activate_response(esme, 5001, t("08:00:35")), "11.3 response: success")
    s.inline("08:06:10", f.ad1(ch, mpan, t("08:03:30"), t("08:06:10"), 101), "suppress", "activation-window")
    s.inline("08:07:10", f.ad1(ch, mpan, t("08:04:30"), t("08:07:10"), 102), "suppress", "activation-window")
    return s


@asynccontextmanager
async def two_suppressed(
    tmp_path: Path, redis_server: RedisServer, name: str
) -> AsyncIterator[tuple[Path, list[str]]]:
    """A shared-state gateway (``gw-a``) that suppressed two AD1s: its configuration and their ids."""
    receiver = Receiver()
    await receiver.start()
    world = World.generated(name)
    try:
        async with one_shared_gateway(tmp_path, redis_server, world, scenario(world), receiver.url) as (
            cfg,
            answers,
        ):
            yield cfg, [str(x.message_id) for x in answers if x.decision == "suppress"]
    finally:
        await receiver.stop()


async def decisions(cfg: Path, message_id: str) -> list[dict[str, object]]:
    rc, out, err = await cli("audit", "show", "--config", str(cfg), message_id)
    assert rc == 0, err
    return list(json.loads(out)["decisions"])


async def export(cfg: Path, day: str, *more: str) -> dict[str, dict[str, str]]:
    rc, out, err = await cli("audit", "export", "--config", str(cfg), "--date", day, *more)
    assert rc == 0, err
    return {r["message_id"]: r for r in csv.DictReader(io.StringIO(out))}


async def test_the_shared_export_gives_a_released_rows_release_time_operator_and_note_and_none_for_the_other(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    async with two_suppressed(tmp_path, redis_server, "shared-export-columns") as (cfg, (first, second)):
        [suppression] = await decisions(cfg, first)
        day = str(suppression["decided_at"])[:10]
        rc, _out, err = await cli("audit", "release", "--config", str(cfg), first, "--operator", "alice",
                                  "--note", "=field visit, genuine outage")  # fmt: skip
        assert rc == 0, err
        suppression, release = await decisions(cfg, first)
        assert release["action"] == "release-forward"

        for more in ((), ("--local",)):  # the shared index, and this instance's own audit
            rows = await export(cfg, day, *more)
            row = rows[first]
            assert (row["status"], row["decided_at"]) == ("released", suppression["decided_at"]), more
            assert [row[c] for c in RELEASE_COLUMNS] == [
                release["decided_at"],
                "alice",
                "'=field visit, genuine outage",
            ], more  # (a note a spreadsheet would run: neutralised as every cell)
            other = rows[second]
            [other_suppression] = await decisions(cfg, second)
            assert (other["status"], other["decided_at"]) == ("suppressed", other_suppression["decided_at"])
            assert [other[c] for c in RELEASE_COLUMNS] == ["", "", ""], more


async def test_a_release_that_took_again_a_killed_attempts_marker_is_exported_as_it_was_recorded(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """``audit release`` killed after taking the shared marker (alice, "killed") left it; bob's release from the
    same store takes it again and records HIS release: the shared export names bob, his note and the time of
    the release recorded (before: the killed attempt's operator, note and time)."""

    async with two_suppressed(tmp_path, redis_server, "shared-export-retaken") as (cfg, (first, _second)):
        [suppression] = await decisions(cfg, first)
        day = str(suppression["decided_at"])[:10]
        leave_killed_release_marker(redis_server.url, cfg, first)
        rc, _out, err = await cli("audit", "release", "--config", str(cfg), first, "--operator", "bob",
                                  "--note", "genuine outage")  # fmt: skip
        assert rc == 0, err
        _suppression, release = await decisions(cfg, first)
        assert (release["operator"], release["note"]) == ("bob", "genuine outage")

        row = (await export(cfg, day))[first]
        assert row["status"] == "released"
        assert [row[c] for c in RELEASE_COLUMNS] == [release["decided_at"], "bob", "genuine outage"]
        assert (await export(cfg, day, "--local"))[first] == row

"""``duisgw audit``: who and why are required for an operator action (release, dead-letter requeue);
dead letters are listed and re-queued by an operator, and a RUNNING gateway delivers them; rejected
inputs are listed and their bytes come back unchanged.

The databases are made by real gateway runs (the demo, a pipeline gateway on a generated world) or by
the store classes; the CLI is run as a subprocess (``python -m gateway``) or through its ``main``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))

from servicekit import Receiver, ad1_stream

from gateway.cli import main
from gateway.service.api import Delivery
from gateway.service.app import Service
from gateway.service.outbox import Outbox, RejectStore, SqliteStore
from gateway.service.serve import build_gateway, load_serve_config, make_service
from gateway.service.simulate import DspSimulator, TimedMessage
from gateway.testkit.messages import DNO_EUI
from gateway.testkit.scenario import World
from gbcs.eui import format_eui

PROJECT = Path(__file__).resolve().parents[2]
DNO_USER = format_eui(DNO_EUI)
QUEUE = "http:dno-a"


def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    """``python -m gateway audit ...`` as a real process (bytes out: binary-safe)."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    return subprocess.run([sys.executable, "-m", "gateway", "audit", *args], env=env, capture_output=True,
                          timeout=60, check=False)  # fmt: skip


def cli_json_lines(*args: str) -> list[dict[str, object]]:
    done = cli(*args, "--json")
    assert done.returncode in (0, 1), done.stderr
    return [json.loads(line) for line in done.stdout.decode().splitlines()]


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["audit", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def outbox_rows(db: Path) -> list[tuple[str, str, str, int]]:
    """(queue, message id, state, attempts) of every outbox row, in queue order."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT queue, message_id, state, attempts FROM outbox ORDER BY seq").fetchall()


def requeue_records(db: Path) -> list[tuple[str, str, str, str, int, str | None]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        try:
            return conn.execute(
                "SELECT operator, note, queue, message_id, attempts, last_error FROM outbox_requeues ORDER BY id"
            ).fetchall()
        except sqlite3.OperationalError:
            return []


# ------------------------------------------------------------------------------------------ a real gateway


@pytest.fixture(scope="module")
def world_and_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[World, dict[str, Path]]:
    world = World.generated("audit-cli")
    return world, world.write_reference(tmp_path_factory.mktemp("reference"))


def write_pipeline_config(folder: Path, reference: dict[str, Path], url: str) -> Path:
    """A decision-pipeline gateway (state in the transport store, the default) that dead-letters a
    message at the first refusal and scans its idle queues every 0.2 s."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "gateway.toml"
    path.write_text(
        f"""mode = "pipeline"
clock = "message"
tick_interval = 0.2

[server]
host = "127.0.0.1"
port = 0
shutdown_timeout = 2.0

[admin]
host = "127.0.0.1"
port = 0

[store]
path = "gw.sqlite3"
synchronous = "NORMAL"

[outbox]
max_attempts = 1
backoff_initial = 0.05
backoff_max = 0.2
poll_interval = 0.2
drain_timeout = 2.0

[logging]
level = "WARNING"
format = "text"

[pipeline]
state_dir = "state"
certificates = "{reference["certs"]}"
gbcs_keys = "{reference["gbcs_keys"]}"
guids = "{reference["guids"]}"
inventory = "{reference["inventory"]}"
synchronous = "NORMAL"

[[destinations]]
name = "dno-a"
user = "{DNO_USER}"
url = "{url}"
""",
        encoding="utf-8",
    )
    return path


@contextlib.asynccontextmanager
async def gateway_of(config: Path) -> AsyncIterator[Service]:
    cfg, _base = load_serve_config(config)
    gateway = await asyncio.get_running_loop().run_in_executor(None, build_gateway, cfg)
    service = make_service(gateway)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def wait_until(what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_dead_letters_are_listed_and_a_running_gateway_delivers_those_an_operator_requeues(
    tmp_path: Path, world_and_reference: tuple[World, dict[str, Path]]
) -> None:
    world, reference = world_and_reference
    stream = sorted(ad1_stream(world, 3, first_meter=300, first_counter=700).steps, key=lambda s: s.at)
    one, two, three = (s.message_id for s in stream)
    bodies = {s.message_id: s.body for s in stream}
    receiver = Receiver(refuse={one, two})  # the DNO refuses two of them: dead after one refusal
    await receiver.start()
    config = write_pipeline_config(tmp_path, reference, receiver.url)
    db = tmp_path / "gw.sqlite3"
    try:
        async with gateway_of(config) as service:
            async with DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp:
                posted = [await dsp.post(TimedMessage(s.at, s.lane, s.body)) for s in stream]
            assert [(p.message_id, p.decision) for p in posted] == [(m, "forward") for m in (one, two, three)]
            await wait_until("three deliveries", lambda: len(receiver.log) >= 3)
            await wait_until("two dead letters", lambda: [r[2] for r in outbox_rows(db)].count("dead") == 2)

            dead = cli_json_lines("dead", "list", "--config", str(config))
            assert [d["message_id"] for d in dead] == [one, two]  # queue order
            for d in dead:
                assert (d["queue"], d["destination"], d["state"], d["attempts"]) == (QUEUE, "dno-a", "dead", 1)
                assert "500" in str(d["last_error"])
                assert isinstance(d["enqueued_at"], float) and isinstance(d["done_at"], float)
                assert d["done_at"] >= d["enqueued_at"]
            text = cli("dead", "list", "--config", str(config))
            assert text.returncode == 0 and len(text.stdout.splitlines()) == 2
            assert b"2 dead letter(s)" in text.stderr
            assert cli("dead", "list", "--config", str(config), "--queue", "mqtt:dno-a").returncode == 1

            # the DNO is fixed; the operator requeues ONE of them while the gateway runs
            receiver.refuse = set()
            done = await asyncio.to_thread(cli, "dead", "requeue", "--config", str(config), one,
                                           "--operator", "alice", "--note", "DNO endpoint fixed (INC-42)")  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert f"requeued {QUEUE} seq".encode() in done.stdout and b"by alice" in done.stdout
            await wait_until("the requeued message delivered", lambda: sum(r.message_id == one for r in receiver.log) == 2)
            again = [r for r in receiver.log if r.message_id == one][-1]
            assert again.body == bodies[one]  # the original bytes, unchanged
            await wait_until("the delivery recorded", lambda: (QUEUE, one, "delivered", 1) in outbox_rows(db))
            assert [d["message_id"] for d in cli_json_lines("dead", "list", "--config", str(config))] == [two]
            assert sum(r.message_id == two for r in receiver.log) == 1  # not requeued: not sent again

            shown = json.loads(cli("show", "--config", str(config), one).stdout)
            assert [(r["operator"], r["note"], r["queue"], r["attempts"]) for r in shown["requeues"]] == [
                ("alice", "DNO endpoint fixed (INC-42)", QUEUE, 1)
            ]
            assert "500" in shown["requeues"][0]["last_error"]
            assert [d["state"] for d in shown["deliveries"]] == ["delivered"]

            rest = await asyncio.to_thread(cli, "dead", "requeue", "--config", str(config), "--all",
                                           "--operator", "bob", "--note", "the rest after the fix")  # fmt: skip
            assert rest.returncode == 0, rest.stderr
            await wait_until("the last one delivered", lambda: sum(r.message_id == two for r in receiver.log) == 2)
            assert cli("dead", "list", "--config", str(config)).returncode == 1
            assert sum(r.message_id == three for r in receiver.log) == 1  # never dead: never sent twice
    finally:
        await receiver.stop()
    assert [(r[0], r[3]) for r in requeue_records(db)] == [("alice", one), ("bob", two)]


# ------------------------------------------------------------------------------------------ the store classes


async def make_dead_letters(db: Path, message_ids: list[str]) -> None:
    """Deliveries to ``dno-a`` over two queues (HTTP and MQTT), every row dead-lettered."""
    store = SqliteStore(db)
    await store.open()
    try:
        outbox = Outbox(store, lambda d: ("http:dno-a", "mqtt:dno-a"))
        await outbox.enqueue_many([Delivery(m, "dno-a", f"<m>{m}</m>".encode(), {}) for m in message_ids])
        for queue in ("http:dno-a", "mqtt:dno-a"):
            for row in await outbox.rows(queue):
                await outbox.dead_letter(row.seq, error=f"HTTP 500 from {queue}", refused=True)
    finally:
        await store.close()


def write_passthrough_config(folder: Path) -> Path:
    path = folder / "gateway.toml"
    path.write_text(
        'mode = "passthrough"\n[store]\npath = "gw.sqlite3"\n[outbox]\npoll_interval = 0.5\n'
        f'[[destinations]]\nname = "dno-a"\nuser = "{DNO_USER}"\nurl = "http://127.0.0.1:9/duis"\n',
        encoding="utf-8",
    )
    return path


async def test_requeue_refuses_a_blank_operator_or_note_and_records_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, config = tmp_path / "gw.sqlite3", write_passthrough_config(tmp_path)
    await make_dead_letters(db, ["m-1"])
    before = outbox_rows(db)
    for operator, note in (("", "why"), ("  ", "why"), ("alice", ""), ("alice", " \t "), ("", "")):
        rc, out, err = run_main(capsys, "dead", "requeue", "--config", str(config), "m-1",
                                "--operator", operator, "--note", note)  # fmt: skip
        assert rc == 2 and out == ""
        assert "must not be blank" in err and "nothing done" in err
    assert outbox_rows(db) == before and {r[2] for r in before} == {"dead"}
    assert requeue_records(db) == []


async def test_requeue_of_named_messages_is_all_or_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db, config = tmp_path / "gw.sqlite3", write_passthrough_config(tmp_path)
    await make_dead_letters(db, ["m-1", "m-2"])
    before = outbox_rows(db)
    rc, _out, err = run_main(capsys, "dead", "requeue", "--config", str(config), "m-1", "no-such-message",
                             "--operator", "alice", "--note", "retry")  # fmt: skip
    assert rc == 1 and "no-such-message" in err and "nothing requeued" in err
    assert outbox_rows(db) == before and requeue_records(db) == []
    rc, _out, err = run_main(capsys, "dead", "requeue", "--config", str(config), "m-1", "--all",
                             "--operator", "alice", "--note", "retry")  # fmt: skip
    assert rc == 2 and "not both" in err
    rc, _out, err = run_main(capsys, "dead", "requeue", "--config", str(config), "--operator", "a", "--note", "b")
    assert rc == 2 and outbox_rows(db) == before


async def test_requeue_all_of_one_queue_leaves_the_other_queues_dead_and_puts_rows_back_in_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, config = tmp_path / "gw.sqlite3", write_passthrough_config(tmp_path)
    await make_dead_letters(db, ["m-1", "m-2"])
    rc, out, _err = run_main(capsys, "dead", "requeue", "--config", str(config), "--all", "--queue", "mqtt:dno-a",
                             "--operator", " carol ", "--note", "broker back")  # fmt: skip
    assert rc == 0 and "2 dead letter(s) requeued by carol" in out
    assert sorted(outbox_rows(db)) == [
        ("http:dno-a", "m-1", "dead", 1),
        ("http:dno-a", "m-2", "dead", 1),
        ("mqtt:dno-a", "m-1", "pending", 0),
        ("mqtt:dno-a", "m-2", "pending", 0),
    ]
    assert requeue_records(db) == [
        ("carol", "broker back", "mqtt:dno-a", "m-1", 1, "HTTP 500 from mqtt:dno-a"),
        ("carol", "broker back", "mqtt:dno-a", "m-2", 1, "HTTP 500 from mqtt:dno-a"),
    ]
    store = SqliteStore(db)  # what the gateway's delivery reads next: the rows, in their original order
    await store.open()
    try:
        pending = await Outbox(store).pending("mqtt:dno-a")
    finally:
        await store.close()
    assert [r.message_id for r in pending] == ["m-1", "m-2"]
    assert [r.body for r in pending] == [b"<m>m-1</m>", b"<m>m-2</m>"]
    rc, out, _err = run_main(capsys, "dead", "list", "--config", str(config), "--json")
    assert rc == 0 and [json.loads(line)["queue"] for line in out.splitlines()] == ["http:dno-a"] * 2


async def test_requeue_waits_for_the_write_lock_up_to_the_busy_timeout_and_otherwise_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, config = tmp_path / "gw.sqlite3", write_passthrough_config(tmp_path)
    config.write_text(config.read_text().replace('path = "gw.sqlite3"\n', 'path = "gw.sqlite3"\nbusy_timeout = 1.0\n'))
    await make_dead_letters(db, ["m-1"])
    before = outbox_rows(db)
    # another writer (a running gateway's transaction) holds the lock for longer than the busy timeout
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    try:
        holder.execute("BEGIN IMMEDIATE")
        t0 = time.monotonic()
        rc, _out, err = run_main(capsys, "dead", "requeue", "--config", str(config), "--all",
                                 "--operator", "alice", "--note", "retry")  # fmt: skip
        assert rc == 2 and "locked" in err and "nothing requeued" in err
        assert time.monotonic() - t0 >= 0.9  # it waited [store] busy_timeout
        holder.execute("COMMIT")
        assert outbox_rows(db) == before and requeue_records(db) == []
        # ... and for less: the requeue waits its turn, then commits
        holder.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
        release.start()
        rc, _out, _err = run_main(capsys, "dead", "requeue", "--config", str(config), "--all",
                                  "--operator", "alice", "--note", "retry")  # fmt: skip
        release.join()
    finally:
        holder.close()
    assert rc == 0 and {r[2] for r in outbox_rows(db)} == {"pending"} and len(requeue_records(db)) == 2


def test_dead_commands_refuse_a_configuration_without_a_transport_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_passthrough_config(tmp_path)
    rc, _out, err = run_main(capsys, "dead", "list", "--config", str(config))
    assert rc == 2 and "no transport store" in err
    assert not (tmp_path / "gw.sqlite3").exists()  # a reader never creates the database


# ------------------------------------------------------------------------------------------ rejects


async def test_rejected_inputs_are_listed_and_their_bytes_come_back_unchanged(
    tmp_path: Path, world_and_reference: tuple[World, dict[str, Path]], capsys: pytest.CaptureFixture[str]
) -> None:
    _world, reference = world_and_reference
    config = write_pipeline_config(tmp_path, reference, "http://127.0.0.1:9/duis")
    not_xml = b"<not-duis"
    binary = bytes(range(256)) * 3 + b"\r\n\x00\xff"  # every byte value, CR LF, NUL
    at = dt.datetime(2026, 3, 2, 12, tzinfo=dt.UTC)
    async with (
        gateway_of(config) as service,
        DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp,
    ):
        answers = [await dsp.post(TimedMessage(at, "inline", body)) for body in (not_xml, binary)]
    assert [a.status for a in answers] == [400, 400]

    listed = cli_json_lines("rejects", "--config", str(config))
    assert [r["size"] for r in listed] == [len(not_xml), len(binary)]  # oldest first
    assert {(r["lane"], r["user"]) for r in listed} == {("inline", "dno-a")}  # the destination addressed
    for r, answer in zip(listed, answers, strict=True):
        assert r["reason"] and str(r["reason"]) in answer.text
    first_id, second_id = (int(str(r["id"])) for r in listed)

    for rid, body in ((first_id, not_xml), (second_id, binary)):  # through a real pipe
        raw = cli("rejects", "show", str(rid), "--config", str(config), "--raw")
        assert raw.returncode == 0 and raw.stdout == body
    rc, out, _err = run_main(capsys, "rejects", "--config", str(config), "show", str(second_id))
    shown = json.loads(out)
    assert rc == 0 and shown["size"] == len(binary) and shown["reason"] == listed[1]["reason"]
    assert shown["sha256"] == hashlib.sha256(binary).hexdigest()
    assert shown["preview"].startswith("\x00\x01") and shown["preview"].endswith("\\xfe\\xff")  # \xNN: not UTF-8

    rc, out, _err = run_main(capsys, "rejects", "--config", str(config), "--limit", "1", "--json")
    assert [json.loads(line)["id"] for line in out.splitlines()] == [second_id]
    rc, out, _err = run_main(capsys, "rejects", "--config", str(config), "--json", "--reason", str(listed[0]["reason"]))
    assert first_id in [json.loads(line)["id"] for line in out.splitlines()]
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    rc, out, _err = run_main(capsys, "rejects", "--config", str(config), "--since", later)
    assert (rc, out) == (1, "")
    earlier = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
    rc, out, _err = run_main(capsys, "rejects", "--config", str(config), "--since", earlier)
    assert rc == 0 and len(out.splitlines()) == 2
    rc, _out, err = run_main(capsys, "rejects", "--config", str(config), "--since", "yesterday")
    assert rc == 2 and "--since" in err
    rc, _out, err = run_main(capsys, "rejects", "show", "99999", "--config", str(config))
    assert rc == 1 and "unknown reject 99999" in err


async def test_rejects_lists_the_newest_matching_ones_in_order_and_filters_by_reason_and_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, config = tmp_path / "gw.sqlite3", write_passthrough_config(tmp_path)
    store = SqliteStore(db)
    await store.open()
    try:
        rejects = RejectStore(store)
        t0 = dt.datetime(2026, 3, 2, 8, tzinfo=dt.UTC)
        for i in range(5):
            await rejects.record(lane="inline", user=DNO_USER, reason="not_xml" if i % 2 else "bad_signature",
                                 detail=f"case {i}", body=b"x" * i, received_at=t0 + dt.timedelta(minutes=i))  # fmt: skip
    finally:
        await store.close()
    rc, out, err = run_main(capsys, "rejects", "--config", str(config), "--limit", "2")
    assert rc == 0 and [line.split()[0] for line in out.splitlines()] == ["4", "5"]
    assert "the newest 2 of 5" in err
    rc, out, _err = run_main(capsys, "rejects", "--config", str(config), "--limit", "0", "--json",
                             "--reason", "not_xml")  # fmt: skip
    assert [json.loads(line)["detail"] for line in out.splitlines()] == ["case 1", "case 3"]
    rc, out, _err = run_main(capsys, "rejects", "--config", str(config), "--json", "--since", "2026-03-02T09:02+01:00")
    assert [json.loads(line)["size"] for line in out.splitlines()] == [2, 3, 4]
    rc, _out, err = run_main(capsys, "rejects", "--config", str(config), "--limit", "-1")
    assert rc == 2 and "--limit" in err
    rc, _out, err = run_main(capsys, "rejects", "show", "1")
    assert rc == 2 and "--config" in err


# ------------------------------------------------------------------------------------------ release


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The live demo's work folder (a real gateway run with suppressed messages)."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    done = subprocess.run([sys.executable, "-m", "gateway", "demo", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_release_refuses_a_blank_operator_or_note_and_records_nothing(
    demo_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "demo"
    shutil.copytree(demo_run, work)
    config = str(work / "gateway.toml")

    def show(message_id: str) -> dict[str, Any]:
        rc, out, _err = run_main(capsys, "show", "--config", config, message_id)
        assert rc == 0
        shown: dict[str, Any] = json.loads(out)
        return shown

    rc, out, _err = run_main(capsys, "list", "--config", config, "--decision", "suppress", "--json")
    suppressed = [json.loads(line) for line in out.splitlines()]
    message_id = str(next(s["message_id"] for s in suppressed if s["action"] == "suppress"))
    before = show(message_id)
    assert before["status"] == "suppress" and before["deliveries"] == []
    for operator, note in ((" ", "field visit"), ("alice", "  "), ("\t", "\n")):
        rc, out, err = run_main(capsys, "release", "--config", config, message_id, "--operator", operator, "--note", note)
        assert (rc, out) == (2, "") and "must not be blank" in err
    done = cli("release", "--config", config, message_id, "--operator", "", "--note", "")  # the real process
    assert done.returncode == 2 and done.stdout == b""
    assert b"--operator and --note must not be blank" in done.stderr
    assert show(message_id) == before  # nothing recorded, nothing enqueued

    done = cli("release", "--config", config, message_id, "--operator", " alice ", "--note", "field visit: outage")
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().rstrip().endswith("by alice")
    after = show(message_id)
    assert after["status"] == "forward" and len(after["deliveries"]) == 1
    last = after["decisions"][-1]
    assert (last["action"], last["operator"], last["note"]) == ("release-forward", "alice", "field visit: outage")


def test_rejects_show_help_names_config_as_required_as_it_is(capsys: pytest.CaptureFixture[str]) -> None:
    """`audit rejects show --help` showed ``[--config FILE]`` as optional, yet leaving it out exits 2 with
    "the following argument is required": its usage now says ``--config FILE`` is needed (it may also be
    given before ``show``)."""
    with pytest.raises(SystemExit) as done:
        main(["audit", "rejects", "show", "--help"])
    assert done.value.code == 0
    usage = capsys.readouterr().out.splitlines()[0]
    assert usage.endswith("rejects show ID --config FILE [--raw]"), usage
    assert main(["audit", "rejects", "show", "1"]) == 2
    assert "the following argument is required: --config FILE" in capsys.readouterr().err

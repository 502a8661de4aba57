"""Storage faults under a real ``duisgw serve``: the disk full, a locked database, a read-only filesystem,
I/O errors, the WAL files deleted or the database file replaced while the gateway runs.

The contract (docs/ARCHITECTURE.md "Commit before acknowledging", docs/OPERATIONS.md): the DSP gets a 2xx
only once the message, its decision and its outbox row are durable; ``503 store_unavailable`` (with
``Retry-After``) when the store cannot record it; no acknowledged message is lost, whatever happens next.

Every test runs the gateway as a process (``python -m gateway serve``) on real sockets, with a real DNO
receiver, and breaks its real files:

- *disk full* without privileges: the gateway process's file-size limit (``RLIMIT_FSIZE``, lowered and
  raised again with ``prlimit`` while it runs; CPython ignores ``SIGXFSZ``) makes every write past 4 KiB of
  a file short, which SQLite reports as ``database or disk is full``; so that the limit does not cut its log,
  the log goes through a pipe to a file written by the test;
- *locked*: another process's connection holding ``BEGIN IMMEDIATE`` longer than ``[store] busy_timeout``;
- *read-only* and *I/O errors*: the state on an ext4 image mounted through a loop device (root only; skipped
  otherwise), made read-only by an ext4 error (``errors=remount-ro``, ``trigger_fs_error``) or shut down
  (``EXT4_IOC_SHUTDOWN``: every I/O fails with EIO) while the gateway runs;
- *operator mistakes*: the ``-wal``/``-shm`` files deleted, the database file replaced by an old backup.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import resource
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import aiohttp
import pytest
from e2ekit import DNO_USER, PROJECT, GatewayProcess, Traffic, build_traffic, end_of, scrape, write_config
from servicekit import Receiver, free_port

from gateway.service.processor import ARRIVAL_HEADER
from gateway.service.simulate import TimedMessage

#: a file-size limit that makes every SQLite write past a file's first page short: "database or disk is full"
FULL = 4096
#: the longest a refusal may take while the store cannot write (every request gets its answer, no hang)
PROMPT = 5.0
MALFORMED = b"<sr:Response xmlns:sr='http://www.dccinterface.co.uk/ServiceUserGateway'><unclosed>"


# ------------------------------------------------------------------------------------------ the gateway


@dataclass(frozen=True)
class Answer:
    status: int
    message_id: str | None
    decision: str | None
    text: str
    seconds: float


class Gateway(GatewayProcess):
    """``duisgw serve`` as a child process whose log goes through a pipe into a file the TEST writes (the
    gateway's own writes are what the faults break: a log file it wrote would be cut by its file-size limit)."""

    port: int = 0
    _copier: threading.Thread | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(PROJECT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--config", str(self.config)],
            cwd=self.config.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        assert self.proc.stdout is not None
        self._copier = threading.Thread(target=self._copy, args=(self.proc.stdout,), daemon=True)
        self._copier.start()

    def _copy(self, pipe: IO[bytes]) -> None:
        with self.log_path.open("ab") as out:
            for line in pipe:
                out.write(line)
                out.flush()

    def log_text(self) -> str:
        if self.proc is not None and self.proc.poll() is not None and self._copier is not None:
            self._copier.join(5)
        return self.log_path.read_text(errors="replace")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def limit_file_size(self, size: int) -> None:
        """The gateway process's file-size limit (soft), ``RLIM_INFINITY`` to lift it."""
        assert self.proc is not None
        _soft, hard = resource.prlimit(self.proc.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(self.proc.pid, resource.RLIMIT_FSIZE, (size, hard))


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> Traffic:
    return build_traffic(tmp_path_factory.mktemp("traffic"))


@pytest.fixture
def gateways() -> Iterator[list[Gateway]]:
    """The gateways a test starts: killed at its end, whatever happened."""
    started: list[Gateway] = []
    yield started
    for gw in started:
        gw.kill()


@pytest.fixture
def prlimit_allowed() -> None:
    if not hasattr(resource, "prlimit"):
        pytest.skip("resource.prlimit is not available on this platform")
    try:
        resource.prlimit(os.getpid(), resource.RLIMIT_FSIZE)
    except OSError as exc:
        pytest.skip(f"prlimit is not permitted here: {exc}")


def make_gateway(
    folder: Path, traffic: Traffic, receiver: Receiver, started: list[Gateway], logs: Path, *, store: str = ""
) -> Gateway:
    """A gateway (not started) keeping its state in ``folder``; ``store`` is added to ``[store]``."""
    folder.mkdir(parents=True, exist_ok=True)
    port, admin = free_port(), free_port()
    cfg = write_config(folder / "gateway.toml", port=port, admin_port=admin, reference=traffic.reference,
                       destinations=[{"name": "dno-a", "user": DNO_USER, "url": receiver.url}])  # fmt: skip
    if store:
        text = cfg.read_text(encoding="utf-8")
        cfg.write_text(text.replace('synchronous = "FULL"\n', f'synchronous = "FULL"\n{store}\n', 1), "utf-8")
    gw = Gateway(cfg, admin)
    gw.port = port
    logs.mkdir(parents=True, exist_ok=True)
    gw.log_path = logs / f"{folder.name}-{len(started)}.log"
    started.append(gw)
    return gw


async def post(gw: Gateway, msg: TimedMessage, *, timeout: float = 60.0) -> Answer:
    """One POST as the DSP sends it (no retry): the answer and how long it took."""
    path = f"/duis/dno/{DNO_USER}" if msg.lane == "inline" else "/duis/observe"
    headers = {"Content-Type": "application/xml", ARRIVAL_HEADER: msg.at.isoformat()}
    t0 = time.monotonic()
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
        http.post(gw.url + path, data=msg.body, headers=headers) as resp,
    ):
        text = (await resp.text()).strip()
        return Answer(resp.status, resp.headers.get("X-DUISGW-Message-Id"), resp.headers.get("X-DUISGW-Decision"),
                      text, time.monotonic() - t0)  # fmt: skip


async def started(gw: Gateway) -> Gateway:
    """``gw`` started and ready."""
    gw.start()
    await gw.wait_ready()
    return gw


async def post_all(gw: Gateway, msgs: list[TimedMessage]) -> dict[str, Answer]:
    """POST each message in turn; the answers by message id."""
    answers: dict[str, Answer] = {}
    for m in msgs:
        a = await post(gw, m)
        assert a.message_id is not None
        answers[a.message_id] = a
    return answers


async def post_until_taken(gw: Gateway, msg: TimedMessage, *, within: float = 10.0) -> Answer:
    """POST ``msg``, again after each 503 (as the DSP re-delivers), until it is answered otherwise."""
    deadline = time.monotonic() + within
    while True:
        answer = await post(gw, msg)
        if answer.status != 503 or time.monotonic() > deadline:
            return answer
        await asyncio.sleep(0.1)


async def readyz(gw: Gateway) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
        http.get(f"http://127.0.0.1:{gw.admin_port}/readyz") as resp,
    ):
        return resp.status, (await resp.text()).strip()


async def tick(gw: Gateway, msgs: list[TimedMessage]) -> int:
    """``POST /admin/tick`` past every hold of ``msgs``; the answer's status."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
        http.post(
            f"http://127.0.0.1:{gw.admin_port}/admin/tick", json={"now": end_of(msgs).isoformat()}
        ) as resp,
    ):
        return resp.status


def acknowledged(answers: dict[str, Answer]) -> dict[str, Answer]:
    """The answers that acknowledged their message (2xx), by message id."""
    return {mid: a for mid, a in answers.items() if 200 <= a.status < 300}


@dataclass
class Stored:
    """What the gateway's database holds, read after it stopped."""

    status: dict[str, str]  # message id -> status (forward, suppress, hold, observed, accepted)
    observations: set[str]  # message ids of the observations kept without a decision
    outbox: dict[str, str]  # message id -> outbox state
    rejects: list[tuple[str, str, bytes]]  # (lane, reason, bytes)


def stored(db: Path) -> Stored:
    with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)) as c:
        return Stored(
            dict(c.execute("SELECT message_id, status FROM messages")),
            {r[0] for r in c.execute("SELECT message_id FROM observations") if r[0]},
            dict(c.execute("SELECT message_id, state FROM outbox")),
            [
                (r[0], r[1], bytes(r[2]))
                for r in c.execute("SELECT lane, reason, body FROM rejects ORDER BY id")
            ],
        )


def lost(acked: dict[str, Answer], state: Stored, expected: dict[str, str]) -> list[str]:
    """Acknowledged messages the store does not hold with their expected final decision."""
    missing = []
    for mid, answer in acked.items():
        if answer.status == 204:  # (an 8.2 inventory response is kept per ESME: ``ID#inv:ESME``)
            kept = (
                mid in state.status
                or mid in state.observations
                or any(k.startswith(f"{mid}#") for k in state.status)
            )
            if not kept:
                missing.append(f"{mid}: observation acknowledged, not stored")
        elif state.status.get(mid) != expected.get(mid, answer.decision):
            missing.append(f"{mid}: acknowledged {answer.decision}, stored {state.status.get(mid)}")
    return missing


def without_8f66(traffic: Traffic) -> tuple[list[TimedMessage], dict[str, str], str]:
    """The traffic without the 8F66 that confirms meter 2's future-dated activation: the AD1 held for it is
    released by the clock (hold-timeout, forward). Returns the messages, the expected final decisions and the
    held AD1's message id."""
    confirm = next(s for s in traffic.demo.steps if s.label.startswith("8F66"))
    held = next(s for s in traffic.demo.steps if s.expect is not None and s.expect.held)
    msgs = [m for m in traffic.merged() if m.body != confirm.body]
    expected = {**traffic.expected(), held.message_id: "forward"}
    return msgs, expected, held.message_id


# ------------------------------------------------------------------------------------------ disk full


async def test_a_full_disk_is_answered_503_and_the_gateway_resumes_by_itself_losing_nothing_acknowledged(
    tmp_path: Path, traffic: Traffic, receiver: Receiver, gateways: list[Gateway], prlimit_allowed: None
) -> None:
    msgs, expected, held_id = without_8f66(traffic)
    gw = await started(make_gateway(tmp_path / "gw", traffic, receiver, gateways, tmp_path / "logs"))
    answers: dict[str, Answer] = {}
    cut = 1 + next(i for i, m in enumerate(msgs) if m.body == traffic.bodies()[held_id])
    for m in msgs[:cut]:  # up to the AD1 held for the (missing) 8F66: 202 hold
        a = await post(gw, m)
        assert a.status in (200, 202, 204), (a, gw.log_tail())
        assert a.message_id is not None
        answers[a.message_id] = a
    assert answers[held_id].status == 202

    gw.limit_file_size(FULL)  # the disk is full from here on
    refused = []
    for m in msgs[cut:]:
        a = await post(gw, m)
        assert (a.status, a.text) == (503, "store_unavailable"), a  # never 2xx without a record, never 500
        assert a.seconds < PROMPT, a
        refused.append(m)
    bad = TimedMessage(msgs[-1].at, "inline", MALFORMED)  # its bytes cannot be kept: no 400 that loses them
    bad_observe = TimedMessage(msgs[-1].at, "observe", MALFORMED)
    for m in (bad, bad_observe):
        a = await post(gw, m)
        assert (a.status, a.text) == (503, "store_unavailable"), a

    gw.limit_file_size(resource.RLIM_INFINITY)  # space again: no restart
    for m in refused:
        a = await post_until_taken(gw, m)
        assert a.status in (200, 202, 204), (a, gw.log_tail())
        assert a.message_id is not None
        answers[a.message_id] = a
    for m in (bad, bad_observe):
        a = await post(gw, m)
        assert (a.status, a.text.split(":")[0]) == (400, "malformed_xml"), a
    assert await tick(gw, msgs) == 200
    forwards = {mid for mid, d in expected.items() if d == "forward"}
    await receiver.wait_for(len(forwards))
    assert gw.terminate() == 0

    state = stored(gw.config.parent / "outbox.sqlite3")
    assert lost(acknowledged(answers), state, expected) == []
    assert state.status[held_id] == "forward"  # released by the clock once the store could record it
    assert set(receiver.accepted_ids()) == forwards
    assert [(lane, reason) for lane, reason, body in state.rejects if body == MALFORMED] == [
        ("inline", "malformed_xml"), ("observe", "malformed_xml")]  # fmt: skip


async def test_readyz_says_store_unavailable_while_the_disk_is_full_and_ready_once_it_is_not(
    tmp_path: Path, traffic: Traffic, receiver: Receiver, gateways: list[Gateway], prlimit_allowed: None
) -> None:
    gw = await started(make_gateway(tmp_path / "gw", traffic, receiver, gateways, tmp_path / "logs"))
    msgs = traffic.merged()
    for m in msgs[:5]:
        assert (await post(gw, m)).status in (200, 204)
    gw.limit_file_size(FULL)
    assert await readyz(gw) == (503, "store_unavailable")
    assert (await post(gw, msgs[5])).status == 503
    samples = await scrape(gw.admin_port)
    lane = "inline" if msgs[5].lane == "inline" else "observe"
    assert samples[("duisgw_rejects_total", (("lane", lane), ("reason", "store_unavailable")))] >= 1
    gw.limit_file_size(resource.RLIM_INFINITY)
    assert await readyz(gw) == (200, "ready")
    assert gw.terminate() == 0


async def test_forwards_delivered_while_the_disk_is_full_are_not_sent_again_and_again(
    tmp_path: Path, traffic: Traffic, receiver: Receiver, gateways: list[Gateway], prlimit_allowed: None
) -> None:
    """The DNO's 2xx cannot be recorded while the disk is full: each forward is sent once meanwhile (not once
    per outbox scan), and once the space is back its delivery is recorded, nothing sent again."""
    forwards = {mid for mid, d in traffic.expected().items() if d == "forward"}
    receiver.refuse = set(forwards)  # the DNO refuses at first: the forwards wait in the outbox
    gw = await started(make_gateway(tmp_path / "gw", traffic, receiver, gateways, tmp_path / "logs"))
    for m in traffic.merged():
        assert (await post(gw, m)).status in (200, 202, 204)
    assert await tick(gw, traffic.merged()) == 200
    gw.limit_file_size(FULL)
    start = len(receiver.log)
    receiver.refuse = set()  # the DNO takes them now; the gateway cannot record it
    await receiver.wait_for(len(forwards))
    await asyncio.sleep(2.0)  # ten outbox scans (poll_interval 0.2 s)
    sent = [r.message_id for r in receiver.log[start:]]
    assert sorted(sent) == sorted(forwards), "each forward sent once while its delivery cannot be recorded"
    gw.limit_file_size(resource.RLIM_INFINITY)
    await asyncio.sleep(1.5)
    sent = [r.message_id for r in receiver.log[start:]]
    assert sorted(sent) == sorted(forwards), "nothing sent again once the delivery is recorded"
    assert gw.terminate() == 0
    state = stored(gw.config.parent / "outbox.sqlite3")
    assert {mid: s for mid, s in state.outbox.items() if mid in forwards} == dict.fromkeys(
        forwards, "delivered"
    )


async def test_a_kill_while_the_disk_is_full_loses_no_acknowledged_message_and_the_wal_recovers(
    tmp_path: Path, traffic: Traffic, receiver: Receiver, gateways: list[Gateway], prlimit_allowed: None
) -> None:
    msgs = traffic.merged()
    gw = await started(make_gateway(tmp_path / "gw", traffic, receiver, gateways, tmp_path / "logs"))
    half = len(msgs) // 2
    answers = await post_all(gw, msgs[:half])
    gw.limit_file_size(FULL)
    for m in msgs[half : half + 6]:  # failed commits leave their frames (if any) in the WAL
        assert (await post(gw, m)).status == 503
    gw.kill()
    gw.start()  # on the same state, the disk free again
    await gw.wait_ready()
    for m in msgs[half:]:
        a = await post_until_taken(gw, m)
        assert a.message_id is not None
        answers[a.message_id] = a
    assert await tick(gw, msgs) == 200
    await receiver.wait_for(sum(1 for d in traffic.expected().values() if d == "forward"))
    assert gw.terminate() == 0
    assert lost(acknowledged(answers), stored(gw.config.parent / "outbox.sqlite3"), traffic.expected()) == []


async def test_an_admin_tick_while_the_disk_is_full_is_answered_503_and_releases_nothing(
    tmp_path: Path, traffic: Traffic, receiver: Receiver, gateways: list[Gateway], prlimit_allowed: None
) -> None:
    msgs, _expected, held_id = without_8f66(traffic)
    gw = await started(make_gateway(tmp_path / "gw", traffic, receiver, gateways, tmp_path / "logs"))
    cut = 1 + next(i for i, m in enumerate(msgs) if m.body == traffic.bodies()[held_id])
    for m in msgs[:cut]:
        assert (await post(gw, m)).status in (200, 202, 204)
    gw.limit_file_size(FULL)
    assert await tick(gw, msgs) == 503  # its release cannot be recorded: refused, not a 500, not released
    await asyncio.sleep(0.5)
    assert held_id not in receiver.accepted_ids()
    gw.limit_file_size(resource.RLIM_INFINITY)
    assert await tick(gw, msgs) == 200
    deadline = time.monotonic() + 10
    while held_id not in receiver.accepted_ids():
        assert time.monotonic() < deadline, "the held AD1 was not released once the disk had space"
        await asyncio.sleep(0.05)
    assert gw.terminate() == 0


# ------------------------------------------------------------------------------------------ locked


async def test_a_database_locked_longer_than_busy_timeout_answers_every_waiting_request_503_promptly(
    tmp_path: Path, traffic: Traffic, receiver: Receiver, gateways: list[Gateway]
) -> None:
    """Another process (``duisgw audit``, an operator's ``sqlite3``) holds a write transaction for longer than
    ``[store] busy_timeout`` (1 s here): the requests waiting meanwhile are each answered 503 within about two
    busy timeouts (a batch's wait, then the next one's), not one timeout after another per request; once the
    lock is gone every one of them is taken and nothing acknowledged is lost."""
    msgs = traffic.merged()
    gw = make_gateway(
        tmp_path / "gw", traffic, receiver, gateways, tmp_path / "logs", store="busy_timeout = 1.0"
    )
    gw.start()
    await gw.wait_ready()
    answers: dict[str, Answer] = {}
    for m in msgs[:10]:
        a = await post(gw, m)
        assert a.message_id is not None
        answers[a.message_id] = a
    waiting = msgs[10:26]
    holder = sqlite3.connect(str(gw.config.parent / "outbox.sqlite3"), isolation_level=None, timeout=10)
    try:
        holder.execute("BEGIN IMMEDIATE")
        t0 = time.monotonic()
        during = await asyncio.gather(*(post(gw, m) for m in waiting))
        took = time.monotonic() - t0
        # asked once the lock outlasted busy_timeout and a batch was refused (while a batch only waits within
        # busy_timeout, /readyz says ready: tests/service/test_readyz_bound_17.py)
        ready_after = await readyz(gw)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    refusals = [a for a in during if isinstance(a, Answer)]
    assert [(a.status, a.text) for a in refusals] == [(503, "store_unavailable")] * len(waiting)
    assert took < 4.0, (
        f"{len(waiting)} requests answered in {took:.1f} s: {[round(a.seconds, 1) for a in refusals]}"
    )
    assert ready_after == (503, "store_unavailable")
    for m in msgs[10:]:
        a = await post_until_taken(gw, m)
        assert a.status in (200, 202, 204), a
        assert a.message_id is not None
        answers[a.message_id] = a
    assert await tick(gw, msgs) == 200
    await receiver.wait_for(sum(1 for d in traffic.expected().values() if d == "forward"))
    assert gw.terminate() == 0
    assert lost(acknowledged(answers), stored(gw.config.parent / "outbox.sqlite3"), traffic.expected()) == []


# ------------------------------------------------------------------------------------------ read-only, I/O errors

EXT4_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32)
EXT4_GOING_FLAGS_NOLOGFLUSH = 2


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[Path]:
    """An ext4 filesystem on a loop device (``errors=remount-ro``), unmounted at the end whatever happened;
    skipped where mounting is not permitted (not root, no loop device, no ext4)."""
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None:
        pytest.skip("needs root and mkfs.ext4 to mount an ext4 image through a loop device")
    image, mnt = tmp_path / "ext4.img", tmp_path / "mnt"
    mnt.mkdir()
    with image.open("wb") as f:
        f.truncate(32 << 20)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True)
    if made.returncode:
        pytest.skip(f"mkfs.ext4 failed: {made.stderr.strip()}")
    done = subprocess.run(["mount", "-o", "loop,errors=remount-ro", str(image), str(mnt)], capture_output=True,
                          text=True)  # fmt: skip
    if done.returncode:
        pytest.skip(f"mounting an ext4 image is not permitted here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _device(mnt: Path) -> str:
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if fields[1] == str(mnt):
            return fields[0]
    raise AssertionError(f"{mnt} is not mounted")


def _mounted_again(ext4: Path) -> Path:
    """The image of ``ext4`` unmounted (the gateway stopped) and mounted again (its journal replayed): what a
    restart after the fault finds on disk."""
    subprocess.run(["umount", str(ext4)], check=True, capture_output=True)
    subprocess.run(
        ["mount", "-o", "loop", str(ext4.parent / "ext4.img"), str(ext4)], check=True, capture_output=True
    )
    return ext4


async def _refused_while_broken(gw: Gateway, msgs: list[TimedMessage]) -> None:
    for m in [*msgs, TimedMessage(msgs[0].at, "inline", MALFORMED)]:
        a = await post(gw, m)
        assert (a.status, a.text) == (503, "store_unavailable"), (a, gw.log_tail())
        assert a.seconds < PROMPT, a
    assert await readyz(gw) == (503, "store_unavailable")


async def test_a_filesystem_turned_read_only_while_running_is_answered_503_and_loses_nothing_acknowledged(
    tmp_path: Path, ext4: Path, traffic: Traffic, receiver: Receiver, gateways: list[Gateway]
) -> None:
    msgs = traffic.merged()
    gw = await started(make_gateway(ext4 / "gw", traffic, receiver, gateways, tmp_path / "logs"))
    half = len(msgs) // 2
    answers = await post_all(gw, msgs[:half])
    Path(f"/sys/fs/ext4/{Path(_device(ext4)).name}/trigger_fs_error").write_text("duisgw storage fault test")
    with pytest.raises(OSError):  # errors=remount-ro: read-only from here on, the gateway's files open
        (ext4 / "probe").write_bytes(b"x")
    await _refused_while_broken(gw, msgs[half : half + 6])
    t0 = time.monotonic()
    assert gw.terminate() == 0
    assert time.monotonic() - t0 < 15
    state = stored(_mounted_again(ext4) / "gw" / "outbox.sqlite3")
    assert lost(acknowledged(answers), state, traffic.expected()) == []


async def test_io_errors_while_running_are_answered_503_and_lose_nothing_acknowledged(
    tmp_path: Path, ext4: Path, traffic: Traffic, receiver: Receiver, gateways: list[Gateway]
) -> None:
    msgs = traffic.merged()
    gw = await started(make_gateway(ext4 / "gw", traffic, receiver, gateways, tmp_path / "logs"))
    half = len(msgs) // 2
    answers = await post_all(gw, msgs[:half])
    fd = os.open(ext4, os.O_RDONLY)
    try:  # every I/O on the filesystem fails with EIO from here on (its journal not flushed: a dead disk)
        fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, EXT4_GOING_FLAGS_NOLOGFLUSH.to_bytes(4, sys.byteorder))
    finally:
        os.close(fd)
    await _refused_while_broken(gw, msgs[half : half + 6])
    t0 = time.monotonic()
    assert gw.terminate() == 0
    assert time.monotonic() - t0 < 15
    state = stored(_mounted_again(ext4) / "gw" / "outbox.sqlite3")
    assert lost(acknowledged(answers), state, traffic.expected()) == []


async def test_an_outbox_the_store_cannot_read_pauses_delivery_without_restarting_its_worker(
    tmp_path: Path, traffic: Traffic, receiver: Receiver, gateways: list[Gateway]
) -> None:
    """A read of the outbox that SQLite cannot do — ``database disk image is malformed``: a page it could not
    read (an I/O error), or read cut short, as here (the database file truncated under the gateway) — is the
    store being unavailable, as for every other store failure: the delivery worker pauses and reads again.
    It is not a fault of the worker, to restart (with a traceback, counted in
    ``duisgw_outbox_worker_restarts_total``) every ``poll_interval``."""
    msgs = traffic.merged()
    gw = await started(make_gateway(tmp_path / "gw", traffic, receiver, gateways, tmp_path / "logs"))
    for m in msgs:
        assert (await post(gw, m)).status in (200, 202, 204)
    db = gw.config.parent / "outbox.sqlite3"
    with contextlib.closing(sqlite3.connect(db, isolation_level=None, timeout=10)) as other:
        assert other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0  # all in the file
        os.truncate(db, 4096)  # every page but the first is gone
        other.execute("PRAGMA user_version = 7")  # a commit: the gateway's cached pages are stale now
    await asyncio.sleep(1.5)  # seven outbox scans (poll_interval 0.2 s)
    samples = await scrape(gw.admin_port)
    assert gw.terminate() == 0
    assert {k: v for k, v in samples.items() if k[0] == "duisgw_outbox_worker_restarts_total"} == {}
    assert "outbox read failed" in gw.log_text()


async def test_a_read_only_store_at_start_up_exits_2_naming_the_store(
    tmp_path: Path, ext4: Path, traffic: Traffic, receiver: Receiver, gateways: list[Gateway]
) -> None:
    gw = await started(make_gateway(ext4 / "gw", traffic, receiver, gateways, tmp_path / "logs"))
    assert gw.terminate() == 0
    subprocess.run(["mount", "-o", "remount,ro", str(ext4)], check=True)
    gw.start()
    assert gw.proc is not None
    assert gw.proc.wait(30) == 2
    assert f"duisgw serve: store_unavailable: cannot open {ext4 / 'gw' / 'outbox.sqlite3'}" in gw.log_text()


# ------------------------------------------------------------------------------------------ operator mistakes


async def test_deleting_the_wal_and_shm_files_while_running_is_detected_and_loses_no_acknowledged_message(
    tmp_path: Path, traffic: Traffic, receiver: Receiver, gateways: list[Gateway]
) -> None:
    """``rm outbox.sqlite3-wal outbox.sqlite3-shm`` beside a running gateway: its commits would go on into
    the deleted WAL, where only the checkpoint thread's next round (if its connection had opened the WAL
    before: none at all in the first second after a start) would find them, and a crash would lose them. The
    gateway finds it at its next commit, checkpoints what it holds into the database file and refuses
    (503) until it is restarted on the database."""
    msgs = traffic.merged()
    gw = await started(make_gateway(tmp_path / "gw", traffic, receiver, gateways, tmp_path / "logs"))
    half = len(msgs) // 2
    answers = await post_all(gw, msgs[:half])
    db = gw.config.parent / "outbox.sqlite3"
    os.unlink(f"{db}-wal")
    os.unlink(f"{db}-shm")
    after = [await post(gw, m) for m in msgs[half:]]
    answers.update({a.message_id: a for a in after if a.message_id is not None})
    ready = await readyz(gw)
    gw.kill()  # a crash: what was only in the deleted WAL (since the last checkpoint, if any) is gone
    log = gw.log_text()
    gw.start()
    await gw.wait_ready()
    for m, a in zip(msgs[half:], after, strict=True):  # the DSP re-delivers what was not acknowledged
        if a.status == 503:
            taken = await post_until_taken(gw, m)
            assert taken.status in (200, 202, 204), taken
            assert taken.message_id is not None
            answers[taken.message_id] = taken
    assert await tick(gw, msgs) == 200
    assert gw.terminate() == 0
    assert lost(acknowledged(answers), stored(db), traffic.expected()) == []
    assert {(a.status, a.text) for a in after} == {(503, "store_unavailable")}  # found at the next commit
    assert ready == (503, "store_unavailable")
    # the first file found changed is named: the -wal deleted, or already made again by a connection that opened
    # the database since (another inode: "replaced"), or the -shm (a CI run once logged another wording than
    # "-wal was deleted": the exact one made the test flaky)
    assert re.search(rf"{re.escape(db.name)}-(wal|shm) was (deleted|replaced by another file) while the gateway", log)


async def test_replacing_the_database_file_while_running_is_detected_and_keeps_what_was_acknowledged(
    tmp_path: Path, traffic: Traffic, receiver: Receiver, gateways: list[Gateway]
) -> None:
    """An operator restores an old backup over the running gateway's database (``cp`` then ``mv``): the
    gateway's commits would go on into the file it still has open, unlinked, and be gone when it stops. It
    finds it at its next commit, copies everything it committed to ``outbox.sqlite3.orphaned-TIME`` beside
    it, refuses (503) from then on and says so."""
    msgs = traffic.merged()
    gw = await started(make_gateway(tmp_path / "gw", traffic, receiver, gateways, tmp_path / "logs"))
    db = gw.config.parent / "outbox.sqlite3"
    with (
        contextlib.closing(sqlite3.connect(db)) as live,
        contextlib.closing(sqlite3.connect(tmp_path / "old.sqlite3")) as old,
    ):
        live.backup(old)  # a backup taken now (``sqlite3 .backup``): the messages below are not in it
    half = len(msgs) // 2
    answers = await post_all(gw, msgs[:half])
    os.rename(tmp_path / "old.sqlite3", db)
    for suffix in ("-wal", "-shm"):
        os.unlink(f"{db}{suffix}")
    after = [await post(gw, m) for m in msgs[half : half + 6]]
    answers.update({a.message_id: a for a in after if a.message_id is not None})
    ready = await readyz(gw)
    assert gw.terminate() == 0
    rescued = sorted(db.parent.glob("outbox.sqlite3.orphaned-*"))
    assert lost(acknowledged(answers), stored(rescued[0] if rescued else db), traffic.expected()) == []
    assert len(rescued) == 1, gw.log_tail()
    assert [(a.status, a.text) for a in after] == [(503, "store_unavailable")] * 6  # found at the next commit
    assert ready == (503, "store_unavailable")
    assert f"everything committed is copied to {rescued[0]}" in gw.log_text()

"""Faults in the DNO-facing delivery that used to stop a queue for good (found by the eleventh session's
review of the delivery; each test failed before its fix):

1. The retry delay was ``initial * multiplier ** (attempt - 1)``: a float power that overflows at attempt
   ~1,025 (a DNO endpoint down ~13 h at the defaults, which never dead-letter an unreachable one). The
   ``OverflowError`` ended the queue's worker; after the endpoint came back nothing was delivered, and the
   stored attempt count killed the worker again after a restart. The delay now stops growing at its cap.
2. A message id is made from DUIS text kept as received (``DCCAlertCode``), so a DSP-signed AD1 can carry a
   line break into it. aiohttp refuses such a header value: the POST raised out of the worker (the queue
   stopped behind that row), the ingress's own 200 could not be sent (the DSP saw a disconnect and
   re-delivered for ever), and the sender process never answered that send. The header now carries the id
   percent-encoded when it is not printable ASCII; a sender that raises on a row has it refused (it
   dead-letters) instead of ending the worker; a worker that ends before the stop is started again; the
   sender process answers every send, and a send it does not answer in time is unreachable.
3. A row waiting for its retry when the drain began kept ``stop()`` waiting the whole ``drain_timeout``.
4. A retry's time is stored as wall-clock time, and the wait was taken from the wall clock: a clock stepped
   back (an NTP correction, a VM restored from a snapshot) held a failed row, and every row of its queue
   behind it, back by the whole step. The wait now runs on the monotonic clock and never exceeds
   ``backoff_max`` (twelfth session).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import os
import random
import signal
import time
from pathlib import Path

import pytest
from servicekit import DNO_USER, Receiver, outages, pipeline_config, running

from gateway.duis.model import DCCAlertMessage, MessageId, PowerOutageEvent, Response, ResponseHeader
from gateway.service import sender_process
from gateway.service.api import Delivery, message_id_header_value
from gateway.service.config import DestinationConfig, LoggingConfig, OutboxConfig
from gateway.service.delivery import Backoff, DeliveryManager, HttpSender, SendOutcome
from gateway.service.metrics import Metrics
from gateway.service.outbox import Outbox, OutboxRow, SqliteStore
from gateway.service.serve import build_gateway, make_service
from gateway.service.simulate import DspSimulator, TimedMessage
from gateway.testkit.scenario import World

QUEUE = "http:dno"


class Endpoint:
    """A sender standing in for a DNO endpoint that is down until ``up`` and raises on ``poison`` rows."""

    def __init__(self, *, up: bool = True, poison: frozenset[str] = frozenset()) -> None:
        self.up, self.poison = up, poison
        self.sent: list[str] = []

    async def send(self, row: OutboxRow) -> SendOutcome:
        if row.message_id in self.poison:
            raise ValueError(f"cannot send {row.message_id!r}")
        if not self.up:
            return SendOutcome(False, refused=False, detail="ConnectionRefusedError")
        self.sent.append(row.message_id)
        return SendOutcome(True, detail="204")

    async def close(self) -> None:
        pass


async def _outbox(tmp_path: Path, *ids: str, store_cls: type[Outbox] = Outbox) -> tuple[SqliteStore, Outbox]:
    store = SqliteStore(tmp_path / "outbox.sqlite3", synchronous="NORMAL")
    await store.open()
    outbox = store_cls(store, lambda dest: (f"http:{dest}",))
    await outbox.enqueue_many([Delivery(m, "dno", f"<{m}/>".encode(), {"device": m}) for m in ids])
    return store, outbox


def one_destination(url: str, request_timeout: float = 0.5) -> sender_process.SenderSpec:
    """A sender process's spec for one HTTP destination, ``dno-a`` at ``url``."""
    return sender_process.SenderSpec(
        (DestinationConfig(name="dno-a", user=DNO_USER, url=url),), OutboxConfig(request_timeout=request_timeout),
        LoggingConfig(),
    )


async def _until(check: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


# ---------------------------------------------------------------- 1. the retry delay


@pytest.mark.parametrize("multiplier", [2.0, 10.0, 1.0001])
def test_the_retry_delay_stops_at_its_cap_and_never_overflows_however_many_attempts(
    multiplier: float,
) -> None:
    cfg = OutboxConfig(backoff_initial=0.5, backoff_multiplier=multiplier, backoff_max=60.0, jitter=0.0)
    backoff = Backoff(cfg, random.Random(1))
    delays = [backoff.delay(n) for n in (*range(1, 2000), 10**6, 10**12)]
    assert delays[0] == 0.5
    assert all(a <= b for a, b in itertools.pairwise(delays))  # never shrinks
    assert max(delays) == 60.0 and delays[-1] == 60.0


@pytest.mark.parametrize("window", [1, 4])
async def test_a_row_that_failed_a_thousand_times_is_delivered_when_the_endpoint_returns(
    tmp_path: Path, window: int
) -> None:
    store, outbox = await _outbox(tmp_path, "m1", "m2")
    # the state of m1 after ~13 h of an unreachable endpoint, as mark_failed stored it
    await store.write(lambda c: c.execute("UPDATE outbox SET attempts = 1023 WHERE message_id = 'm1'"))
    cfg = OutboxConfig(backoff_initial=0.001, backoff_max=0.001, poll_interval=0.05, window=window)
    endpoint = Endpoint(up=False)
    manager = DeliveryManager(outbox, {QUEUE: endpoint}, cfg, rng=random.Random(1))
    await manager.start()
    try:
        await asyncio.sleep(0.3)
        endpoint.up = True
        await outbox.enqueue_many([Delivery("m3", "dno", b"<m3/>", {"device": "m3"})])
        await _until(lambda: sorted(endpoint.sent) == ["m1", "m2", "m3"])
    finally:
        await manager.stop(timeout=0.5)
        await store.close()


# ---------------------------------------------------------------- 2. a row a sender cannot send


@pytest.mark.parametrize("window", [1, 4])
async def test_a_row_its_sender_raises_on_is_dead_lettered_and_the_queue_goes_on(
    tmp_path: Path, window: int
) -> None:
    store, outbox = await _outbox(tmp_path, "m1", "m2", "m3")
    cfg = OutboxConfig(
        backoff_initial=0.001, backoff_max=0.001, poll_interval=0.05, window=window, max_attempts=2
    )
    endpoint = Endpoint(poison=frozenset({"m2"}))
    manager = DeliveryManager(outbox, {QUEUE: endpoint}, cfg, rng=random.Random(1))
    await manager.start()
    try:
        await _until(lambda: sorted(endpoint.sent) == ["m1", "m3"])
        for _ in range(250):
            dead = await outbox.rows(QUEUE, "dead")
            if dead:
                break
            await asyncio.sleep(0.02)
        [row] = dead
        assert row.message_id == "m2"
        assert row.last_error is not None and row.last_error.startswith("sender error: ValueError")
    finally:
        await manager.stop(timeout=0.5)
        await store.close()


async def test_a_worker_that_fails_is_started_again_and_counted(tmp_path: Path) -> None:
    store, outbox = await _outbox(tmp_path, "m1")
    real = outbox.pending
    calls = {"n": 0}

    async def fails_once(queue: str, *, after_seq: int = 0, limit: int = 64) -> list[OutboxRow]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a fault in the worker")
        return await real(queue, after_seq=after_seq, limit=limit)

    outbox.pending = fails_once  # type: ignore[method-assign]
    metrics = Metrics()
    endpoint = Endpoint()
    manager = DeliveryManager(outbox, {QUEUE: endpoint}, OutboxConfig(poll_interval=0.05), metrics=metrics)
    await manager.start()
    try:
        await _until(lambda: endpoint.sent == ["m1"])
        assert (
            metrics.registry.get_sample_value("duisgw_outbox_worker_restarts_total", {"queue": QUEUE}) == 1.0
        )
    finally:
        await manager.stop(timeout=0.5)
        await store.close()


def test_a_message_id_is_percent_encoded_in_its_header_only_when_it_must_be() -> None:
    plain = "90-B3-D5-1F-30-00-00-02:90-B3-D5-1F-30-02-00-00:101|DCCAlertMessage.AD1"
    assert message_id_header_value(plain) == plain
    assert message_id_header_value("a|DCCAlertMessage.AD1\r\n") == "a|DCCAlertMessage.AD1%0D%0A"
    assert message_id_header_value("50%|ü") == "50%25|%C3%BC"


def line_break_ad1(tmp_path: Path, name: str) -> tuple[Path, TimedMessage, TimedMessage, TimedMessage]:
    """A generated world's reference data, a DSP-signed AD1 whose ``DCCAlertCode`` ends in a line break (DUIS text is
    kept as received: it reaches the message id and the ``kind``), with a plain AD1 before and after it."""
    world = World.generated(name)
    reference = world.write_reference(tmp_path / "ref")
    first, second = outages(world, 2)
    f = world.factory
    _esme, ch, mpan = world.meter(300)
    when = first.at + dt.timedelta(seconds=5)
    header = ResponseHeader("I0", when, response_id=MessageId(f.dcc_eui, f.dno_eui, 4242))
    body = DCCAlertMessage("AD1\n", PowerOutageEvent(ch, when - dt.timedelta(minutes=2), mpan))
    odd = TimedMessage(when, "inline", f._dsp_signed(Response(header, body)))
    later = TimedMessage(second.at + dt.timedelta(seconds=10), "inline", second.body)
    return reference, first, odd, later


async def test_a_dsp_signed_ad1_with_a_line_break_in_its_alert_code_is_answered_and_delivered(
    tmp_path: Path,
) -> None:
    """Through a real gateway: the AD1 is answered 200 (its id percent-encoded in the answer's header) and
    delivered to the DNO unchanged, and the AD1 behind it too."""
    reference, first, odd, later = line_break_ad1(tmp_path, "line-break")
    receiver = Receiver()
    await receiver.start()
    try:
        service = make_service(build_gateway(pipeline_config(tmp_path, reference, receiver.url, DNO_USER)))
        async with running(service):
            url = f"http://127.0.0.1:{service.port}"  # (bound once running)
            async with DspSimulator(url, DNO_USER, retry_for=0) as dsp:
                answers = [await dsp.post(m) for m in (first, odd, later)]
                assert [(a.status, a.decision) for a in answers] == [(200, "forward")] * 3
                assert answers[1].message_id is not None and answers[1].message_id.endswith("%0A")
                await receiver.wait_for(3)
    finally:
        await receiver.stop()
    assert sorted(r.body for r in receiver.log) == sorted([first.body, odd.body, later.body])
    assert [r.message_id for r in receiver.log if r.body == odd.body] == [answers[1].message_id]


async def test_the_http_sender_posts_a_message_id_with_control_characters(tmp_path: Path) -> None:
    receiver = Receiver()
    await receiver.start()
    sender = HttpSender(receiver.url, timeout=2.0)
    try:
        outcome = await sender.post("x|AD1\r\n", b"<x/>")
        assert outcome.ok, outcome
        assert [r.message_id for r in receiver.log] == ["x|AD1%0D%0A"]
    finally:
        await sender.close()
        await receiver.stop()


async def test_a_sender_process_that_does_not_answer_makes_the_send_unreachable_after_its_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sender_process, "_ANSWER_MARGIN", 0.5)
    receiver = Receiver()
    await receiver.start()
    spec = one_destination(receiver.url)
    process = sender_process.SenderProcess(spec)
    await process.start()
    assert process.pid is not None
    try:
        assert (await process.send("dno-a", "before", b"<a/>")).ok
        os.kill(process.pid, signal.SIGSTOP)  # alive, not answering
        try:
            t0 = time.monotonic()
            outcome = await process.send("dno-a", "while-stopped", b"<b/>")
            took = time.monotonic() - t0
        finally:
            with contextlib.suppress(ProcessLookupError):  # (killed for not answering: maybe reaped)
                os.kill(process.pid, signal.SIGCONT)
        assert (outcome.ok, outcome.refused) == (False, False), outcome
        assert "did not answer" in outcome.detail and 0.9 <= took < 5.0
        assert process.unanswered == 1
        stuck = process.pid
        await _until(lambda: process.serving and process.pid != stuck, timeout=10.0)  # killed and replaced
        assert process.restarts == 1
        assert (await process.send("dno-a", "after", b"<c/>")).ok
    finally:
        await process.stop()
        await receiver.stop()


# ---------------------------------------------------------------- 3. the drain


async def test_the_drain_does_not_wait_for_a_row_sleeping_in_its_backoff(tmp_path: Path) -> None:
    store, outbox = await _outbox(tmp_path, "m1")
    cfg = OutboxConfig(backoff_initial=30, backoff_max=30, jitter=0, drain_timeout=5.0, poll_interval=0.1)
    manager = DeliveryManager(outbox, {QUEUE: Endpoint(up=False)}, cfg, rng=random.Random(1))
    await manager.start()
    try:
        await asyncio.sleep(0.3)  # m1 failed once and sleeps 30 s for its retry
        t0 = time.monotonic()
        await manager.stop()
        assert time.monotonic() - t0 < 2.0
        [row] = await outbox.rows(QUEUE, "pending")
        assert row.attempts == 1  # kept pending, its retry time kept
    finally:
        await store.close()


# ---------------------------------------------------------------- 4. retry times and the wall clock


class SteppedClock:
    """A wall clock that reads ``offset`` seconds from the real one; a test steps it back."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


async def test_a_wall_clock_stepped_back_during_a_retry_wait_does_not_delay_the_retry_by_the_step(
    tmp_path: Path,
) -> None:
    store, outbox = await _outbox(tmp_path, "m1", "m2")
    cfg = OutboxConfig(backoff_initial=0.3, backoff_max=0.3, jitter=0, poll_interval=0.05, window=1)
    endpoint, clock = Endpoint(up=False), SteppedClock()
    manager = DeliveryManager(outbox, {QUEUE: endpoint}, cfg, rng=random.Random(1), clock=clock)
    await manager.start()
    try:
        await asyncio.sleep(0.1)  # m1 failed once and waits 0.3 s for its retry
        endpoint.up = True
        clock.offset = -3600.0  # the wall clock is corrected back by an hour meanwhile
        await _until(lambda: endpoint.sent == ["m1", "m2"], timeout=3.0)
    finally:
        await manager.stop(timeout=0.5)
        await store.close()


async def test_a_stored_retry_time_further_ahead_than_the_longest_backoff_waits_only_that_long(
    tmp_path: Path,
) -> None:
    store, outbox = await _outbox(tmp_path, "m1", "m2")
    # m1's retry time as a gateway stored it before its clock was stepped back an hour (and restarted)
    ahead = time.time() + 3600.0
    stored = "UPDATE outbox SET attempts = 3, next_attempt_at = ? WHERE message_id = 'm1'"
    await store.write(lambda c: c.execute(stored, (ahead,)))
    cfg = OutboxConfig(backoff_initial=0.2, backoff_max=0.5, jitter=0, poll_interval=0.05, window=1)
    endpoint = Endpoint()
    manager = DeliveryManager(outbox, {QUEUE: endpoint}, cfg, rng=random.Random(1))
    t0 = time.monotonic()
    await manager.start()
    try:
        await _until(lambda: endpoint.sent == ["m1", "m2"], timeout=3.0)
        assert time.monotonic() - t0 >= 0.4  # m1 still waited (at most) its longest backoff, in order
    finally:
        await manager.stop(timeout=0.5)
        await store.close()

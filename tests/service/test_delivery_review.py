"""Faults in the DNO-facing delivery found by a review of delivery.py / sender_process.py (each test failed
before its fix; real sockets, a real spawned sender process):

1. A DNO endpoint that answered its status and then did not finish the response body (a ``Content-Length``
   it never fills, a chunked body it stops sending) turned the answer into a *timeout*: the status was
   thrown away when the watchdog cancelled the body's drain. A 2xx was counted *unreachable* and POSTed
   again after every backoff, for ever (unreachable never dead-letters by default), holding its queue (or
   its device) behind it; a refusal (5xx) never reached ``max_attempts``. The status now stands once it
   has come: the drain is cut off (its connection closed) and the outcome is the status's.
2. A sender process alive but not answering (stopped, stuck) was never replaced: each send was answered
   *unreachable* after its bound and sent again into the same process, so nothing reached any HTTP
   destination until the gateway was restarted — and the copies it queued meanwhile were all POSTed at once
   if it ever resumed. A send the process does not answer within its bound now has the process killed and
   replaced (as one that died), so the sends are retried by a process that answers.
3. A dead letter that could not be recorded (the store refusing writes) sent the row again at once — every
   ``poll_interval`` for as long as the store refused, whatever the backoff — and counted it ``dead`` each
   time. The dead letter is now recorded again every ``poll_interval`` without sending the row again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from servicekit import Receiver, duis_body, running, service_config
from test_delivery_faults import _outbox, _until, one_destination

from gateway.service import sender_process
from gateway.service.api import StoreUnavailable
from gateway.service.app import Service
from gateway.service.config import OutboxConfig
from gateway.service.delivery import DeliveryManager, HttpSender
from gateway.service.metrics import Metrics
from gateway.service.outbox import Outbox

QUEUE = "http:dno"
XML = {"Content-Type": "application/xml"}


class StallingEndpoint:
    """A raw HTTP/1.1 endpoint: reads each POST whole, answers ``status`` with a ``Content-Length`` of 1,000 and
    only a few bytes of that body, then keeps the connection open without another byte."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.posts: list[str] = []
        self._server: asyncio.Server | None = None
        self._gone = asyncio.Event()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/duis"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            pairs = (line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
            fields = {k.strip().lower(): v.strip() for k, v in pairs}
            await reader.readexactly(int(fields[b"content-length"]))
            self.posts.append(fields[b"x-duisgw-message-id"].decode())
            writer.write(f"HTTP/1.1 {self.status} X\r\nContent-Length: 1000\r\n\r\npartial".encode())
            await writer.drain()
            await self._gone.wait()  # the rest of the body never comes
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._handlers.discard(task)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)

    async def stop(self) -> None:
        self._gone.set()
        if self._server is not None:
            self._server.close()
        for t in list(self._handlers):
            t.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)


# ---------------------------------------------------------------- 1. a status with a body that stalls


async def test_the_http_sender_keeps_a_2xx_whose_body_never_finishes() -> None:
    endpoint = StallingEndpoint(200)
    await endpoint.start()
    sender = HttpSender(endpoint.url, timeout=0.5)
    try:
        outcome = await asyncio.create_task(sender.post("m1", b"<m1/>"))
        assert outcome.ok, outcome  # the DNO accepted it: never a timeout, never sent again
        outcome = await asyncio.create_task(sender.post("m2", b"<m2/>"))
        assert outcome.ok, outcome  # (the stalled connection was not reused)
        assert endpoint.posts == ["m1", "m2"]
    finally:
        await sender.close()
        await endpoint.stop()


@pytest.mark.parametrize("window", [1, 4])
async def test_a_2xx_whose_body_stalls_is_delivered_once_not_posted_again_for_ever(
    tmp_path: Path, window: int
) -> None:
    endpoint = StallingEndpoint(200)
    await endpoint.start()
    store, outbox = await _outbox(tmp_path, "m1", "m2")
    cfg = OutboxConfig(backoff_initial=0.05, backoff_max=0.1, poll_interval=0.05, request_timeout=0.3, window=window)
    sender = HttpSender(endpoint.url, timeout=cfg.request_timeout)
    manager = DeliveryManager(outbox, {QUEUE: sender}, cfg, rng=random.Random(1))
    await manager.start()
    try:
        await asyncio.sleep(2.5)  # ~8 request timeouts
        delivered = [r.message_id for r in await outbox.rows(QUEUE, "delivered")]
        assert sorted(delivered) == ["m1", "m2"]
        assert sorted(endpoint.posts) == ["m1", "m2"]  # each POSTed once
    finally:
        await manager.stop(timeout=0.5)
        await store.close()
        await endpoint.stop()


async def test_a_refusal_whose_body_stalls_counts_as_a_refusal_and_dead_letters(tmp_path: Path) -> None:
    endpoint = StallingEndpoint(500)
    await endpoint.start()
    store, outbox = await _outbox(tmp_path, "m1")
    cfg = OutboxConfig(backoff_initial=0.05, backoff_max=0.1, poll_interval=0.05, request_timeout=0.3, max_attempts=2)
    sender = HttpSender(endpoint.url, timeout=cfg.request_timeout)
    manager = DeliveryManager(outbox, {QUEUE: sender}, cfg, rng=random.Random(1))
    await manager.start()
    try:
        await asyncio.sleep(2.5)
        [row] = await outbox.rows(QUEUE)
        assert (row.state, row.refusals) == ("dead", 2), row
        assert endpoint.posts == ["m1", "m1"]
    finally:
        await manager.stop(timeout=0.5)
        await store.close()
        await endpoint.stop()


async def test_the_sender_process_keeps_a_2xx_whose_body_never_finishes() -> None:
    endpoint = StallingEndpoint(200)
    await endpoint.start()
    spec = one_destination(endpoint.url)
    process = sender_process.SenderProcess(spec)
    await process.start()
    try:
        outcome = await process.send("dno-a", "m1", b"<m1/>")
        assert outcome.ok, outcome
        assert endpoint.posts == ["m1"]
    finally:
        await process.stop()
        await endpoint.stop()


# ---------------------------------------------------------------- 2. a sender process that does not answer


async def test_a_sender_process_that_stops_answering_is_replaced_and_the_queue_delivered(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sender_process, "_ANSWER_MARGIN", 0.5)
    cfg = service_config(tmp_path, receiver.url)
    cfg = replace(cfg, outbox=replace(cfg.outbox, sender_process=True, request_timeout=0.5, window=4))
    async with running(Service(cfg)) as service:
        proc = service.sender_process
        assert proc is not None
        stuck = proc.pid
        os.kill(stuck, signal.SIGSTOP)  # alive, never answering again (a hung process)
        try:
            ids = []
            async with aiohttp.ClientSession() as http:
                for i in range(6):
                    url = f"http://127.0.0.1:{service.port}/duis/dno/dno-a"
                    async with http.post(url, data=duis_body(i), headers=XML) as r:
                        assert r.status == 204
                        ids.append(r.headers["X-DUISGW-Message-Id"])
            await receiver.wait_for(6, timeout=15)
            assert set(receiver.accepted_ids()) == set(ids)
            assert proc.pid != stuck and proc.unanswered >= 1
        finally:
            with contextlib.suppress(ProcessLookupError):  # (killed for not answering, and reaped)
                os.kill(stuck, signal.SIGCONT)


# ---------------------------------------------------------------- 3. a dead letter the store cannot record


class RefusingDeadLetters(Outbox):
    """An outbox whose store refuses to record dead letters until ``until`` (monotonic time)."""

    until = 0.0
    tries = 0

    async def dead_letter(self, seq: int, *, error: str, refused: bool) -> None:
        self.tries += 1
        if time.monotonic() < self.until:
            raise StoreUnavailable("write failed: disk I/O error")
        await super().dead_letter(seq, error=error, refused=refused)


@pytest.mark.parametrize("window", [1, 4])
async def test_a_dead_letter_the_store_cannot_record_is_not_sent_again_meanwhile(
    tmp_path: Path, receiver: Receiver, window: int
) -> None:
    store, outbox = await _outbox(tmp_path, "m1", store_cls=RefusingDeadLetters)
    assert isinstance(outbox, RefusingDeadLetters)
    receiver.refuse.add("m1")
    url = receiver.url
    cfg = OutboxConfig(backoff_initial=5.0, backoff_max=5.0, poll_interval=0.1, max_attempts=1, window=window)
    metrics = Metrics()
    manager = DeliveryManager(outbox, {QUEUE: HttpSender(url, timeout=2.0)}, cfg, rng=random.Random(1),
                              metrics=metrics)  # fmt: skip
    outbox.until = time.monotonic() + 1.5
    await manager.start()
    try:
        await _until(lambda: outbox.tries >= 3)  # the store refused it a few times meanwhile
        await _until(lambda: time.monotonic() > outbox.until + 0.5, timeout=5)
        [row] = await outbox.rows(QUEUE)
        assert row.state == "dead"
        assert [r.message_id for r in receiver.log] == ["m1"]  # refused once: never POSTed again
        dead = metrics.deliveries.labels(QUEUE, "dead")._value.get()
        assert dead == 1.0
    finally:
        await manager.stop(timeout=0.5)
        await store.close()

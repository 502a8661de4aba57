"""HTTP delivery from a process of its own: :class:`SenderProcess` (``[outbox] sender_process``).

Theory of operation
===================

The delivery manager (gateway.service.delivery: queue order, the window, retries with backoff, dead
letters, the outbox marks) stays in the gateway process; only the POSTs move. The gateway process's
event loop shares one interpreter lock with the engine's thread, and the aiohttp client's work for
each POST (about 40 % of that event loop at capacity) holds the lock while a batch of decisions
waits to commit. With ``sender_process = true`` one spawned process runs an
:class:`~gateway.service.delivery.HttpSender` per HTTP destination (its TLS settings built there),
and each destination's queue gets a :class:`RemoteHttpSender`:

    send(row) → ("send", seq, destination, message_id, original bytes)  →  POST in the process
              ← ("ok", seq, SendOutcome)

over one framed socketpair (gateway.service.channel: whatever is sent in one loop iteration travels in
one frame). The bytes are the outbox row's, unchanged.

States of the process (transitions in ``_TRANSITIONS``)::

    starting --ready--> serving --stop--> stopping --lost--> stopped
    starting|serving --lost--> dead      (replaced unless stopping)

Failures. When the process dies, every send in flight, and every send until a replacement serves, is
answered *unreachable* (never *refused*): the delivery manager keeps the row and retries it after its
backoff. A POST that may have reached the DNO before the process died is sent again: delivery stays
at-least-once, and receivers dedupe on ``X-DUISGW-Message-Id``. A replacement is started at most once
per ``_RESTART_DELAY`` seconds. The process exits when the gateway process goes away (its channel
closes), and ignores the signals sent to the process group (the gateway process stops it). A send the
process does not answer within the request timeout and ``_ANSWER_MARGIN`` (a process alive but stopped or
stuck) is answered *unreachable* the same way (counted in :attr:`SenderProcess.unanswered`), and the
process is killed: it is replaced as one that died (left alive, it would take every retry and answer none). The process
answers every send, a POST that raised included (*refused*: the row dead-letters, never stalls the queue).

TLS reload (:meth:`SenderProcess.reload_tls`): ``("tls", seq, {destination: digest})`` makes the process
read the destinations' TLS files again (off its event loop), check it read the material the gateway
process judged (the digest), and give each sender the new context (new connections use it, POSTs under
way finish on theirs); it answers ``("tls-done", seq, {destination: problem or None})``. A replacement
process reads the files when it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import logging
import multiprocessing
import os
import signal
import socket
import time
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from gateway.service.channel import Channel, open_channel
from gateway.service.config import DestinationConfig, LoggingConfig, OutboxConfig
from gateway.service.delivery import HttpSender, SendOutcome
from gateway.service.logs import configure_logging
from gateway.service.outbox import OutboxRow
from gateway.service.tls_reload import prepare_as
from gateway.service.workers import join_processes

__all__ = ["RemoteHttpSender", "SenderProcess", "SenderSpec", "sender_main"]

log = logging.getLogger("duisgw.sender")

_RESTART_DELAY = 1.0
#: how long past its request timeout a send may go unanswered before it counts as unreachable
_ANSWER_MARGIN = 5.0

_TRANSITIONS: dict[tuple[str, str], str] = {
    ("starting", "ready"): "serving",
    ("serving", "stop"): "stopping",
    ("stopping", "lost"): "stopped",
    ("starting", "lost"): "dead",
    ("serving", "lost"): "dead",
}


@dataclass(frozen=True)
class SenderSpec:
    """What the sender process needs (paths and options only: cheap to pickle)."""

    destinations: tuple[DestinationConfig, ...]  # those with an http(s) URL
    outbox: OutboxConfig
    logging: LoggingConfig
    base_dir: Path | None = None


# ------------------------------------------------------------------------------------------ the process


def sender_main(spec: SenderSpec, channel: socket.socket) -> None:
    """The sender process: POST what the gateway process asks for until it says stop or goes away."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    configure_logging(spec.logging)
    asyncio.run(_serve(spec, channel))


async def _serve(spec: SenderSpec, sock: socket.socket) -> None:
    done = asyncio.Event()
    senders = {
        d.name: HttpSender.for_destination(d, spec.outbox, base_dir=spec.base_dir) for d in spec.destinations
    }
    tasks: set[asyncio.Task[None]] = set()
    channel: Channel | None = None

    dests = {d.name: d for d in spec.destinations}

    async def reload_tls(seq: int, digests: dict[str, str]) -> None:
        loop = asyncio.get_running_loop()
        now = dt.datetime.now(dt.UTC)
        problems: dict[str, str | None] = {}
        for name, digest in digests.items():
            sender, dest = senders.get(name), dests.get(name)
            if sender is None or dest is None:
                problems[name] = f"no HTTP destination {name!r} in the sender process"
                continue
            try:
                prepared = await loop.run_in_executor(
                    None, prepare_as, f"destination:{name}", dest.tls, spec.base_dir, digest, now
                )
                if prepared.refused is not None or prepared.context is None:
                    problems[name] = prepared.refused or "no context built"
                    continue
                await sender.use_context(prepared.context)
                problems[name] = None
            except Exception as exc:  # reported to the gateway process, never lost in the task
                problems[name] = f"{type(exc).__name__}: {exc}"[:500]
        if channel is not None:
            channel.send(("tls-done", seq, problems))

    async def post(seq: int, destination: str, message_id: str, body: bytes) -> None:
        sender = senders.get(destination)
        if sender is None:
            outcome = SendOutcome(False, refused=True, detail=f"no HTTP destination {destination!r}")
        else:
            try:
                outcome = await sender.post(message_id, body)
            except Exception as exc:  # always answered: the gateway process waits for every send
                log.exception("the POST failed", extra={"destination": destination, "message_id": message_id})
                outcome = SendOutcome(False, refused=True, detail=f"sender error: {type(exc).__name__}: {exc}"[:300])
        if channel is not None:
            channel.send(("ok", seq, outcome))

    def on_items(items: list[Any]) -> None:
        for item in items:
            if item[0] == "send":
                task = asyncio.get_running_loop().create_task(post(*item[1:]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            elif item[0] == "tls":
                task = asyncio.get_running_loop().create_task(reload_tls(item[1], item[2]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            elif item[0] == "stop":
                done.set()

    channel = await open_channel(sock, on_items, done.set)
    channel.send(("ready", os.getpid()))
    await done.wait()
    if tasks:  # sends under way finish (each bounded by the request timeout)
        await asyncio.gather(*tasks, return_exceptions=True)
    for sender in senders.values():
        await sender.close()
    channel.close()


# ------------------------------------------------------------------------------------------ gateway side


class RemoteHttpSender:
    """A :class:`~gateway.service.delivery.Sender` for one destination, POSTing from the sender process."""

    def __init__(self, process: SenderProcess, destination: str) -> None:
        self.process = process
        self.destination = destination

    async def send(self, row: OutboxRow) -> SendOutcome:
        return await self.process.send(self.destination, row.message_id, row.body)

    async def close(self) -> None:
        """The process closes its connections when it stops."""
        return None


class SenderProcess:
    """The sender process, its channel and its replacement (module docstring)."""

    def __init__(
        self,
        spec: SenderSpec,
        *,
        mp_context: str = "spawn",
        start_timeout: float = 60.0,
        on_event: Any = None,
    ) -> None:
        if mp_context == "fork":
            raise ValueError("never fork the gateway process (it has threads): use spawn or forkserver")
        self.spec = spec
        self.start_timeout = start_timeout
        self._ctx: Any = multiprocessing.get_context(mp_context)
        self._on_event = on_event
        self._proc: BaseProcess | None = None
        self._channel: Channel | None = None
        self._ready: asyncio.Future[None] | None = None
        self._state = "stopped"
        self._seq = itertools.count(1)
        self._pending: dict[int, asyncio.Future[SendOutcome]] = {}
        self._reloads: dict[int, asyncio.Future[dict[str, str | None]]] = {}
        self._restart: asyncio.Task[None] | None = None
        self._last_start = 0.0
        self._stopping = False
        self.pid = 0
        self.restarts = 0  # replacements started (observability, tests)
        self.sent = 0  # sends answered by the process
        self.unanswered = 0  # sends the process did not answer within the request timeout and the margin

    def sender(self, destination: str) -> RemoteHttpSender:
        return RemoteHttpSender(self, destination)

    @property
    def serving(self) -> bool:
        return self._state == "serving"

    def _move(self, event: str) -> None:
        self._state = _TRANSITIONS[(self._state, event)]

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the process; return when it serves (else ``RuntimeError``)."""
        loop = asyncio.get_running_loop()
        self._last_start = time.monotonic()
        parent, child = socket.socketpair()
        proc = self._ctx.Process(
            target=sender_main, args=(self.spec, child), name="duisgw-sender", daemon=True
        )
        try:
            proc.start()
        finally:
            child.close()
        self._proc = proc
        self._state = "starting"
        ready: asyncio.Future[None] = loop.create_future()
        self._ready = ready
        self._channel = await open_channel(parent, self._on_items, self._lost)
        try:
            await asyncio.wait_for(asyncio.shield(ready), self.start_timeout)
        except BaseException:
            if self._channel is not None:
                self._channel.close()
            if proc.is_alive():
                proc.kill()
            raise
        log.info(
            "sender process serving", extra={"pid": self.pid, "destinations": len(self.spec.destinations)}
        )

    async def stop(self) -> None:
        """Let the sends under way finish, then stop the process."""
        self._stopping = True
        if self._restart is not None:
            self._restart.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._restart
        proc, channel = self._proc, self._channel
        if channel is not None and self._state == "serving":
            self._move("stop")
            channel.send(("stop",))
        if proc is not None:
            await join_processes([proc], timeout=self.spec.outbox.request_timeout + 5.0)
        if channel is not None:
            channel.close()
        self._fail_pending("the sender process stopped")

    # ------------------------------------------------------------------ sends

    async def send(self, destination: str, message_id: str, body: bytes) -> SendOutcome:
        if self._state != "serving" or self._channel is None:
            return SendOutcome(False, refused=False, detail="sender process not running")
        seq = next(self._seq)
        proc = self._proc
        fut: asyncio.Future[SendOutcome] = asyncio.get_running_loop().create_future()
        self._pending[seq] = fut
        self._channel.send(("send", seq, destination, message_id, body))
        # bounded here too: a process that is alive but does not answer (stopped, stuck) must not hold the
        # queue for ever; the row is retried after its backoff (unreachable), as when the process dies
        bound = self.spec.outbox.request_timeout + _ANSWER_MARGIN
        try:
            return await asyncio.wait_for(asyncio.shield(fut), bound)
        except TimeoutError:
            self._pending.pop(seq, None)
            self.unanswered += 1
            log.error("the sender process did not answer a send: killing it (a replacement sends again)",
                      extra={"destination": destination, "message_id": message_id, "after_s": bound})  # fmt: skip
            # a process that does not answer within the bound is stuck (stopped, hung): left alive, it would take
            # every retry and answer none (nothing delivered until a restart of the gateway), and its POSTs could
            # go out late, beside the retries of the same rows. Killed, it is replaced as one that died.
            if proc is not None and proc is self._proc and self._state == "serving" and proc.is_alive():
                proc.kill()
            return SendOutcome(False, refused=False, detail=f"sender process did not answer within {bound:g} s")

    async def reload_tls(self, digests: dict[str, str], timeout: float = 60.0) -> dict[str, str | None]:
        """Make the process use the destinations' reloaded TLS material (module docstring): by destination,
        ``None`` once it does, else why not (the process keeps the context it had)."""
        if self._state != "serving" or self._channel is None:
            return {name: "the sender process is not running" for name in digests}
        seq = next(self._seq)
        fut: asyncio.Future[dict[str, str | None]] = asyncio.get_running_loop().create_future()
        self._reloads[seq] = fut
        self._channel.send(("tls", seq, digests))
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return {name: f"the sender process did not answer within {timeout:g} s" for name in digests}
        except RuntimeError as exc:  # it died meanwhile (a replacement reads the files when it starts)
            return {name: str(exc) for name in digests}
        finally:
            self._reloads.pop(seq, None)

    def _on_items(self, items: list[Any]) -> None:
        for item in items:
            if item[0] == "tls-done":
                answer = self._reloads.pop(item[1], None)
                if answer is not None and not answer.done():
                    answer.set_result(item[2])
            elif item[0] == "ok":
                fut = self._pending.pop(item[1], None)
                self.sent += 1
                if fut is not None and not fut.done():
                    fut.set_result(item[2])
            elif item[0] == "ready":
                self.pid = int(item[1])
                self._move("ready")
                if self._ready is not None and not self._ready.done():
                    self._ready.set_result(None)

    def _fail_pending(self, why: str) -> None:
        reloads, self._reloads = self._reloads, {}
        for answer in reloads.values():
            if not answer.done():
                answer.set_exception(RuntimeError(why))
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_result(SendOutcome(False, refused=False, detail=why))

    def _lost(self) -> None:
        was = self._state
        self._move("lost")
        self._fail_pending("the sender process died")
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(RuntimeError("the sender process exited while starting"))
        if was in ("starting", "stopping") or self._stopping:
            return
        log.error(
            "sender process died: starting another", extra={"pid": self.pid, "restarts": self.restarts + 1}
        )
        if self._on_event is not None:
            self._on_event("died")
        self.restarts += 1
        self._restart = asyncio.get_running_loop().create_task(self._replace(), name="duisgw-sender-restart")

    async def _replace(self) -> None:
        while not self._stopping:
            delay = self._last_start + _RESTART_DELAY - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if self._proc is not None:
                await join_processes([self._proc], timeout=1.0)
            try:
                await self.start()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error(
                    "sender process could not be started", extra={"error": f"{type(exc).__name__}: {exc}"}
                )

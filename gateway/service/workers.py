"""Classification in worker processes: :class:`ClassifyPool` (``[pipeline] classify_processes``).

Theory of operation
===================

Classifying a message (safe parse, DSP XML signature, DUIS decode, GBCS device signature) is pure
CPU and holds the GIL, so in the gateway process it caps the whole service at one core. The pool
runs :meth:`gateway.pipeline.Classifier.classify` in ``processes`` worker processes instead.

Transport. Each worker is a ``spawn``-ed process (the gateway has threads: it is never forked) with
one duplex pipe. The parent's end is watched by the event loop itself (``loop.add_reader``): no
helper thread, no executor, so nothing competes with the event loop for the GIL. A task is one
pickled list of ``(lane, body, arrival)``; the answer one pickled list of
:func:`gateway.pipeline.portable` results (without the parsed model) in the same order. A worker
builds its classifier once, then says ``("ready", pid)``; :meth:`ClassifyPool.start` returns when
every worker has. Before an answer a worker may send ``("event", name)`` messages (its GBCS key index
found corrupt: :data:`gateway.pipeline.KEY_INDEX_CORRUPT`), handed to ``on_event``.

Micro-batching. A worker has at most one task. Calls that arrive while every worker is busy queue
up, and a worker that becomes free takes the queue (shared among the free workers, at most
``max_batch`` each) as ONE task, so the pickling and the pipe round trip are paid per batch, not per
message; under light load a task is a single message and adds no waiting.

States of a worker (transitions in ``_TRANSITIONS``)::

    starting --ready--> idle --send--> busy --answer--> idle
    idle --reload--> reloading --reloaded--> idle
    starting|idle|busy|reloading --EOF/error--> dead   (a replacement is started)

Reload (:meth:`ClassifyPool.reload`: the SMKI store and the GBCS key store). The pool takes the new spec
(what a replacement worker builds: :class:`gateway.pipeline.ClassifierSpec` with the SMKI material and
the key store reference), and every worker of an older generation is sent ``("reload", generation,
material, keys)`` as soon as it is idle, *before* any further task: between two chunks it builds the SMKI
store from those bytes and maps the key index the gateway process wrote, each only when it changed
(:func:`gateway.pipeline.reload_worker`), and answers ``("reload-ok", generation)``. A chunk is
therefore classified wholly with one store of each, and every chunk dispatched after the reload began with
the new ones. A worker that cannot build it
exits (it is replaced from the new spec); one that has not answered within the timeout is killed (its
task is retried, as for any worker death).

Failures. A worker that dies (EOF on its pipe) takes only its own task down: the messages of that
task are retried ONCE, each alone in a task of its own; a message whose lone task kills a worker
again is a *poison* message and is answered :class:`ClassifyWorkerDied` (503: not lost, the DSP
re-delivers) while its neighbours are classified normally. A replacement worker is started for
every death. If no worker can be started, waiting calls are answered :class:`ClassifyUnavailable`
(503) and calls in the next ``_RESTART_BACKOFF`` seconds too. ``on_event`` hears ``"worker-died"``,
``"poison"`` and the workers' own events (metrics). :meth:`ClassifyPool.aclose` lets queued work finish, then closes the
pipes (a worker exits on EOF) and joins the processes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import multiprocessing
import os
import pickle
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

from gateway.pipeline import (
    Classified,
    Classifier,
    LaneName,
    WorkerFailure,
    classify_chunk,
    init_worker,
    reload_worker,
    worker_events,
)
from gateway.service.api import StoreUnavailable

__all__ = [
    "ClassifyFailed",
    "ClassifyPool",
    "ClassifyUnavailable",
    "ClassifyWorkerDied",
    "join_processes",
    "worker_main",
]

log = logging.getLogger("duisgw.classify")

_RESTART_BACKOFF = 5.0  # seconds during which calls are answered 503 after the workers failed to start
_PICKLE = pickle.HIGHEST_PROTOCOL


class ClassifyUnavailable(StoreUnavailable):
    """Classification in worker processes cannot answer this message now: the ingress answers 503 and
    the DSP re-delivers it (workers not running, being restarted, or the gateway shutting down)."""

    code = "classify_unavailable"


class ClassifyWorkerDied(ClassifyUnavailable):
    """A worker process died while classifying this message twice (the second time alone): answered
    503 so the message is not lost; the DSP re-delivers it."""

    code = "classify_worker_died"


async def join_processes(procs: Sequence[BaseProcess], timeout: float = 5.0) -> None:
    """Wait (off the event loop) for worker processes told to exit; kill any still alive after
    ``timeout`` seconds."""

    def join() -> None:
        for proc in procs:
            proc.join(timeout)
            if proc.is_alive():
                proc.kill()
                proc.join(1.0)

    if procs:
        await asyncio.get_running_loop().run_in_executor(None, join)


class ClassifyFailed(RuntimeError):
    """The classifier raised in a worker (a bug, never bad input): the ingress keeps the bytes, 500."""


class _Spec(Protocol):
    def build(self) -> Classifier: ...


def worker_main(spec: _Spec, conn: Connection) -> None:
    """A worker process: build the classifier, say ready, then answer tasks until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the gateway's to handle; EOF stops us
    try:
        init_worker(spec)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            conn.send_bytes(pickle.dumps(("failed", f"{type(exc).__name__}: {exc}"[:500]), _PICKLE))
        return
    conn.send_bytes(pickle.dumps(("ready", os.getpid()), _PICKLE))
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        msg: Any = pickle.loads(data)
        if isinstance(msg, tuple) and msg[:1] == ("reload",):  # a reload, between two chunks
            try:
                reload_worker(msg[2], msg[3])
            except Exception as exc:  # exit: the pool replaces this worker from its spec (the new material)
                with contextlib.suppress(OSError):
                    conn.send_bytes(
                        pickle.dumps(("reload-failed", msg[1], f"{type(exc).__name__}: {exc}"[:500]), _PICKLE)
                    )
                return
            conn.send_bytes(pickle.dumps(("reload-ok", msg[1]), _PICKLE))
            continue
        chunk: Sequence[tuple[LaneName, bytes, datetime]] = msg
        answer = classify_chunk(chunk)
        for name in worker_events():  # e.g. its key index found corrupt: the gateway counts it
            conn.send_bytes(pickle.dumps(("event", name), _PICKLE))
        conn.send_bytes(pickle.dumps(answer, _PICKLE))


@dataclass(slots=True)
class _Job:
    lane: LaneName
    body: bytes
    arrival: datetime
    future: asyncio.Future[Classified]
    suspect: bool = False  # was in a task whose worker died: retried alone


_TRANSITIONS: dict[tuple[str, str], str] = {
    ("starting", "ready"): "idle",
    ("idle", "send"): "busy",
    ("busy", "answer"): "idle",
    ("idle", "reload"): "reloading",
    ("reloading", "reloaded"): "idle",
    ("starting", "died"): "dead",
    ("idle", "died"): "dead",
    ("busy", "died"): "dead",
    ("reloading", "died"): "dead",
}


class _Worker:
    __slots__ = ("conn", "fd", "generation", "jobs", "pid", "proc", "ready", "reloaded", "state")

    def __init__(
        self, proc: BaseProcess, conn: Connection, ready: asyncio.Future[None], generation: str
    ) -> None:
        self.proc = proc
        self.conn = conn
        self.fd = conn.fileno()
        self.ready = ready
        self.jobs: list[_Job] = []
        self.pid = proc.pid or 0
        self.state = "starting"
        self.generation = generation  # the reference data (spec generation) its classifier was built from
        self.reloaded: asyncio.Future[bool] | None = None  # a reload waiting for this worker

    def move(self, event: str) -> None:
        self.state = _TRANSITIONS[(self.state, event)]


class ClassifyPool:
    """:meth:`Classifier.classify` in ``processes`` worker processes, micro-batched (module docstring)."""

    def __init__(
        self,
        spec: _Spec,
        processes: int,
        *,
        max_batch: int = 256,
        mp_context: str = "spawn",
        start_timeout: float = 120.0,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        if processes < 1:
            raise ValueError("processes must be >= 1")
        if mp_context == "fork":
            raise ValueError("never fork the gateway process (it has threads): use spawn or forkserver")
        self.spec = spec
        self.processes = processes
        self.max_batch = max_batch
        self.start_timeout = start_timeout
        self._ctx: Any = multiprocessing.get_context(mp_context)  # SpawnContext | ForkServerContext
        self._on_event = on_event
        self._workers: list[_Worker] = []
        self._queue: collections.deque[_Job] = collections.deque()
        self._suspects: collections.deque[_Job] = collections.deque()
        self._starting: set[asyncio.Task[None]] = set()
        self._failed_at: float | None = None
        self._pump_soon = False
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.tasks = 0  # tasks sent to workers (observability, tests, benchmarks)
        self.messages = 0  # messages classified by workers
        self.restarts = 0  # workers started to replace dead ones
        #: the reference data the workers are to hold (the spec's generation: :meth:`reload`)
        self.generation = str(getattr(spec, "generation", ""))
        self.reloads = 0  # workers that rebuilt their SMKI store or reopened their GBCS key store

    @property
    def pids(self) -> list[int]:
        """The process ids of the live workers."""
        return [w.pid for w in self._workers if w.state != "dead"]

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the workers; return when each has built its classifier (else ClassifyUnavailable)."""
        results = await asyncio.gather(
            *(self._spawn() for _ in range(self.processes)), return_exceptions=True
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            await self._stop_workers()
            raise ClassifyUnavailable(f"classify workers could not be started: {failed[0]}") from failed[0]
        log.info("classify workers ready", extra={"processes": self.processes, "pids": self.pids})

    async def _spawn(self) -> None:
        loop = asyncio.get_running_loop()
        parent, child = self._ctx.Pipe(duplex=True)
        proc = self._ctx.Process(
            target=worker_main, args=(self.spec, child), name="duisgw-classify", daemon=True
        )
        proc.start()
        child.close()
        w = _Worker(proc, parent, loop.create_future(), self.generation)
        self._workers.append(w)
        loop.add_reader(w.fd, self._readable, w)
        try:
            await asyncio.wait_for(asyncio.shield(w.ready), self.start_timeout)
        except BaseException:
            self._discard(w)
            raise

    async def aclose(self, timeout: float = 30.0) -> None:
        """Finish the work already queued (bounded by ``timeout``), then stop the workers."""
        if self._closed and not self._workers:
            return
        self._closed = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        self._fail_waiting(ClassifyUnavailable("the gateway is shutting down"))
        for t in list(self._starting):
            t.cancel()
        await asyncio.gather(*self._starting, return_exceptions=True)
        await self._stop_workers()

    async def _stop_workers(self) -> None:
        workers, self._workers = self._workers, []
        for w in workers:
            self._unwatch(w)
            w.conn.close()  # the worker sees EOF and exits
        await join_processes([w.proc for w in workers])

    async def reload(self, spec: _Spec, timeout: float = 60.0) -> dict[str, int]:
        """Make every worker classify with the reference data of ``spec`` (its SMKI material and GBCS key
        store: module docstring): returns once each worker has rebuilt what changed (``reloaded``) or was
        replaced (``replaced``: it died, could not build it, or did not answer within ``timeout`` and was
        killed; its replacement builds from the new spec)."""
        self.spec = spec
        self.generation = str(getattr(spec, "generation", ""))
        loop = asyncio.get_running_loop()
        waiting: list[asyncio.Future[bool]] = []
        for w in self._workers:
            if w.state == "dead" or w.generation == self.generation:
                continue
            if w.reloaded is None or w.reloaded.done():
                w.reloaded = loop.create_future()
            waiting.append(w.reloaded)
        self._pump()  # idle workers reload now; busy ones when their chunk is answered
        if waiting:
            _done, late = await asyncio.wait(waiting, timeout=timeout)
            for w in list(self._workers):
                if w.reloaded in late:
                    log.error("classify worker did not reload its reference data in time: replacing it",
                              extra={"pid": w.pid, "timeout": timeout})  # fmt: skip
                    w.proc.kill()  # EOF on its pipe: _died replaces it from the new spec
            if late:
                await asyncio.wait(late, timeout=10.0)
        reloaded = sum(1 for f in waiting if f.done() and not f.cancelled() and f.result())
        return {"reloaded": reloaded, "replaced": len(waiting) - reloaded}

    # ------------------------------------------------------------------ classify

    async def classify(self, lane: LaneName, body: bytes, arrival: datetime) -> Classified:
        if self._closed:
            raise ClassifyUnavailable("the gateway is shutting down")
        if not self._live():
            failed = self._failed_at
            if failed is not None and time.monotonic() - failed < _RESTART_BACKOFF:
                raise ClassifyUnavailable("classify workers are not running")
            if not self._starting:
                self._replace()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Classified] = loop.create_future()
        self._queue.append(_Job(lane, body, arrival, fut))
        self._idle.clear()
        if not self._pump_soon:  # calls arriving in this loop iteration go together
            self._pump_soon = True
            loop.call_soon(self._pump)
        return await fut

    def _live(self) -> bool:
        return any(w.state in ("idle", "busy") for w in self._workers)

    def _pump(self) -> None:
        self._pump_soon = False
        for w in self._workers:  # a worker of an older SMKI generation reloads before its next task
            if w.state == "idle" and w.generation != self.generation:
                self._send_reload(w)
        while self._suspects or self._queue:
            idle = [w for w in self._workers if w.state == "idle"]  # again each time: sends change it
            if not idle:
                break
            if self._suspects:  # a suspect goes alone: a worker death is then its own
                self._send(idle[0], [self._suspects.popleft()])
            else:
                n = min(-(-len(self._queue) // len(idle)), self.max_batch)  # share among the free workers
                self._send(idle[0], [self._queue.popleft() for _ in range(n)])
        if not (
            self._queue or self._suspects or any(w.state in ("busy", "reloading") for w in self._workers)
        ):
            self._idle.set()

    def _send_reload(self, w: _Worker) -> None:
        """Send ``w`` the pool's SMKI material and GBCS key store (``w`` is idle: it is reading its pipe, so
        the send does not wait for a chunk to finish)."""
        smki, keys = getattr(self.spec, "smki", None), getattr(self.spec, "keys", None)
        w.move("reload")
        try:
            w.conn.send_bytes(pickle.dumps(("reload", self.generation, smki, keys), _PICKLE))
        except OSError:
            asyncio.get_running_loop().call_soon(self._died, w)

    def _send(self, w: _Worker, jobs: list[_Job]) -> None:
        jobs = [j for j in jobs if not j.future.done()]  # a caller that went away
        if not jobs:
            return
        w.jobs = jobs
        w.move("send")
        self.tasks += 1
        try:
            w.conn.send_bytes(pickle.dumps([(j.lane, j.body, j.arrival) for j in jobs], _PICKLE))
        except OSError:  # the worker is gone: handled after this pump (its pipe also reports EOF)
            asyncio.get_running_loop().call_soon(self._died, w)

    def _readable(self, w: _Worker) -> None:
        """The event loop's callback: an answer (or EOF) on ``w``'s pipe."""
        try:
            msg: Any = pickle.loads(w.conn.recv_bytes())
        except (EOFError, OSError, pickle.UnpicklingError):
            self._died(w)
            return
        if isinstance(msg, tuple) and msg[:1] == ("event",):  # the worker's own news, before an answer
            self._event(str(msg[1]))
            return
        if w.state == "reloading":
            if isinstance(msg, tuple) and msg[:1] == ("reload-ok",):
                w.generation = str(msg[1])
                w.move("reloaded")
                self.reloads += 1
                if w.reloaded is not None and not w.reloaded.done() and w.generation == self.generation:
                    w.reloaded.set_result(True)
            else:  # ("reload-failed", ...): the worker exits; its replacement builds from the new spec
                log.error("classify worker could not build the reloaded reference data: replacing it",
                          extra={"pid": w.pid, "error": str(msg[-1]) if isinstance(msg, tuple) else repr(msg)})  # fmt: skip
            self._pump()
            return
        if w.state == "starting":
            if isinstance(msg, tuple) and msg[:1] == ("ready",):
                w.pid = int(msg[1])
                w.move("ready")
                if not w.ready.done():
                    w.ready.set_result(None)
                self._pump()
            else:
                self._died(w, reason=str(msg[1]) if isinstance(msg, tuple) and len(msg) > 1 else repr(msg))
            return
        jobs, w.jobs = w.jobs, []
        w.move("answer")
        self.messages += len(jobs)
        for j, r in zip(jobs, msg, strict=True):
            if j.future.done():
                continue
            if isinstance(r, WorkerFailure):
                j.future.set_exception(ClassifyFailed(r.error))
            else:
                j.future.set_result(r)
        self._pump()

    # ------------------------------------------------------------------ failures

    def _unwatch(self, w: _Worker) -> None:
        with contextlib.suppress(ValueError, OSError, RuntimeError):
            asyncio.get_running_loop().remove_reader(w.fd)

    def _discard(self, w: _Worker) -> None:
        self._unwatch(w)
        with contextlib.suppress(OSError):
            w.conn.close()
        if w in self._workers:
            self._workers.remove(w)
        if w.proc.is_alive():
            w.proc.kill()
        w.proc.join(1.0)

    def _died(self, w: _Worker, reason: str = "") -> None:
        if w.state == "dead":  # already handled (EOF and a failed send both report it)
            return
        starting = w.state == "starting"
        w.move("died")
        jobs, w.jobs = w.jobs, []
        self._discard(w)
        if w.reloaded is not None and not w.reloaded.done():
            w.reloaded.set_result(False)  # replaced: its successor builds from the new spec
        if starting:
            if not w.ready.done():
                w.ready.set_exception(
                    ClassifyUnavailable(reason or "the classify worker exited while starting")
                )
            return
        self._event("worker-died")
        log.error("classify worker process died: starting another",
                  extra={"pid": w.pid, "messages": len(jobs), "restarts": self.restarts + 1})  # fmt: skip
        for j in jobs:
            if j.future.done():
                continue
            if j.suspect:  # it was alone in its task: this message kills its worker
                self._event("poison")
                log.error("classify worker died twice on one message: answered 503",
                          extra={"lane": j.lane, "bytes": len(j.body),
                                 "sha256": hashlib.sha256(j.body).hexdigest()})  # fmt: skip
                j.future.set_exception(ClassifyWorkerDied("a classify worker died twice on this message"))
            else:
                j.suspect = True
                self._suspects.append(j)
        if not self._closed:
            self._replace()
        self._pump()

    def _replace(self) -> None:
        self.restarts += 1
        task = asyncio.get_running_loop().create_task(self._restart(), name="duisgw-classify-restart")
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    async def _restart(self) -> None:
        try:
            await self._spawn()
            self._failed_at = None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self._live():
                self._failed_at = time.monotonic()
                log.error("classify workers could not be started: answering 503",
                          extra={"error": f"{type(exc).__name__}: {exc}"})  # fmt: skip
                self._fail_waiting(ClassifyUnavailable(f"classify workers could not be started: {exc}"))
        finally:
            self._pump()

    def _fail_waiting(self, err: ClassifyUnavailable) -> None:
        while self._suspects or self._queue:
            j = (self._suspects or self._queue).popleft()
            if not j.future.done():
                j.future.set_exception(err)
        if not any(w.state in ("busy", "reloading") for w in self._workers):
            self._idle.set()

    def _event(self, name: str) -> None:
        if self._on_event is not None:
            self._on_event(name)

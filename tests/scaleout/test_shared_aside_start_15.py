"""A call into the shared engine keeps its own outcome when the idle catch-up's thread cannot start.

``SharedEngine._run`` starts the idle catch-up with the learned list after each call (``_start_aside``), in its
``finally``: a failure to start a thread (the process out of threads) replaced the outcome of a batch already
committed in Redis with that error, and left the ticks' own catch-up switched off (``catching_up_aside``). The call
now returns its decisions; the ticks catch up as before. Real redis-server, the real :class:`SharedEngine`."""

from __future__ import annotations

import threading

import pytest
from engine_support import MemoryInventory, outage, t
from test_shared_idle_catch_up_15 import ROWS, Make, make, publish_back  # noqa: F401  (make: a fixture)

from gateway.engine import Decision, Tick
from gateway.engine.effects import Action


def test_a_batch_keeps_its_decisions_and_the_ticks_catch_up_when_no_thread_can_be_started(
    redis_url: str, make: Make, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    b = make(MemoryInventory(ROWS))
    publish_back(redis_url, 5_000)

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    b.submit(Tick(t(10)))  # notices the rows: lags, and the catch-up's thread is refused
    assert b.state.lagging
    assert not b.state.catching_up_aside
    decided = [d for d in b.submit(outage(11, mid="ad1-1"), b"<ad1>") if isinstance(d, Decision)]
    assert [d.action for d in decided] == [Action.FORWARD]  # its own outcome, not the thread's error
    for second in range(12, 400):  # the ticks catch up (about 40 ms of rows each)
        if not b.state.lagging:
            break
        b.submit(Tick(t(second)))
    assert not b.state.lagging

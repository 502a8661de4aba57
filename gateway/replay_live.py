"""Replay recorded traffic against a LIVE gateway over HTTP (``duisgw replay --target URL``).

The inputs (JSONL script, directory, pcap/pcapng) are POSTed in arrival order to the gateway's lanes —
``/duis/observe`` and ``/duis/dno/{user}`` — one at a time, as one DSP connection does, paced at
``speed`` × real time (the gaps between the recorded arrival times divided by ``speed``; ``0`` sends
as fast as the gateway answers). Each message carries its recorded arrival in ``X-DUISGW-Arrival``, so a
gateway running with ``clock = "message"`` decides in the recording's event time. One JSON line per
message reports the gateway's answer (status, message id, decision header).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from gateway.replay import InputMessage, InputProblem
from gateway.service.simulate import DspSimulator, TimedMessage

__all__ = ["replay_live"]


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def replay_live(
    items: Iterable[InputMessage | InputProblem],
    target: str,
    user: str,
    *,
    speed: float,
    emit: Callable[[dict[str, Any]], None],
    tick: Callable[[], None] = lambda: None,
    retry_for: float = 30.0,
) -> dict[str, int]:
    """Send every input message; returns counts by HTTP status (and ``problems`` for skipped input)."""
    counts: dict[str, int] = {}
    first_at: datetime | None = None
    started = time.monotonic()
    async with DspSimulator(target, user, retry_for=retry_for) as sim:
        for item in items:
            if isinstance(item, InputProblem):
                counts["problems"] = counts.get("problems", 0) + 1
                continue
            if first_at is None:
                first_at = item.time
            if speed > 0:
                due = started + max((item.time - first_at).total_seconds(), 0.0) / speed
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            try:
                posted = await sim.post(TimedMessage(item.time, item.lane, item.body))
            except (OSError, Exception) as exc:
                emit({"source": item.source, "lane": item.lane, "time": _iso(item.time), "status": None,
                      "error": f"{type(exc).__name__}: {exc}"})  # fmt: skip
                counts["error"] = counts.get("error", 0) + 1
                tick()
                continue
            key = str(posted.status)
            counts[key] = counts.get(key, 0) + 1
            emit(
                {
                    "source": item.source,
                    "lane": item.lane,
                    "time": _iso(item.time),
                    "status": posted.status,
                    "message_id": posted.message_id,
                    "decision": posted.decision,
                    **({"reason": posted.text.strip()[:200]} if posted.status >= 400 else {}),
                }
            )
            tick()
    return counts

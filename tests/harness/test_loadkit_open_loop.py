"""The benchmarks' lean harness (``bench/loadkit.py``): its callback open loop sends every payload once at
the offered rate and reports every answer, including when all connections are busy or none can be opened."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import loadkit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _receiver(port: int) -> asyncio.Task[None]:
    task = asyncio.create_task(loadkit.receiver(port))
    for _ in range(200):
        try:
            _r, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return task
        except OSError:
            await asyncio.sleep(0.01)
    raise AssertionError("receiver did not start")


def test_open_loop_sends_each_payload_once_at_the_rate_and_queues_when_every_connection_is_busy() -> None:
    async def run() -> None:
        port = _free_port()
        rx = await _receiver(port)
        client = loadkit.Client(f"http://127.0.0.1:{port}/smartdcc/duis", 3)  # fewer connections than bursts
        payloads = [b"<m>%d</m>" % i for i in range(300)]
        answers: dict[int, tuple[int, float]] = {}
        t_start = time.monotonic()

        def on_answer(
            i: int, status: int, _h: dict[str, str] | None, err: BaseException | None, t: float
        ) -> None:
            assert i not in answers, "answered twice"
            assert err is None
            answers[i] = (status, t)

        t0 = await loadkit.open_loop(client, payloads, {"Content-Type": "application/xml"}, 3000.0, on_answer)
        elapsed = time.monotonic() - t_start
        await client.close()
        count = await loadkit.get_json(f"http://127.0.0.1:{port}/count")
        stats = await loadkit.get_json(f"http://127.0.0.1:{port}/stats")
        rx.cancel()
        assert sorted(answers) == list(range(300))
        assert {s for s, _t in answers.values()} == {204}
        # scheduled times are the open loop's, not the sends' (no coordinated omission)
        assert all(abs(t - (t0 + i / 3000.0)) < 1e-9 for i, (_s, t) in answers.items())
        assert elapsed >= 299 / 3000.0
        assert count == {"n": 300}
        assert isinstance(stats, dict)
        assert set(stats) == {hashlib.sha256(p).hexdigest() for p in payloads}
        assert len(client._all) <= 3

    asyncio.run(run())


def test_open_loop_reports_every_send_that_finds_no_server_as_an_error() -> None:
    async def run() -> None:
        client = loadkit.Client(f"http://127.0.0.1:{_free_port()}/smartdcc/duis", 2)
        errors: list[int] = []

        def on_answer(
            i: int, status: int, _h: dict[str, str] | None, err: BaseException | None, _t: float
        ) -> None:
            assert status == 0 and isinstance(err, OSError)
            errors.append(i)

        await asyncio.wait_for(loadkit.open_loop(client, [b"x"] * 20, {}, 1000.0, on_answer), 10)
        assert sorted(errors) == list(range(20))

    asyncio.run(run())


def test_open_loop_of_nothing_returns_at_once() -> None:
    async def run() -> None:
        client = loadkit.Client("http://127.0.0.1:9/x", 1)
        await asyncio.wait_for(loadkit.open_loop(client, [], {}, 500.0, lambda *a: None), 1)

    asyncio.run(run())

"""``[outbox] sender_process``: the POSTs to the DNO from a process of their own, the delivery manager
(order, window, retries, dead letters) still in the gateway process. Real spawned process, real
sockets, a real receiver standing in for the DNO adaptor."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
from dataclasses import replace
from pathlib import Path

import aiohttp
from servicekit import Pki, Receiver, duis_body, running, service_config

from gateway.service.app import Service
from gateway.service.config import TlsClientConfig
from tests.processes import children

XML = {"Content-Type": "application/xml"}


def sender_service(tmp_path: Path, url: str, **outbox: object) -> Service:
    cfg = service_config(tmp_path, url)
    return Service(replace(cfg, outbox=replace(cfg.outbox, sender_process=True, **outbox)))


async def post_all(service: Service, bodies: list[bytes]) -> list[str]:
    ids = []
    async with aiohttp.ClientSession() as http:
        for b in bodies:
            async with http.post(f"http://127.0.0.1:{service.port}/duis/dno/dno-a", data=b, headers=XML) as r:
                assert r.status == 204
                ids.append(r.headers["X-DUISGW-Message-Id"])
    return ids


async def test_the_sender_process_delivers_the_original_bytes_in_order(tmp_path: Path, receiver: Receiver) -> None:
    async with running(sender_service(tmp_path, receiver.url)) as service:
        proc = service.sender_process
        assert proc is not None and proc.serving and proc.pid in children(os.getpid())
        bodies = [duis_body(i) for i in range(12)]
        ids = await post_all(service, bodies)
        await receiver.wait_for(12)
        assert [r.message_id for r in receiver.log] == ids  # window = 1: strictly in order
        assert [r.body for r in receiver.log] == bodies  # byte-identical
        assert {r.content_type for r in receiver.log} == {"application/xml"}
        for _ in range(200):  # the receiver logs a POST before its answer reaches the sender's count
            if proc.sent == 12:
                break
            await asyncio.sleep(0.02)
        assert proc.sent == 12  # every POST went through the process
    assert multiprocessing.active_children() == []


async def test_the_dno_down_then_back_gets_everything_once(tmp_path: Path) -> None:
    receiver = Receiver()  # not started: the DNO adaptor is down
    try:
        async with running(sender_service(tmp_path, receiver.url)) as service:
            ids = await post_all(service, [duis_body(i) for i in range(6)])
            await asyncio.sleep(0.5)  # attempts fail (unreachable) and back off
            assert receiver.log == []
            await receiver.start()
            await receiver.wait_for(6)
            await asyncio.sleep(0.3)
        assert receiver.accepted_ids() == ids
        assert len(receiver.log) == 6  # nothing was delivered twice
    finally:
        await receiver.stop()


async def test_a_killed_sender_process_is_replaced_and_nothing_is_lost(tmp_path: Path, receiver: Receiver) -> None:
    async with running(sender_service(tmp_path, receiver.url, window=8)) as service:
        proc = service.sender_process
        assert proc is not None
        first = proc.pid
        ids = await post_all(service, [duis_body(i) for i in range(10)])
        os.kill(first, signal.SIGKILL)
        ids += await post_all(service, [duis_body(i) for i in range(10, 20)])
        await receiver.wait_for(20, timeout=30)
        for _ in range(100):
            if proc.serving:
                break
            await asyncio.sleep(0.05)
        assert proc.serving and proc.pid != first and proc.restarts == 1
        assert set(receiver.accepted_ids()) == set(ids)  # at-least-once: the receiver dedupes on the id
        died = [s.value for m in service.metrics.registry.collect() if m.name == "duisgw_sender_process_events"
                for s in m.samples if s.name.endswith("_total") and s.labels["event"] == "died"]  # fmt: skip
        assert died == [1.0]


async def test_tls_toward_the_dno_is_set_up_in_the_sender_process(tmp_path: Path, pki: Pki) -> None:
    import ssl

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    receiver = Receiver(ssl_context=ctx)
    await receiver.start()
    try:
        cfg = service_config(tmp_path, receiver.url)
        dest = replace(cfg.destinations[0], tls=TlsClientConfig(ca_file=str(pki.ca)))
        cfg = replace(cfg, destinations=(dest,), outbox=replace(cfg.outbox, sender_process=True))
        async with running(Service(cfg)) as service:
            ids = await post_all(service, [duis_body(1)])
            await receiver.wait_for(1)
        assert receiver.accepted_ids() == ids
    finally:
        await receiver.stop()

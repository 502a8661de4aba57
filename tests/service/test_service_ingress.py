"""Ingress lanes and status codes, end to end over real sockets (PassThroughProcessor)."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import logging
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest
from servicekit import Receiver, counters, duis_body, free_port, running, service_config

from gateway.duis.errors import NotDuis
from gateway.duis.safexml import parse_xml
from gateway.service.api import AcceptResult, Lane
from gateway.service.app import PassThroughProcessor, ServiceContext
from gateway.service.app import Service as GatewayService
from gateway.service.config import LoggingConfig
from gateway.service.logs import configure_logging

XML = {"Content-Type": "application/xml"}


def url(svc: GatewayService, path: str) -> str:
    return f"http://127.0.0.1:{svc.port}{path}"


def admin(svc: GatewayService, path: str) -> str:
    return f"http://127.0.0.1:{svc.admin_port}{path}"


async def test_inline_message_is_forwarded_unchanged_with_its_message_id(tmp_path: Path, receiver: Receiver) -> None:
    body = duis_body(1)
    async with running(GatewayService(service_config(tmp_path, receiver.url))) as svc, aiohttp.ClientSession() as http:
        async with http.post(url(svc, "/duis/dno/dno-a"), data=body, headers=XML) as resp:
            assert resp.status == 204
            mid = resp.headers["X-DUISGW-Message-Id"]
            assert resp.headers["X-DUISGW-Decision"] == "forward"
        await receiver.wait_for(1)
    got = receiver.log[0]
    assert got.body == body
    assert got.message_id == mid
    assert got.content_type == "application/xml"


async def test_inline_user_may_be_the_dnos_eui_in_any_spelling(tmp_path: Path, receiver: Receiver) -> None:
    async with running(GatewayService(service_config(tmp_path, receiver.url))) as svc, aiohttp.ClientSession() as http:
        for i, user in enumerate(["90-B3-D5-1F-30-02-00-00", "90b3d51f30020000", "90:B3:D5:1F:30:02:00:00"]):
            async with http.post(url(svc, f"/duis/dno/{user}"), data=duis_body(i), headers=XML) as resp:
                assert resp.status == 204, user
        await receiver.wait_for(3)
    assert [r.body for r in receiver.log] == [duis_body(i) for i in range(3)]


async def test_unknown_destination_is_404_and_the_bytes_are_kept(tmp_path: Path, receiver: Receiver) -> None:
    svc = GatewayService(service_config(tmp_path, receiver.url))
    async with running(svc), aiohttp.ClientSession() as http:
        async with http.post(url(svc, "/duis/dno/nobody"), data=duis_body(7), headers=XML) as resp:
            assert resp.status == 404
            assert (await resp.text()).startswith("unknown_destination")
        rejects = await svc.rejects.all()
    assert [(r["reason"], r["body"]) for r in rejects] == [("unknown_destination", duis_body(7))]


async def test_observation_lane_is_recorded_and_never_forwarded(tmp_path: Path, receiver: Receiver) -> None:
    svc = GatewayService(service_config(tmp_path, receiver.url))
    async with running(svc), aiohttp.ClientSession() as http:
        async with http.post(url(svc, "/duis/observe"), data=duis_body(3), headers=XML) as resp:
            assert resp.status == 204
            assert resp.headers["X-DUISGW-Decision"] == "observe"
        assert await svc.outbox.stats() == []
        await asyncio.sleep(0.3)
    assert receiver.log == []
    with sqlite3.connect(tmp_path / "gw.sqlite3") as db:
        rows = db.execute("SELECT lane, body FROM passthrough_messages").fetchall()
    assert rows == [("observe", duis_body(3))]


async def test_malformed_and_doctype_bodies_get_400_with_a_named_reason_and_are_kept(
    tmp_path: Path, receiver: Receiver
) -> None:
    bad = {
        b"<sr:Response xmlns:sr='x'><unclosed></sr:Response>": "malformed_xml",
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY e "boom">]><r>&e;</r>': "doctype_forbidden",
    }
    svc = GatewayService(service_config(tmp_path, receiver.url))
    async with running(svc), aiohttp.ClientSession() as http:
        for body, code in bad.items():
            async with http.post(url(svc, "/duis/dno/dno-a"), data=body, headers=XML) as resp:
                assert resp.status == 400
                assert (await resp.text()).startswith(code)
        rejects = await svc.rejects.all()
        assert await svc.outbox.stats() == []
    assert {bytes(r["body"]): r["reason"] for r in rejects} == bad
    assert receiver.log == []


async def test_oversize_body_is_413_without_reading_it(tmp_path: Path, receiver: Receiver) -> None:
    svc = GatewayService(service_config(tmp_path, receiver.url))
    cap = svc.config.server.max_body_bytes
    async with running(svc), aiohttp.ClientSession() as http:
        async with http.post(url(svc, "/duis/dno/dno-a"), data=duis_body(1, pad=cap), headers=XML) as resp:
            assert resp.status == 413
            assert (await resp.text()).startswith("oversize_body")

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(cap // 4096 + 2):
                yield b"x" * 4096

        async with http.post(url(svc, "/duis/dno/dno-a"), data=chunks(), headers=XML) as resp:
            assert resp.status == 413  # chunked: no Content-Length, cut at the cap
        async with http.post(url(svc, "/duis/dno/dno-a"), data=duis_body(2), headers=XML) as resp:
            assert resp.status == 204  # the service is unharmed
        await receiver.wait_for(1)
    assert [r.body for r in receiver.log] == [duis_body(2)]


async def test_wrong_content_type_is_415_and_the_bytes_are_kept(tmp_path: Path, receiver: Receiver) -> None:
    svc = GatewayService(service_config(tmp_path, receiver.url))
    async with running(svc), aiohttp.ClientSession() as http:
        for ctype in ("application/json", "text/plain"):
            async with http.post(url(svc, "/duis/observe"), data=duis_body(1), headers={"Content-Type": ctype}) as resp:
                assert resp.status == 415
        async with http.post(url(svc, "/duis/observe"), data=duis_body(1),
                             headers={"Content-Type": "application/xml; charset=utf-8"}) as resp:
            assert resp.status == 204  # parameters are fine
        rejects = await svc.rejects.all()
    assert [r["reason"] for r in rejects] == ["unsupported_media_type"] * 2


async def test_store_unavailable_is_503_and_readyz_fails(tmp_path: Path, receiver: Receiver) -> None:
    svc = GatewayService(service_config(tmp_path, receiver.url))
    async with running(svc), aiohttp.ClientSession() as http:
        async with http.get(admin(svc, "/readyz")) as resp:
            assert resp.status == 200
        await svc.store.close()  # the database goes away under the running service
        async with http.post(url(svc, "/duis/dno/dno-a"), data=duis_body(1), headers=XML) as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"]
            assert (await resp.text()).startswith("store_unavailable")
        # refusals too: bytes that cannot be kept are not refused with a 4xx (the DSP would not re-deliver)
        for path, body, headers in (("/duis/dno/dno-a", b"<bad", XML), ("/duis/dno/nobody", duis_body(2), XML),
                                    ("/duis/observe", duis_body(3), {"Content-Type": "text/plain"})):  # fmt: skip
            async with http.post(url(svc, path), data=body, headers=headers) as resp:
                assert resp.status == 503, path
                assert (await resp.text()).startswith("store_unavailable")
        async with http.get(admin(svc, "/readyz")) as resp:
            assert resp.status == 503
        async with http.get(admin(svc, "/healthz")) as resp:
            assert resp.status == 200


class DuisRootProcessor(PassThroughProcessor):
    """A real (if small) processor: refuses documents outside the DUIS namespace with a named error,
    and has a defect on one input, so the ingress's handling of processor exceptions is exercised."""

    async def accept(self, lane: Lane, user: str | None, body: bytes, received_at: datetime) -> AcceptResult:
        root = parse_xml(body)
        if b"trigger-defect" in body:
            raise ZeroDivisionError("defect in the processor")
        if not root.tag.startswith("{http://www.dccinterface.co.uk/"):
            raise NotDuis(f"root {root.tag} is not DUIS")
        return await super().accept(lane, user, body, received_at)


async def _duis_root(ctx: ServiceContext) -> DuisRootProcessor:
    base = await PassThroughProcessor.create(ctx)
    return DuisRootProcessor(base.store, base.outbox, base.rejects)


async def test_named_processor_errors_are_400_and_defects_500_and_both_keep_the_bytes(
    tmp_path: Path, receiver: Receiver
) -> None:
    svc = GatewayService(service_config(tmp_path, receiver.url), _duis_root)
    async with running(svc), aiohttp.ClientSession() as http:
        async with http.post(url(svc, "/duis/dno/dno-a"), data=b"<other/>", headers=XML) as resp:
            assert resp.status == 400
            assert (await resp.text()).startswith("not_duis")
        async with http.post(url(svc, "/duis/dno/dno-a"), data=b"<trigger-defect/>", headers=XML) as resp:
            assert resp.status == 500
        async with http.post(url(svc, "/duis/dno/dno-a"), data=duis_body(1), headers=XML) as resp:
            assert resp.status == 204
        await receiver.wait_for(1)
        rejects = await svc.rejects.all()
    assert [(r["reason"], bytes(r["body"])) for r in rejects] == [
        ("not_duis", b"<other/>"),
        ("internal_error", b"<trigger-defect/>"),
    ]


async def test_duplicate_delivery_from_the_dcc_is_forwarded_once(tmp_path: Path, receiver: Receiver) -> None:
    async with running(GatewayService(service_config(tmp_path, receiver.url))) as svc, aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.post(url(svc, "/duis/dno/dno-a"), data=duis_body(5), headers=XML) as resp:
                assert resp.status == 204
        async with http.post(url(svc, "/duis/dno/dno-a"), data=duis_body(6), headers=XML) as resp:
            assert resp.status == 204
        await receiver.wait_for(2)
        await asyncio.sleep(0.2)
    assert [r.body for r in receiver.log] == [duis_body(5), duis_body(6)]


async def test_metrics_health_and_json_logs_are_exposed(tmp_path: Path, receiver: Receiver) -> None:
    stream = io.StringIO()
    handler = configure_logging(LoggingConfig(level="DEBUG", format="json"), stream)
    try:
        svc = GatewayService(service_config(tmp_path, receiver.url))
        async with running(svc), aiohttp.ClientSession() as http:
            async with http.post(url(svc, "/duis/dno/dno-a"), data=duis_body(1), headers=XML) as resp:
                mid = resp.headers["X-DUISGW-Message-Id"]
            async with http.post(url(svc, "/duis/dno/dno-a"), data=b"<bad", headers=XML) as resp:
                assert resp.status == 400
            await receiver.wait_for(1)
            assert svc.delivery is not None
            await svc.delivery.refresh_stats()
            async with http.get(admin(svc, "/metrics")) as resp:
                assert resp.status == 200
                text = await resp.text()
            async with http.get(admin(svc, "/healthz")) as resp:
                assert resp.status == 200
    finally:
        logging.getLogger().removeHandler(handler)
    assert 'duisgw_messages_total{decision="forward",kind="duis",lane="inline",reason="passthrough"} 1.0' in text
    assert 'duisgw_rejects_total{lane="inline",reason="malformed_xml"} 1.0' in text
    assert 'duisgw_outbox_depth{queue="http:dno-a"}' in text
    assert 'duisgw_outbox_oldest_age_seconds{queue="http:dno-a"}' in text
    assert "duisgw_decision_latency_seconds_bucket" in text
    assert "duisgw_late_alert_age_seconds_bucket" in text
    assert "duisgw_verify_failures_total" in text or "duisgw_verify_failures" in text
    assert "duisgw_held_messages 0.0" in text
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert any(r.get("message_id") == mid and r["msg"] == "accepted" for r in records)
    assert any(r.get("message_id") == mid and r["msg"] == "delivered" for r in records)


async def test_draining_service_refuses_new_requests_with_503(tmp_path: Path, receiver: Receiver) -> None:
    svc = GatewayService(service_config(tmp_path, receiver.url))
    async with running(svc), aiohttp.ClientSession() as http:
        assert svc.ingress is not None
        svc.ingress.draining = True
        async with http.post(url(svc, "/duis/dno/dno-a"), data=duis_body(1), headers=XML) as resp:
            assert resp.status == 503
            assert (await resp.text()).startswith("draining")
        async with http.get(admin(svc, "/readyz")) as resp:
            assert resp.status == 503


class SlowPassThrough(PassThroughProcessor):
    """Pass-through that takes 200 ms per message, so requests are provably in flight at shutdown."""

    entered = 0

    async def accept(self, lane: Lane, user: str | None, body: bytes, received_at: datetime) -> AcceptResult:
        SlowPassThrough.entered += 1
        await asyncio.sleep(0.2)
        return await super().accept(lane, user, body, received_at)


async def _slow(ctx: ServiceContext) -> SlowPassThrough:
    base = await PassThroughProcessor.create(ctx)
    return SlowPassThrough(base.store, base.outbox, base.rejects)


async def test_graceful_shutdown_finishes_in_flight_requests_and_deliveries(tmp_path: Path, receiver: Receiver) -> None:
    SlowPassThrough.entered = 0
    svc = GatewayService(service_config(tmp_path, receiver.url), _slow)
    await svc.start()
    bodies = [duis_body(i, pad=200) for i in range(10)]
    async with aiohttp.ClientSession() as http:

        async def post(b: bytes) -> int:
            async with http.post(url(svc, "/duis/dno/dno-a"), data=b, headers=XML) as resp:
                return resp.status

        tasks = [asyncio.create_task(post(b)) for b in bodies]
        while SlowPassThrough.entered < len(bodies):
            await asyncio.sleep(0.005)
        await svc.stop()  # drains: the 10 in-flight requests complete, then their deliveries
        statuses = await asyncio.gather(*tasks)
        try:
            async with http.post(url(svc, "/duis/dno/dno-a"), data=duis_body(99), headers=XML) as resp:
                late = resp.status
        except aiohttp.ClientConnectionError:
            late = 0
    assert statuses == [204] * len(bodies)
    assert late == 0  # no longer listening
    assert sorted(r.body for r in receiver.log) == sorted(bodies)


async def test_run_serves_until_sigterm_then_drains_and_exits_cleanly(tmp_path: Path, receiver: Receiver) -> None:
    port = free_port()
    cfg = tmp_path / "duisgw.toml"
    cfg.write_text(
        f'mode = "passthrough"\n[server]\nport = {port}\n[admin]\nenabled = false\n'
        f'[store]\npath = "{tmp_path / "gw.sqlite3"}"\n'
        f'[[destinations]]\nname = "dno-a"\nurl = "{receiver.url}"\n'
    )
    script = (
        "import asyncio, sys\n"
        "from gateway.service.app import run\n"
        "from gateway.service.config import load_config\n"
        "asyncio.run(run(load_config(sys.argv[1])))\n"
    )
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script, str(cfg),
                                                stderr=asyncio.subprocess.PIPE)
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    async with http.post(f"http://127.0.0.1:{port}/duis/dno/dno-a", data=duis_body(1),
                                         headers=XML) as resp:
                        assert resp.status == 204
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
        await receiver.wait_for(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0
    msgs = [json.loads(line)["msg"] for line in err.decode().splitlines() if line.startswith("{")]
    assert msgs[0] == "duisgw service listening" and msgs[-2:] == ["draining", "stopped"]


async def test_a_body_that_does_not_decode_as_its_content_encoding_is_a_kept_400_and_a_good_one_is_taken(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp decodes a gzip or deflate body as it reads it; one that does not decode raised out of the
    handler as a 500 ``internal_error`` with nothing kept. It is bad input now: 400 ``bad_content_encoding``,
    a reject record saying what it was, counted, and no traceback in the log (aiohttp's lingering read after
    the answer logged the decoding error as an unhandled exception); a gzip body that decodes is the
    message."""
    caplog.set_level(logging.INFO)
    svc = GatewayService(service_config(tmp_path, receiver.url))
    async with running(svc):
        for encoding in ("gzip", "deflate"):
            async with aiohttp.ClientSession() as http:  # aiohttp closes the connection after the refusal
                headers = {**XML, "Content-Encoding": encoding}
                async with http.post(url(svc, "/duis/dno/dno-a"), data=b"not compressed", headers=headers) as resp:
                    assert resp.status == 400
                    assert (await resp.text()).startswith("bad_content_encoding")
        async with aiohttp.ClientSession() as http:
            headers = {**XML, "Content-Encoding": "gzip"}
            async with http.post(url(svc, "/duis/dno/dno-a"), data=gzip.compress(duis_body(3)), headers=headers) as resp:
                assert resp.status == 204
        await receiver.wait_for(1)
        rejects = await svc.rejects.all()
        refused = counters(svc, "duisgw_rejects")
    assert [r["reason"] for r in rejects] == ["bad_content_encoding"] * 2
    assert [r["detail"].split(" (")[0] for r in rejects] == [
        "body does not decode as Content-Encoding 'gzip'",
        "body does not decode as Content-Encoding 'deflate'",
    ]
    assert [r.body for r in receiver.log] == [duis_body(3)]
    assert refused == {("inline", "bad_content_encoding"): 2.0}
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []

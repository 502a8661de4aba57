"""``mode = "passthrough"`` against what it documents (the twentieth session's review; each test failed before its fix).

1. Refused inputs were never purged: ``[store] rejects_retention_seconds`` (docs/CONFIG.md: "so a peer sending
   bad input without end cannot fill the disk for good") is applied by the pipeline processor's tick, and the
   pass-through processor's tick did nothing. A pass-through gateway kept every refused body for ever. It now
   purges them as the pipeline does (first tick, then every minute, oldest first, bounded transactions).
2. "a byte-identical re-delivery is recorded and forwarded once" (docs/OPERATIONS.md): the message was recorded
   once (``INSERT OR IGNORE``), but its outbox row was enqueued again on every re-delivery, deduplicated only by
   the outbox row of the first delivery, which ``[outbox] retention_seconds`` (3 days) purges. A re-delivery
   after that was forwarded to the DNO a second time. It is forwarded only when the message is new to that
   destination now.
3. "A forward's delivery metadata (MQTT user properties) names the same ``kind`` as its
   ``duisgw_messages_total`` series" (docs/OPERATIONS.md): a pass-through forward is counted under
   ``kind="duis"``, but its publication carried no ``kind`` user property at all.

1 and 2 run ``duisgw serve`` as a real process; 3 a real mosquitto.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import aiomqtt
from servicekit import Broker, Receiver, duis_body, free_port, running

from gateway.service.app import Service
from gateway.service.outbox import RejectStore, SqliteStore

PROJECT = Path(__file__).resolve().parents[2]
XML = {"Content-Type": "application/xml"}


def write_config(folder: Path, port: int, admin_port: int, receiver_url: str, extra: str = "") -> Path:
    path = folder / "gateway.toml"
    path.write_text(
        f'mode = "passthrough"\ntick_interval = 0.2\n[server]\nhost = "127.0.0.1"\nport = {port}\n'
        f'[admin]\nhost = "127.0.0.1"\nport = {admin_port}\n'
        f'[store]\npath = "{folder / "gw.sqlite3"}"\nsynchronous = "NORMAL"\n{extra}'
        f"[outbox]\npoll_interval = 0.2\nbackoff_initial = 0.05\nbackoff_max = 0.3\n"
        f'[[destinations]]\nname = "dno-a"\nurl = "{receiver_url}"\n',
        encoding="utf-8",
    )
    return path


@contextlib.asynccontextmanager
async def serve(config: Path, admin_port: int, outbox_retention: float | None = None) -> AsyncIterator[None]:
    """``duisgw serve --config`` as a real process, ready (``/readyz`` 200) inside, stopped by SIGTERM."""
    if outbox_retention is not None:
        text = config.read_text().replace("[outbox]\n", f"[outbox]\nretention_seconds = {outbox_retention}\n")
        config.write_text(text)
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--config", str(config), env=env, cwd=str(PROJECT),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{admin_port}/readyz") as resp:
                        if resp.status == 200:
                            break
                assert proc.returncode is None, "duisgw serve exited"
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("duisgw serve did not become ready")
        yield
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()[-2000:]


def reject_rows(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        return [(str(r[0]), str(r[1])) for r in conn.execute("SELECT reason, detail FROM rejects ORDER BY id")]


async def test_a_passthrough_gateway_purges_rejects_past_their_retention_and_keeps_the_recent_ones(
    tmp_path: Path, receiver: Receiver
) -> None:
    port, admin = free_port(), free_port()
    config = write_config(tmp_path, port, admin, receiver.url, "rejects_retention_seconds = 86400\n")
    db = tmp_path / "gw.sqlite3"
    store = SqliteStore(str(db))  # refused inputs a pass-through gateway kept: 100 days old and 1 hour old
    await store.open()
    try:
        rejects = RejectStore(store)
        now = datetime.now(UTC)
        for detail, age in (("old 1", timedelta(days=100)), ("old 2", timedelta(days=2)), ("new", timedelta(hours=1))):
            await rejects.record(lane="inline", user="dno-a", reason="malformed_xml", detail=detail,
                                 body=b"<a>", received_at=now - age)  # fmt: skip
    finally:
        await store.close()
    async with serve(config, admin):
        async with aiohttp.ClientSession() as http:  # one more refused now: kept
            url = f"http://127.0.0.1:{port}/duis/dno/dno-a"
            async with http.post(url, data=b"<not-xml", headers=XML) as resp:
                assert resp.status == 400
        for _ in range(100):
            if len(reject_rows(db)) == 2:
                break
            await asyncio.sleep(0.1)
    rows = reject_rows(db)
    assert len(rows) == 2, rows  # the two past the retention purged (oldest first)
    assert rows[0] == ("malformed_xml", "new") and rows[1][0] == "malformed_xml"


async def test_a_byte_identical_re_delivery_is_forwarded_once_even_after_the_outbox_row_was_purged(
    tmp_path: Path, receiver: Receiver
) -> None:
    port, admin = free_port(), free_port()
    config = write_config(tmp_path, port, admin, receiver.url)
    url = f"http://127.0.0.1:{port}/duis/dno/dno-a"
    body, other = duis_body(1), duis_body(2)
    async with serve(config, admin), aiohttp.ClientSession() as http:
        async with http.post(url, data=body, headers=XML) as resp:
            assert resp.status == 204
            mid = resp.headers["X-DUISGW-Message-Id"]
        await receiver.wait_for(1)
    # the delivered row is purged at the next start (housekeeping runs at once; retention 0.5 s)
    await asyncio.sleep(1.0)
    async with serve(config, admin, outbox_retention=0.5), aiohttp.ClientSession() as http:
        for _ in range(100):
            with sqlite3.connect(tmp_path / "gw.sqlite3") as conn:
                if conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0:
                    break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the delivered outbox row was not purged")
        for data in (body, other):  # the DSP re-delivers the first message, then sends a new one
            async with http.post(url, data=data, headers=XML) as resp:
                assert resp.status == 204
                assert resp.headers["X-DUISGW-Decision"] == "forward"
        await receiver.wait_for(2)
        await asyncio.sleep(1.0)  # (time for a second delivery of the first one, were it enqueued)
    assert [r.message_id for r in receiver.log].count(mid) == 1
    assert [r.body for r in receiver.log] == [body, other]
    with sqlite3.connect(tmp_path / "gw.sqlite3") as conn:  # recorded once
        assert conn.execute("SELECT COUNT(*) FROM passthrough_messages").fetchone()[0] == 2


async def test_a_passthrough_publication_names_the_kind_of_its_messages_total_series(
    tmp_path: Path, broker: Broker
) -> None:
    from test_service_mqtt import first_message, mqtt_config

    ready = asyncio.Event()
    sub = asyncio.create_task(first_message(broker, "duisgw/dno/#", "sub-kind", ready))
    await asyncio.wait_for(ready.wait(), 5)
    async with running(Service(mqtt_config(tmp_path, broker))) as svc, aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{svc.port}/duis/dno/dno-a", data=duis_body(7), headers=XML) as r:
            assert r.status == 204
        msg: aiomqtt.Message = await asyncio.wait_for(sub, 10)
        async with http.get(f"http://127.0.0.1:{svc.admin_port}/metrics") as r:
            metrics = await r.text()
    assert 'duisgw_messages_total{decision="forward",kind="duis",lane="inline",reason="passthrough"} 1.0' in metrics
    props = dict(getattr(msg.properties, "UserProperty", []))
    assert props.get("kind") == "duis", props

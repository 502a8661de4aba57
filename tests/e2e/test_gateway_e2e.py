"""End to end: ``python -m gateway serve`` as a real process, a DSP simulator POSTing signed DUIS
traffic over real sockets, a real HTTP receiver standing in for the DNO adaptor, a real mosquitto.

The gateway runs with ``clock = "message"`` (event time from ``X-DUISGW-Arrival``): the scenario's
times are on 2026-03-02, and hold time-outs and retention must follow them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from conftest import Broker, Pki, Receiver, free_port
from e2ekit import (
    DNO_USER,
    GatewayProcess,
    Traffic,
    end_of,
    final_decisions,
    run_cli,
    send_all,
    write_config,
)
from prometheus_client.parser import text_string_to_metric_families

from gateway.service.simulate import DspSimulator, TimedMessage
from gbcs.eui import format_eui

pytestmark = pytest.mark.slow


async def start_gateway(
    tmp: Path, traffic: Traffic, url: str, *, tls: str = "", extra: str = "", guids: Path | None = None,
    dest_extra: dict[str, Any] | None = None, window: int = 1, server_extra: str = "", outbox_extra: str = "",
) -> tuple[GatewayProcess, int]:  # fmt: skip
    tmp.mkdir(parents=True, exist_ok=True)
    port, admin = free_port(), free_port()
    dest: dict[str, Any] = {"name": "dno-a", "user": DNO_USER, "url": url, **(dest_extra or {})}
    cfg = write_config(tmp / "gateway.toml", port=port, admin_port=admin, reference=traffic.reference,
                       destinations=[dest], server_tls=tls, extra=extra, guids=guids, window=window,
                       server_extra=server_extra, outbox_extra=outbox_extra)  # fmt: skip
    gw = GatewayProcess(cfg, admin)
    gw.start()
    await gw.wait_ready()
    return gw, port


def forwards(traffic: Traffic) -> set[str]:
    return {mid for mid, d in traffic.expected().items() if d == "forward"}


async def finish(gw: GatewayProcess, messages: list[TimedMessage]) -> None:
    """Advance event time past the hold limit so nothing stays held."""
    await gw.admin("POST", "/admin/tick", {"now": end_of(messages).isoformat()})


async def test_forwards_arrive_byte_identical_and_suppressed_messages_never_reach_the_dno(
    tmp_path: Path, traffic: Traffic, receiver: Receiver
) -> None:
    messages = traffic.merged()
    gw, port = await start_gateway(tmp_path, traffic, receiver.url)
    try:
        answers = await send_all(f"http://127.0.0.1:{port}", messages)
        assert all(a.status in (200, 202, 204) for a in answers), [a for a in answers if a.status >= 300]
        await finish(gw, messages)
        expected_fwd = forwards(traffic)
        await receiver.wait_for(len(expected_fwd))
        await asyncio.sleep(0.3)  # a wrongly forwarded message would show up now
    finally:
        assert gw.terminate() == 0, gw.log_tail()  # SIGTERM drains and exits cleanly
    bodies = traffic.bodies()
    assert set(receiver.accepted_ids()) == expected_fwd
    for r in receiver.log:
        assert r.body == bodies[r.message_id], f"bytes of {r.message_id} changed"
        assert r.content_type == "application/xml"
    decisions = final_decisions(gw.config)
    assert {mid: d for mid, (d, _r) in decisions.items()} == traffic.expected()


async def test_dno_down_then_back_gets_every_forward_once_after_dedupe(
    tmp_path: Path, traffic: Traffic, receiver: Receiver
) -> None:
    messages = traffic.merged()
    await receiver.stop()  # the DNO adaptor is down
    gw, port = await start_gateway(tmp_path, traffic, receiver.url)
    try:
        answers = await send_all(f"http://127.0.0.1:{port}", messages)
        assert all(a.status < 300 for a in answers)  # acknowledged: durably queued, not yet delivered
        await finish(gw, messages)
        await asyncio.sleep(1.0)
        assert receiver.log == []
        await receiver.start()  # back
        await receiver.wait_for(len(forwards(traffic)), timeout=30)
        await asyncio.sleep(0.3)
    finally:
        gw.terminate()
    ids = [r.message_id for r in receiver.log]
    assert set(ids) == forwards(traffic)  # nothing lost, nothing suppressed delivered
    assert len(ids) - len(set(ids)) <= 1, "at-least-once: at most the message in flight is repeated"


@pytest.mark.parametrize(
    ("extra", "window", "server_extra"),
    [("", 1, ""), ("classify_processes = 1", 8, ""), ("", 8, "ingress_processes = 2\n")],
    ids=["defaults", "classify-worker-and-delivery-window", "ingress-workers-sender-process-and-window"],
)
async def test_sigkill_mid_stream_loses_nothing_acknowledged_and_decides_like_an_uninterrupted_run(
    tmp_path: Path, traffic: Traffic, receiver: Receiver, extra: str, window: int, server_extra: str
) -> None:
    messages = traffic.merged()
    # the reference: an uninterrupted run
    other = Receiver()
    await other.start()
    try:
        ref, ref_port = await start_gateway(tmp_path / "ref", traffic, other.url)
        try:
            await send_all(f"http://127.0.0.1:{ref_port}", messages)
            await finish(ref, messages)
            await other.wait_for(len(forwards(traffic)))
        finally:
            ref.terminate()
    finally:
        await other.stop()
    reference = final_decisions(ref.config)

    gw, port = await start_gateway(tmp_path / "crash", traffic, receiver.url, extra=extra, window=window,
                                   server_extra=server_extra,
                                   outbox_extra="sender_process = true\n" if server_extra else "")  # fmt: skip
    cut = len(messages) // 2
    url = f"http://127.0.0.1:{port}"
    try:
        workers = ingress_pids(gw) + sender_pids(gw)
        assert len(workers) == (3 if server_extra else 0), gw.log_tail()
        acked = await send_all(url, messages[:cut])
        assert all(a.status < 300 for a in acked)
        async with DspSimulator(url, DNO_USER, retry_for=60) as dsp:
            in_flight = asyncio.create_task(dsp.post(messages[cut]))  # killed while this one is on the wire
            await asyncio.sleep(0.01)
            gw.kill()
            for _ in range(100):  # orphaned ingress workers see their channel close and exit
                if not any(Path(f"/proc/{pid}").exists() for pid in workers):
                    break
                await asyncio.sleep(0.05)
            assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "a worker outlived its gateway"
            gw.start()  # same state, same ports
            await gw.wait_ready()
            answer = await in_flight
            assert answer.status < 300
            rest = await dsp.run(messages[cut + 1 :])
            assert all(a.status < 300 for a in rest)
        await finish(gw, messages)
        await receiver.wait_for(len(forwards(traffic)), timeout=30)
        await asyncio.sleep(0.3)
    finally:
        gw.terminate()
    assert set(receiver.accepted_ids()) == forwards(traffic)
    assert final_decisions(gw.config) == reference
    assert {mid: d for mid, (d, _r) in reference.items()} == traffic.expected()


def _logged(gw: GatewayProcess, msg: str) -> list[dict[str, Any]]:
    out = []
    for line in gw.log_tail(1_000_000).splitlines():
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if rec.get("msg") == msg:
                out.append(rec)
    return out


def ingress_pids(gw: GatewayProcess) -> list[int]:
    """The ingress worker processes the gateway last reported serving (its JSON log)."""
    recs = _logged(gw, "ingress workers serving")
    if not recs:
        return []
    listed = recs[-1]["pids"]  # extras that are not scalars are logged as their text
    return [int(p) for p in (json.loads(listed) if isinstance(listed, str) else listed)]


def sender_pids(gw: GatewayProcess) -> list[int]:
    """The HTTP sender process the gateway last reported serving (its JSON log)."""
    recs = _logged(gw, "sender process serving")
    return [int(recs[-1]["pid"])] if recs else []


async def test_forwarded_messages_are_published_to_mqtt_with_decision_user_properties(
    tmp_path: Path, traffic: Traffic, receiver: Receiver, broker: Broker
) -> None:
    got: list[aiomqtt.Message] = []
    want = {e["message_id"] for e in traffic.demo.expected() if e["decision"] == "forward"}
    ready = asyncio.Event()

    async def subscribe() -> None:
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="e2e-sub",
                                  protocol=aiomqtt.ProtocolVersion.V5) as client:  # fmt: skip
            await client.subscribe("duisgw/dno/#", qos=1)
            ready.set()
            async for message in client.messages:
                got.append(message)
                if len(got) >= len(want):
                    return

    sub = asyncio.create_task(subscribe())
    await asyncio.wait_for(ready.wait(), 10)
    mqtt = f'[mqtt]\nenabled = true\nport = {broker.port}\nclient_id = "duisgw-e2e"\npublish = true\n'
    gw, port = await start_gateway(tmp_path, traffic, receiver.url, extra=mqtt)
    try:
        demo = [TimedMessage(s.at, s.lane, s.body) for s in traffic.demo.steps]
        await send_all(f"http://127.0.0.1:{port}", demo)
        await finish(gw, demo)
        await asyncio.wait_for(sub, 20)
    finally:
        gw.terminate()
    bodies = traffic.bodies()
    assert {str(m.topic) for m in got} == {"duisgw/dno/dno-a"}
    seen = set()
    for m in got:
        props = dict(getattr(m.properties, "UserProperty", []))
        assert props["decision"] == "forward"
        assert props["destination"] == "dno-a"
        assert m.payload == bodies[props["message_id"]]
        seen.add(props["message_id"])
    assert seen == want


async def test_mutual_tls_on_both_sides(tmp_path: Path, traffic: Traffic, tls: Pki) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tls.server_cert, tls.server_key)
    server_ctx.load_verify_locations(tls.ca)
    server_ctx.verify_mode = ssl.CERT_REQUIRED  # the DNO adaptor requires the gateway's client certificate
    dno = Receiver(ssl_context=server_ctx)
    await dno.start()
    ingress_tls = (f'\n[server.tls]\ncert_file = "{tls.server_cert}"\nkey_file = "{tls.server_key}"\n'
                   f'client_ca_file = "{tls.ca}"\n')  # fmt: skip
    dest_tls = {
        "tls": {"ca_file": str(tls.ca), "cert_file": str(tls.client_cert), "key_file": str(tls.client_key)}
    }
    try:
        gw, port = await start_gateway(tmp_path, traffic, dno.url, tls=ingress_tls, dest_extra=dest_tls)
        try:
            dsp_ctx = ssl.create_default_context(cafile=str(tls.ca))
            dsp_ctx.load_cert_chain(tls.client_cert, tls.client_key)
            outage = next(s for s in traffic.demo.steps if s.label.startswith("AD1 meter 6"))
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=dsp_ctx)) as http,
                DspSimulator(f"https://127.0.0.1:{port}", DNO_USER, session=http) as dsp,
            ):
                answer = await dsp.post(TimedMessage(outage.at, "inline", outage.body))
            assert answer.status == 200 and answer.decision == "forward"
            await dno.wait_for(1)
            assert dno.log[0].body == outage.body
            anonymous = ssl.create_default_context(cafile=str(tls.ca))  # no client certificate
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=anonymous)) as http:
                with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
                    async with http.post(f"https://127.0.0.1:{port}/duis/observe", data=outage.body,
                                         headers={"Content-Type": "application/xml"}) as resp:  # fmt: skip
                        await resp.read()
        finally:
            gw.terminate()
    finally:
        await dno.stop()


async def test_audit_release_delivers_a_suppressed_message_while_the_gateway_runs(
    tmp_path: Path, traffic: Traffic, receiver: Receiver
) -> None:
    demo = [TimedMessage(s.at, s.lane, s.body) for s in traffic.demo.steps]
    suppressed = next(s for s in traffic.demo.steps if s.label == "AD1 meter 1 (reboot)")
    gw, port = await start_gateway(tmp_path, traffic, receiver.url)
    try:
        await send_all(f"http://127.0.0.1:{port}", demo)
        await finish(gw, demo)
        n = len({e["message_id"] for e in traffic.demo.expected() if e["decision"] == "forward"})
        await receiver.wait_for(n)
        assert suppressed.message_id not in receiver.accepted_ids()
        done = await asyncio.to_thread(
            run_cli, "audit", "release", "--config", str(gw.config), suppressed.message_id,
            "--operator", "alice", "--note", "field visit: a genuine outage",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        await receiver.wait_for(n + 1)
    finally:
        gw.terminate()
    released = [r for r in receiver.log if r.message_id == suppressed.message_id]
    assert released and released[0].body == suppressed.body
    shown = run_cli("audit", "show", "--config", str(gw.config), suppressed.message_id)
    assert '"operator": "alice"' in shown.stdout and '"reason": "operator-release"' in shown.stdout


async def test_sighup_reload_of_the_guid_list_changes_later_ad1_decisions(
    tmp_path: Path, traffic: Traffic, receiver: Receiver
) -> None:
    guids = tmp_path / "guids.csv"
    guids.write_bytes(traffic.reference["guids"].read_bytes())
    gw, port = await start_gateway(tmp_path, traffic, receiver.url, guids=guids)
    steps = [TimedMessage(s.at, s.lane, s.body) for s in traffic.reload.steps]
    try:
        before = await gw.admin("GET", "/admin/state")
        first = await send_all(f"http://127.0.0.1:{port}", steps[:2])
        assert first[1].decision == "forward"  # meter A is not in the list
        with guids.open("a", encoding="utf-8") as fh:
            fh.write(format_eui(traffic.reload_meter) + "\n")
        gw.hup()
        for _ in range(200):
            state = await gw.admin("GET", "/admin/state")
            if state["guids"] == before["guids"] + 1:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the GUID list was not reloaded")
        later = await send_all(f"http://127.0.0.1:{port}", steps[2:])
        assert later[1].status == 200 and later[1].decision == "suppress"  # meter B: in the list now
    finally:
        assert gw.terminate() == 0
    assert "reference data reloaded" in gw.log_tail(20000)


async def scrape(gw: GatewayProcess) -> dict[tuple[str, str], float]:
    """The admin listener's ``/metrics``: (sample name, generation label) → value."""
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{gw.admin_port}/metrics") as resp:
        text = await resp.text()
    return {
        (s.name, s.labels.get("generation", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_the_heap_loaded_at_start_up_and_reload_is_frozen_out_of_gc_scans_and_gc_pauses_are_exported(
    tmp_path: Path, traffic: Traffic, receiver: Receiver
) -> None:
    gw, port = await start_gateway(tmp_path, traffic, receiver.url)
    try:
        started = await scrape(gw)
        frozen = started[("duisgw_gc_frozen_objects", "")]
        assert frozen > 10_000  # modules, certificates, the restored engine: no longer scanned
        assert started[("duisgw_gc_pause_seconds_count", "2")] >= 1  # the settling collection, observed
        sent = await send_all(f"http://127.0.0.1:{port}", traffic.merged()[:40])
        assert all(p.status in (200, 202, 204) for p in sent)
        await gw.admin("POST", "/admin/reload")
        after = await scrape(gw)
        assert after[("duisgw_gc_frozen_objects", "")] >= frozen  # settled and frozen again after the swap
        assert after[("duisgw_gc_pause_seconds_count", "2")] > started[("duisgw_gc_pause_seconds_count", "2")]
        assert after[("duisgw_gc_pause_seconds_count", "0")] >= 1  # the traffic's young collections
    finally:
        assert gw.terminate() == 0

"""``[server] ingress_processes``: the DSP-facing ingress and classification in worker processes.

The gateway process runs in this test process (``build_gateway`` + ``make_service``, real sockets, a
real DNO receiver); the ingress workers are real spawned processes serving the real ingress on the
gateway's listening socket, with the real classifier built from the same reference data.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from servicekit import (
    Lab,
    Receiver,
    duis_body,
    make_lab,
    pipeline_config,
    play_demo,
    running,
    service_config,
    timed,
)
from servicekit import counters as metric_samples

from gateway.service.app import Service
from gateway.service.config import ConfigError, ServerConfig, config_from_mapping
from gateway.service.ingress_workers import IngressPool
from gateway.service.serve import build_gateway, make_service
from gateway.service.simulate import DspSimulator, Posted
from gateway.testkit.messages import DNO_EUI
from gbcs.eui import format_eui

DNO_USER = format_eui(DNO_EUI)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return make_lab("ingress-processes", tmp_path_factory.mktemp("reference"), stream=40, first_meter=200, first_counter=700)


def gateway_service(tmp_path: Path, lab: Lab, receiver: Receiver, ingress: int) -> tuple[Any, Service]:
    cfg = pipeline_config(tmp_path, lab.reference, receiver.url, DNO_USER)
    cfg = replace(cfg, server=replace(cfg.server, ingress_processes=ingress))
    gateway = build_gateway(cfg)
    return gateway, make_service(gateway)



def counters(service: Service, name: str) -> dict[tuple[str, ...], float]:
    return metric_samples(service, name, ("_total", "_count"))


async def run_demo(tmp_path: Path, lab: Lab, ingress: int) -> tuple[list[Posted], dict[str, bytes], dict[str, Any]]:
    """The demo (plus a forged AD1 and a non-XML body) through a gateway: its answers, what the DNO got,
    and the counts the gateway exported."""
    receiver = Receiver()
    await receiver.start()
    try:
        gateway, service = gateway_service(tmp_path, lab, receiver, ingress)
        async with running(service):
            pool = service.ingress_pool
            assert (pool is not None) == (ingress > 0)
            answers = await play_demo(service, lab, receiver, gateway.engine_config.hold_limit)
            n = len(lab.demo.steps)
            if pool is not None:  # every message was classified in a worker, none in this process
                assert (pool.classified, pool.unclassified) == (n, 0)
            counts = {
                name: counters(service, name)
                for name in (
                    "duisgw_messages",
                    "duisgw_rejects",
                    "duisgw_verify_failures",
                    "duisgw_http_requests",
                    "duisgw_decision_latency_seconds",
                )
            }
            counts["rejects"] = [(r["reason"], r["body"]) for r in await service.rejects.all()]
    finally:
        await receiver.stop()
    return answers, {r.message_id: r.body for r in receiver.log}, counts


async def test_ingress_workers_answer_decide_deliver_and_count_exactly_like_the_gateway_process(
    tmp_path: Path, lab: Lab
) -> None:
    in_process = await run_demo(tmp_path / "i0", lab, 0)
    answers, delivered, counts = await run_demo(tmp_path / "i2", lab, 2)
    assert [(a.status, a.message_id, a.decision, a.text) for a in answers] == [
        (a.status, a.message_id, a.decision, a.text) for a in in_process[0]
    ]
    assert delivered == in_process[1]
    assert counts == in_process[2]  # every count relayed to the gateway process's /metrics
    decisions = {a.decision for a in answers}
    assert {"suppress", "forward", "hold"} <= decisions
    assert [a.status for a in answers].count(400) == 1
    assert [body for _reason, body in counts["rejects"]] == [b"<not-duis"]  # kept by the gateway process
    by_label = {s.label: s for s in lab.demo.steps}
    assert by_label["AD1 with a broken DSP signature"].message_id in delivered
    for step in lab.demo.steps:
        if step.message_id in delivered:
            assert delivered[step.message_id] == step.body  # original bytes, unmodified


async def test_both_workers_serve_and_requests_and_answers_travel_in_batches(
    tmp_path: Path, lab: Lab, receiver: Receiver
) -> None:
    _gateway, service = gateway_service(tmp_path, lab, receiver, 2)
    async with running(service):
        pool = service.ingress_pool
        assert pool is not None and len(set(pool.pids)) == 2
        messages = timed(lab.stream)
        url = f"http://127.0.0.1:{service.port}"
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True)) as http,  # a connection per request
            DspSimulator(url, DNO_USER, session=http, retry_for=0) as dsp,
        ):
            answers = await asyncio.gather(*(dsp.post(m) for m in messages))
        assert [a.status for a in answers] == [200] * len(messages)
        assert pool.classified == len(messages)
        assert pool.frames < len(messages), (pool.frames, len(messages))  # batched, not one frame each
        await receiver.wait_for(len(messages))
        assert set(receiver.accepted_ids()) == {s.message_id for s in lab.stream.steps}
        # which worker accepts a connection is the kernel's choice: new connections reach both
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http,
            DspSimulator(url, DNO_USER, session=http, retry_for=0) as dsp,
        ):
            for _ in range(50):
                if len(pool.served) == 2:
                    break
                await asyncio.gather(*(dsp.post(m) for m in messages[:8]))  # re-deliveries: same answers
        assert sorted(pool.served) == sorted(pool.pids), pool.served


async def test_without_the_arrival_header_the_gateway_process_classifies_on_its_engine_clock(
    tmp_path: Path, lab: Lab, receiver: Receiver
) -> None:
    _gateway, service = gateway_service(tmp_path, lab, receiver, 1)
    async with running(service):
        pool = service.ingress_pool
        assert pool is not None
        async with DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp:
            dsp.send_arrival = False
            answers = await dsp.run(timed(lab.stream)[:3])
        assert [a.status for a in answers] == [200] * 3
        assert (pool.classified, pool.unclassified) == (0, 3)


async def test_refusals_in_a_worker_keep_the_bytes_and_count_in_the_gateway_process(
    tmp_path: Path, lab: Lab, receiver: Receiver
) -> None:
    _gateway, service = gateway_service(tmp_path, lab, receiver, 1)
    async with running(service):
        base = f"http://127.0.0.1:{service.port}"
        body = lab.stream.steps[0].body
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/duis/dno/nobody", data=body, headers={"Content-Type": "application/xml"}) as r:
                assert (r.status, await r.text()) == (404, "unknown_destination: no destination 'nobody'\n")
            async with http.post(f"{base}/duis/dno/{DNO_USER}", data=body, headers={"Content-Type": "text/csv"}) as r:
                assert r.status == 415
            huge = b"<x>" + b"a" * (service.config.server.max_body_bytes + 1) + b"</x>"
            async with http.post(f"{base}/duis/observe", data=huge, headers={"Content-Type": "application/xml"}) as r:
                assert r.status == 413
            async with http.get(f"http://127.0.0.1:{service.admin_port}/readyz") as r:
                assert (r.status, await r.text()) == (200, "ready\n")
        await asyncio.sleep(0.1)  # the counts follow the answers
        kept = {(r["reason"], r["body"]) for r in await service.rejects.all()}
        assert kept == {("unknown_destination", body), ("unsupported_media_type", body)}
        rejects = counters(service, "duisgw_rejects")
        assert rejects == {
            ("inline", "unknown_destination"): 1,
            ("inline", "unsupported_media_type"): 1,
            ("observe", "oversize_body"): 1,
        }
        assert counters(service, "duisgw_http_requests") == {("inline", "404"): 1, ("inline", "415"): 1,
                                                             ("observe", "413"): 1}  # fmt: skip


async def test_a_worker_killed_mid_stream_is_replaced_and_no_accepted_message_is_lost(
    tmp_path: Path, lab: Lab, receiver: Receiver
) -> None:
    _gateway, service = gateway_service(tmp_path, lab, receiver, 2)
    async with running(service):
        pool = service.ingress_pool
        assert pool is not None
        victim = pool.pids[0]
        messages = timed(lab.stream)
        async with DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=20) as dsp:
            first = [asyncio.create_task(dsp.post(m)) for m in messages[:20]]
            while pool.classified + pool.unclassified == 0:  # the workers have work
                await asyncio.sleep(0.001)
            os.kill(victim, signal.SIGKILL)
            rest = [asyncio.create_task(dsp.post(m)) for m in messages[20:]]
            answers = await asyncio.gather(*first, *rest)
        assert [a.status for a in answers] == [200] * len(messages)
        expected = {s.message_id for s in lab.stream.steps}
        await receiver.wait_for(len(expected))
        assert set(receiver.accepted_ids()) == expected  # each exactly once (the receiver dedupes nothing)
        assert len(receiver.log) == len(expected)
        for _ in range(100):  # the replacement starts at most one restart delay later
            if pool.live == 2:
                break
            await asyncio.sleep(0.05)
        assert pool.live == 2 and victim not in pool.pids and pool.restarts == 1
        assert counters(service, "duisgw_ingress_worker_events") == {("worker-died",): 1}
        assert service.metrics.ingress_workers.collect()[0].samples[0].value == 2


async def test_shutdown_answers_in_flight_requests_and_leaves_no_child_process(
    tmp_path: Path, lab: Lab, receiver: Receiver
) -> None:
    _gateway, service = gateway_service(tmp_path, lab, receiver, 2)
    await service.start()
    try:
        pool = service.ingress_pool
        assert pool is not None
        pids = list(pool.pids)
        async with DspSimulator(f"http://127.0.0.1:{service.port}", DNO_USER, retry_for=0) as dsp:
            posts = [asyncio.create_task(dsp.post(m)) for m in timed(lab.stream)[:16]]
            while pool.classified == 0:
                await asyncio.sleep(0.001)
            await service.stop()
            answers = await asyncio.gather(*posts, return_exceptions=True)
        # every request either completed (200: decided and recorded) or was refused unread (503, or no answer)
        statuses = [a.status if isinstance(a, Posted) else None for a in answers]
        assert set(statuses) <= {200, 503, None}
        assert statuses.count(200) == pool.classified  # each one that reached the gateway process got its 200
    finally:
        await service.stop()
    assert multiprocessing.active_children() == []
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)


async def test_pass_through_mode_runs_only_the_http_side_in_the_workers(tmp_path: Path, receiver: Receiver) -> None:
    cfg = service_config(tmp_path, receiver.url)
    # an [engine] table as a config file gives it (read-only mapping) reaches the workers' spawn too
    engine = config_from_mapping({"engine": {"hold_limit": "PT10M"}}).engine
    cfg = replace(cfg, server=replace(cfg.server, ingress_processes=2), engine=engine)
    async with running(Service(cfg)) as service:
        pool = service.ingress_pool
        assert pool is not None
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{service.port}/duis/dno/dno-a"
            bodies = [duis_body(i) for i in range(6)]
            for b in bodies:
                async with http.post(url, data=b, headers={"Content-Type": "application/xml"}) as r:
                    assert r.status == 204
        await receiver.wait_for(6)
        assert [r.body for r in receiver.log] == bodies
        assert (pool.classified, pool.unclassified) == (0, 6)


def test_ingress_processes_are_checked_in_the_config() -> None:
    with pytest.raises(ConfigError) as err:
        config_from_mapping({"server": {"ingress_processes": -1}})
    assert "server.ingress_processes: must be >= 0" in err.value.problems
    with pytest.raises(ConfigError) as err:
        config_from_mapping({"server": {"ingress_processes": 2}, "admin": {"enabled": False}})
    assert any("needs admin.enabled" in p for p in err.value.problems)
    assert config_from_mapping({"server": {"ingress_processes": 2}}).server.ingress_processes == 2
    assert ServerConfig().ingress_processes == 0


def test_a_pool_of_classifying_workers_needs_a_processor_that_takes_classified_messages(lab: Lab) -> None:
    from gateway.pipeline import ClassifierSpec
    from gateway.service.app import PassThroughProcessor
    from gateway.service.ingress_workers import IngressSpec
    from gateway.service.metrics import Metrics

    spec = IngressSpec(config_from_mapping({}), ClassifierSpec(lab.reference["certs"], lab.reference["gbcs_keys"]))
    with pytest.raises(ValueError, match="accept_classified"):
        IngressPool(spec, 1, PassThroughProcessor.__new__(PassThroughProcessor), None, Metrics())  # type: ignore[arg-type]


def test_the_wire_form_keeps_every_field_but_the_parsed_model_and_the_signature_reports(lab: Lab) -> None:
    import dataclasses

    from gateway.pipeline import ClassifierSpec, portable
    from gateway.service.ingress_workers import _wire

    clf = ClassifierSpec(lab.reference["certs"], lab.reference["gbcs_keys"]).build()
    for step in lab.demo.steps:
        lane = "inline" if step.lane == "inline" else "observe"
        c = clf.classify(lane, step.body, step.at)
        expected = dataclasses.replace(portable(c), xml=None, gbcs=None, device={})
        assert _wire(c) == expected


class _Notes:
    """Stands in for a worker's link: what it would send to the gateway process."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []

    def notify(self, *item: Any) -> None:
        self.sent.append(item)


async def test_a_workers_counts_are_added_up_and_relayed_once_per_loop_iteration() -> None:
    from gateway.service.ingress_workers import _RelayCounts
    from gateway.service.metrics import Metrics

    link = _Notes()
    relay = _RelayCounts(link)  # type: ignore[arg-type]
    for status in (200, 200, 202):  # three requests answered in one iteration
        relay.count_request("inline", status)
        relay.observe_decision("inline", 0.004)
    relay.count_accepted("inline", "ad1", "forward", "not-in-scope")
    relay.count_reject("inline", "malformed_xml")
    assert link.sent == []  # nothing sent before the iteration ends
    await asyncio.sleep(0)
    assert link.sent == [
        (
            "counts",
            {
                ("count_request", ("inline", 200)): 2,
                ("count_request", ("inline", 202)): 1,
                ("count_accepted", ("inline", "ad1", "forward", "not-in-scope")): 1,
                ("count_reject", ("inline", "malformed_xml")): 1,
            },
            [("inline", 0.004)] * 3,
        )
    ]
    await asyncio.sleep(0)
    relay.relay()  # nothing new: nothing sent
    assert len(link.sent) == 1

    # the gateway process applies the sums to its metrics as if each request had been counted there
    metrics = Metrics()
    pool = IngressPool.__new__(IngressPool)
    pool.metrics = metrics
    pool._apply_counts(link.sent[0][1], link.sent[0][2])
    direct = Metrics()
    for status in (200, 200, 202):
        direct.count_request("inline", status)
        direct.observe_decision("inline", 0.004)
    direct.count_accepted("inline", "ad1", "forward", "not-in-scope")
    direct.count_reject("inline", "malformed_xml")

    def samples(m: Metrics) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
        return {
            (x.name, tuple(sorted(x.labels.items())), x.value)
            for fam in m.registry.collect()
            for x in fam.samples
            if not x.name.endswith("_created") and fam.name != "duisgw_gc_frozen_objects"
        }

    assert samples(metrics) == samples(direct)
    assert ("duisgw_http_requests_total", (("route", "inline"), ("status", "200")), 2.0) in samples(metrics)

"""End to end, scaled out: three ``python -m gateway serve`` processes on the Redis backend behind
one address (a round-robin HTTP front that, like a load balancer, tries the next instance when one
does not answer), a real redis-server, a real DNO receiver, random SIGKILLs and restarts.

Pinned down: nothing acknowledged is lost, no message is decided twice (the shared decision log
has exactly one final decision per message), the decisions equal a single-node SQLite run of the
same stream, and a held message whose instance was killed is released by another instance and
delivered with its original bytes.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
from aiohttp import web
from e2ekit import DNO_USER, GatewayProcess, Traffic, build_traffic, end_of, final_decisions, write_config
from redisfixture import RedisServer, free_port
from servicekit import Receiver

from gateway.service.simulate import DspSimulator, TimedMessage
from gateway.testkit.scenario import Scenario

pytestmark = pytest.mark.slow

FRONT_HEADER = "X-Front-Instance"  # which instance answered (for the logs)


@dataclass
class Front:
    """A round-robin HTTP front: each POST goes to the next instance; an instance that does not
    answer (killed, restarting) is skipped and the request tried on the next one."""

    ports: list[int]
    port: int = field(default_factory=free_port)
    _next: int = 0
    _runner: web.AppRunner | None = None
    _http: aiohttp.ClientSession | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "x-duisgw-arrival")}
        assert self._http is not None
        for _ in range(4 * len(self.ports)):
            i = self._next % len(self.ports)
            self._next += 1
            try:
                async with self._http.post(f"http://127.0.0.1:{self.ports[i]}{request.path_qs}", data=body,
                                           headers=headers) as resp:  # fmt: skip
                    text = await resp.read()
                    out = {k: v for k, v in resp.headers.items() if k.lower().startswith("x-duisgw")}
                    out[FRONT_HEADER] = str(i)
                    return web.Response(status=resp.status, body=text, headers=out)
            except (TimeoutError, aiohttp.ClientError, OSError):
                await asyncio.sleep(0.05)
        return web.Response(status=503, text="no instance answered")

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        app = web.Application(client_max_size=4 << 20)
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._http is not None:
            await self._http.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


@dataclass
class World:
    traffic: Traffic
    messages: list[TimedMessage]
    expected: dict[str, str]
    timeout_ad1: str
    reference: dict[str, Path]


def _world(tmp: Path) -> World:
    traffic = build_traffic(tmp / "traffic", premises=12)
    # one more premises: an 11.3 request whose response never comes, then an AD1: held, then
    # released by the hold time-out (forwarded) — by another instance, its holder being dead
    extra = Scenario("timeout", traffic.world)
    f, t = traffic.world.factory, extra.t
    esme, ch, mpan = traffic.world.meter(60)
    extra.observe(t("13:00"), f.activate_request(esme, 6600), "11.3 request, no response ever")
    ad1 = f.ad1(ch, mpan, t("13:02"), t("13:05"), 660)
    extra.inline(t("13:05"), ad1, "forward", "hold-timeout", label="AD1 held, then timed out")
    reference = traffic.world.write_reference(tmp / "reference")  # now with premises 60
    steps = sorted([*traffic.demo.steps, *traffic.stream.steps, *extra.steps], key=lambda s: s.at)
    messages = [TimedMessage(s.at, s.lane, s.body) for s in steps]
    expected = traffic.expected()
    expected.update({str(e["message_id"]): str(e["decision"]) for e in extra.expected()})
    timeout_id = next(s.message_id for s in extra.steps if s.lane == "inline")
    return World(traffic, messages, expected, timeout_id, reference)


def _config(
    folder: Path, world: World, receiver: Receiver, *, redis_url: str | None, name: str, shared_port: int | None = None
) -> GatewayProcess:
    """One instance's folder and configuration; ``shared_port``: listen there with ``reuse_port``."""
    folder.mkdir(parents=True, exist_ok=True)
    port, admin = shared_port or free_port(), free_port()
    state = ""
    if redis_url is not None:
        state = f'\n[state]\nbackend = "redis"\nredis_url = "{redis_url}"\ninstance = "{name}"\nlease = 2.0\n'
    # two DNOs: a hold released by another instance must find its destination in the shared state
    # (with a single destination the gateway would fall back to it and hide a lost route)
    dests = [{"name": "dno-a", "user": DNO_USER, "url": receiver.url},
             {"name": "dno-b", "user": "90-B3-D5-1F-30-02-00-09", "url": receiver.url}]
    cfg = write_config(folder / "gateway.toml", port=port, admin_port=admin, reference=world.reference,
                       destinations=dests, extra=state,
                       server_extra="reuse_port = true\n" if shared_port is not None else "")  # fmt: skip
    gw = GatewayProcess(cfg, admin)
    gw.port = port  # type: ignore[attr-defined]
    return gw


def _shared_log(url: str) -> list[tuple[str, dict[str, Any]]]:
    client = redis.Redis.from_url(url)
    try:
        rows = client.xrange("duisgw:decisions")
    finally:
        client.close()
    out = []
    for _id, fields in rows:
        item = json.loads(fields[b"d"])
        out.append((str(item["owner"]), item["decision"]))
    return out


_DISPOSITION = {"forward": "forward", "release-forward": "forward", "suppress": "suppress",
                "release-suppress": "suppress", "hold": "hold"}  # fmt: skip


async def test_three_instances_with_random_kills_lose_nothing_decide_once_and_like_one_node(
    tmp_path: Path, redis_server: RedisServer, receiver: Receiver
) -> None:
    redis_server.flush()
    world = _world(tmp_path)
    messages = world.messages
    forwards = {mid for mid, d in world.expected.items() if d == "forward"}
    end = end_of(messages)

    # ---- the reference: one gateway on SQLite, the same stream
    ref_rx = Receiver()
    await ref_rx.start()
    ref = _config(tmp_path / "single", world, ref_rx, redis_url=None, name="single")
    ref.start()
    try:
        await ref.wait_ready()
        async with DspSimulator(f"http://127.0.0.1:{ref.port}", DNO_USER) as dsp:  # type: ignore[attr-defined]
            await dsp.run(messages)
        await ref.admin("POST", "/admin/tick", {"now": end.isoformat()})
        await ref_rx.wait_for(len(forwards))
    finally:
        ref.terminate()
        await ref_rx.stop()
    single = {mid: d for mid, (d, _r) in final_decisions(ref.config).items()}
    single_reasons = {mid: r for mid, (_d, r) in final_decisions(ref.config).items()}
    assert single == world.expected

    # ---- three instances on Redis behind one front
    gws = [_config(tmp_path / f"gw{i}", world, receiver, redis_url=redis_server.url, name=f"gw{i}") for i in range(3)]
    for gw in gws:
        gw.start()
    await asyncio.gather(*(gw.wait_ready() for gw in gws))
    front = Front([gw.port for gw in gws])  # type: ignore[attr-defined]
    await front.start()
    rnd = random.Random(20260302)
    kill_at = set(rnd.sample(range(5, len(messages) - 2), 3))
    down: dict[int, int] = {}  # instance -> message index at which it comes back
    holder: int | None = None
    try:
        async with DspSimulator(front.url, DNO_USER, retry_for=30) as dsp:
            for n, msg in enumerate(messages):
                for i, back in list(down.items()):
                    if n >= back and i != holder:
                        gws[i].start()
                        await gws[i].wait_ready()
                        del down[i]
                if n in kill_at:
                    victim = rnd.choice([i for i in range(3) if i not in down and i != holder])
                    in_flight = asyncio.create_task(dsp.post(msg))  # killed while a request may be on the wire
                    await asyncio.sleep(rnd.uniform(0, 0.02))
                    gws[victim].kill()
                    down[victim] = n + 3
                    answer = await in_flight
                else:
                    answer = await dsp.post(msg)
                assert answer.status < 300, answer
                if answer.message_id == world.timeout_ad1 and answer.decision == "hold":
                    # kill the instance holding it and keep it down: another one must release it
                    (owner,) = [o for o, d in _shared_log(redis_server.url) if d["message_id"] == world.timeout_ad1]
                    holder = int(owner.removeprefix("gw"))
                    gws[holder].kill()
                    down[holder] = len(messages) + 1
        for i in [i for i in down if i != holder]:
            gws[i].start()
            await gws[i].wait_ready()
            del down[i]
        assert holder is not None, "the time-out AD1 was not held"
        live = next(gw for i, gw in enumerate(gws) if i != holder)
        await live.admin("POST", "/admin/tick", {"now": end.isoformat()})
        log = _shared_log(redis_server.url)
        mine = [(owner, d) for owner, d in log if d["message_id"] == world.timeout_ad1]
        assert [d["action"] for _, d in mine] == ["hold", "release-forward"]
        assert mine[0][0] == f"gw{holder}" and mine[1][0] != f"gw{holder}"  # released by another instance
        gws[holder].start()  # back: its outbox had nothing pending for that message
        await gws[holder].wait_ready()
        await receiver.wait_for(len(forwards), timeout=30)
        await asyncio.sleep(0.5)  # a wrongly forwarded message would show up now
    finally:
        await front.stop()
        for gw in gws:
            if gw.proc is not None and gw.proc.poll() is None:
                gw.terminate()

    # 0 lost, nothing suppressed delivered, original bytes
    assert set(receiver.accepted_ids()) == forwards
    bodies = {**world.traffic.bodies()}
    for r in receiver.log:
        if r.message_id in bodies:
            assert r.body == bodies[r.message_id], f"bytes of {r.message_id} changed"
    # 0 decided twice: one final decision per message in the shared log (a hold before it at most)
    log = _shared_log(redis_server.url)
    assert {owner for owner, _ in log} == {"gw0", "gw1", "gw2"}  # the front spread the work
    finals: dict[str, list[tuple[str, str]]] = {}
    for _owner, d in log:
        disposition = _DISPOSITION[d["action"]]
        if disposition != "hold":
            finals.setdefault(d["message_id"], []).append((disposition, d["reason"]))
    assert all(len(v) == 1 for v in finals.values()), {k: v for k, v in finals.items() if len(v) != 1}
    # decisions identical to the single-node run
    assert {mid: v[0][0] for mid, v in finals.items()} == single
    assert {mid: v[0][1] for mid, v in finals.items()} == single_reasons


async def test_two_instances_sharing_one_port_split_the_connections_and_decide_like_one_node(
    tmp_path: Path, redis_server: RedisServer, receiver: Receiver
) -> None:
    """``[server] reuse_port``: two instances listen on the SAME port (SO_REUSEPORT), the kernel spreads
    the DSP's connections across them, and together they decide exactly like one gateway."""
    redis_server.flush()
    world = _world(tmp_path)
    forwards = {mid for mid, d in world.expected.items() if d == "forward"}
    port = free_port()
    gws = [_config(tmp_path / f"gw{i}", world, receiver, redis_url=redis_server.url, name=f"gw{i}", shared_port=port)
           for i in range(2)]  # fmt: skip
    for gw in gws:
        gw.start()
    try:
        await asyncio.gather(*(gw.wait_ready() for gw in gws))
        # a new connection per message, as many DSP connections would be: each is given to one instance
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                     timeout=aiohttp.ClientTimeout(total=30))  # fmt: skip
        try:
            async with DspSimulator(f"http://127.0.0.1:{port}", DNO_USER, session=http) as dsp:
                for msg in world.messages:
                    answer = await dsp.post(msg)
                    assert answer.status < 300, answer
        finally:
            await http.close()
        await gws[0].admin("POST", "/admin/tick", {"now": end_of(world.messages).isoformat()})
        await receiver.wait_for(len(forwards), timeout=30)
        await asyncio.sleep(0.5)  # a wrongly forwarded message would show up now
    finally:
        for gw in gws:
            gw.terminate()
    log = _shared_log(redis_server.url)
    assert {owner for owner, _ in log} == {"gw0", "gw1"}  # the kernel gave connections to both
    finals: dict[str, list[str]] = {}
    for _owner, d in log:
        disposition = _DISPOSITION[d["action"]]
        if disposition != "hold":
            finals.setdefault(d["message_id"], []).append(disposition)
    assert all(len(v) == 1 for v in finals.values())
    assert {mid: v[0] for mid, v in finals.items()} == world.expected
    assert set(receiver.accepted_ids()) == forwards
    bodies = world.traffic.bodies()
    assert all(r.body == bodies[r.message_id] for r in receiver.log if r.message_id in bodies)

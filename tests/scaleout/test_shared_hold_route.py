"""Shared state (``[state] backend = "redis"``): a held message's route (its DNO destination and DUIS
kind) is written in the same Redis commit as the hold, so no instance can ever see the hold without
its route — not when the holding instance dies right after its commit, nor when the route cannot be
written (then nothing is held: the message is answered 503 and the DSP re-delivers it)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis
from engine_support import CH, ESME, MPAN, MemoryInventory, MemoryScope, outage, request, t
from servicekit import DNO_USER, Receiver, running, timed
from test_shared_release_kind import AD1, held_ad1, instance

from gateway.engine import Decision, EngineConfig
from gateway.engine.effects import Action
from gateway.service.app import queues_for
from gateway.service.processor import GatewayProcessor
from gateway.service.serve import build_gateway, make_service
from gateway.service.simulate import DspSimulator
from gateway.store.redis_state import RedisState, RedisStateConfig
from gateway.testkit.scenario import World

#: every key of the shared state but the routes (``route:<id>``, ``route-kind:<id>``)
NO_ROUTE_KEYS = [
    *("~duisgw:e:*", "~duisgw:c:*", "~duisgw:seen:*", "~duisgw:hm:*", "~duisgw:raw:*", "~duisgw:rel:*"),
    *("~duisgw:seen-expiry", "~duisgw:clock", "~duisgw:held", "~duisgw:released", "~duisgw:learned"),
    "~duisgw:decisions", "~duisgw:epoch", "~duisgw:commits", "~duisgw:learned-*",
]


def _as_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port}"))


def _holds_without_route(client: redis.Redis) -> list[str]:
    held = [m.decode() for m in client.zrange("duisgw:held", 0, -1)]
    return [mid for mid in held if client.get(f"duisgw:route:{mid}") is None]


async def test_a_hold_whose_route_cannot_be_written_is_not_held_and_its_redelivery_holds_it_with_its_route(
    tmp_path: Path, redis_url: str
) -> None:
    """Instance A may write every key but the routes (a Redis ACL): its hold is refused as a whole
    (answered 503, nothing of it in Redis), where the hold used to commit and the route share after it
    failed, leaving a hold no other instance could route. Re-delivered to B, the AD1 is held with its
    route; B stops, C releases it past the hold limit and delivers it under the kind B recorded."""
    admin = redis.Redis.from_url(redis_url)
    admin.execute_command("ACL", "SETUSER", "gw-noroute", "reset", "on", ">pw", *NO_ROUTE_KEYS, "+@all")
    world = World.generated("shared-hold-route")
    scenario = held_ad1(world)
    reference = world.write_reference(tmp_path / "reference")
    receiver = Receiver()
    await receiver.start()
    try:
        messages = timed(scenario)
        (ad1,) = [m for m in messages if m.lane == "inline"]
        a = make_service(build_gateway(instance(tmp_path, "gw-a", reference, receiver,
                                                 _as_user(redis_url, "gw-noroute", "pw"))))  # fmt: skip
        async with running(a), DspSimulator(f"http://127.0.0.1:{a.port}", DNO_USER, retry_for=0) as dsp:
            answers = [await dsp.post(m) for m in messages]
        assert [x.status for x in answers] == [204, 503]  # the AD1 is not acknowledged: the DSP re-delivers
        assert _holds_without_route(admin) == []
        assert admin.zcard("duisgw:held") == 0

        b = make_service(build_gateway(instance(tmp_path, "gw-b", reference, receiver, redis_url)))
        async with running(b), DspSimulator(f"http://127.0.0.1:{b.port}", DNO_USER, retry_for=0) as dsp:
            again = await dsp.post(ad1)
        assert (again.status, again.decision) == (202, "hold")
        mid = str(again.message_id)
        assert _holds_without_route(admin) == []
        assert admin.get(f"duisgw:route:{mid}") == b"dno-a"
        assert admin.get(f"duisgw:route-kind:{mid}") == AD1.encode()

        c_cfg = instance(tmp_path, "gw-c", reference, receiver, redis_url)
        c_gateway = build_gateway(c_cfg)
        c = make_service(c_gateway)
        async with running(c):
            proc = c.processor
            assert isinstance(proc, GatewayProcessor)
            end = max(m.at for m in messages) + c_gateway.engine_config.hold_limit + dt.timedelta(seconds=1)
            released = await proc.advance(end)
            assert [(d.message_id, str(d.reason)) for d in released] == [(mid, "hold-timeout")]
            await receiver.wait_for(1)
            (row,) = [row for q in queues_for(c_cfg, "dno-a") for row in await c.outbox.rows(q)]
        assert [r.message_id for r in receiver.log] == [mid]
        assert (row.metadata["reason"], row.metadata["kind"]) == ("hold-timeout", AD1)
    finally:
        await receiver.stop()
        admin.execute_command("ACL", "DELUSER", "gw-noroute")
        admin.close()


async def test_a_hold_commits_its_route_so_an_instance_releasing_it_after_the_holder_died_finds_it(
    redis_url: str,
) -> None:
    """The holder's only Redis call is the hold's commit: when it dies right after it, another instance
    releasing the hold finds its route. The route has no time to live while the message is held (it is
    read at the release, however late), then expires with the message's state."""
    rows = [(ESME, CH, MPAN, "Landis+Gyr")]
    a, b = (RedisState(RedisStateConfig(url=redis_url, instance=name), EngineConfig(), MemoryScope([ESME]),
                       MemoryInventory(rows)) for name in ("gw-a", "gw-b"))  # fmt: skip
    admin = redis.Redis.from_url(redis_url)
    try:
        await a.start()
        await b.start()
        await a.decide(request(0, counter=9), None)  # the response never comes: the AD1 waits
        tx = await a.decide(outage(2, mid="held-ad1"), b"<held bytes>", route=("dno-b", AD1))
        assert [d.action for d in tx.effects if isinstance(d, Decision)] == [Action.HOLD]
        await a.aclose()  # A dies right after its commit
        assert await b.routes(["held-ad1"]) == {"held-ad1": "dno-b"}
        assert await b.route_kinds(["held-ad1"]) == {"held-ad1": AD1}
        assert admin.ttl("duisgw:route:held-ad1") == -1  # kept while held
        late = t(2 + 3.5) + EngineConfig().hold_limit + dt.timedelta(seconds=1)
        txs, _ = await b.tick(late)
        assert [r.decision.message_id for tx in txs for r in tx.released] == ["held-ad1"]
        assert await b.routes(["held-ad1"]) == {"held-ad1": "dno-b"}
        assert 0 < admin.ttl("duisgw:route:held-ad1") <= int(EngineConfig().keep_for.total_seconds()) + 3600
        assert admin.ttl("duisgw:route-kind:held-ad1") > 0
    finally:
        await b.aclose()
        admin.close()

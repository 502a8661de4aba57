"""Shared state refuses a Redis server that may evict its keys. The state is partitions, held-message
bodies and an index of the held, each written on its own: an evicted ``E(esme)`` whose held index entry
stays leaves a message neither decided nor delivered. With a memory limit only ``noeviction`` is safe
(the ``volatile-*`` policies evict our keys too: they carry a time to live); without a limit nothing is
evicted. The server's settings are restored after each case (the server is shared by the session)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from engine_support import MemoryInventory, MemoryScope

from gateway.engine import EngineConfig
from gateway.engine.errors import StoreError
from gateway.store.redis_state import RedisState, RedisStateConfig


@pytest.fixture
def server(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    before = client.config_get("maxmemory*")
    try:
        yield client
    finally:
        client.config_set("maxmemory", before["maxmemory"])
        client.config_set("maxmemory-policy", before["maxmemory-policy"])
        client.close()


def _state(url: str) -> RedisState:
    return RedisState(RedisStateConfig(url=url, instance="gw0"), EngineConfig(), MemoryScope([]), MemoryInventory([]))


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru", "volatile-ttl", "allkeys-random"])
async def test_a_server_with_a_memory_limit_that_may_evict_keys_is_refused(
    redis_url: str, server: redis.Redis, policy: str
) -> None:
    server.config_set("maxmemory", "64mb")
    server.config_set("maxmemory-policy", policy)
    state = _state(redis_url)
    try:
        with pytest.raises(StoreError, match=f"maxmemory-policy {policy}.*noeviction"):
            await state.start()
    finally:
        await state.aclose()


@pytest.mark.parametrize(("limit", "policy"), [("64mb", "noeviction"), ("0", "allkeys-lru"), ("0", "noeviction")])
async def test_a_server_that_never_evicts_is_accepted(
    redis_url: str, server: redis.Redis, limit: str, policy: str
) -> None:
    server.config_set("maxmemory", limit)
    server.config_set("maxmemory-policy", policy)
    state = _state(redis_url)
    try:
        await state.start()
        assert state.held_count == 0
    finally:
        await state.aclose()


async def test_the_refusal_does_not_show_the_password_of_the_redis_url(redis_url: str, server: redis.Redis) -> None:
    server.config_set("maxmemory", "64mb")
    server.config_set("maxmemory-policy", "allkeys-lru")
    # the default user has no password (nopass): AUTH default <anything> is accepted, as with a real one
    with_password = redis_url.replace("redis://", "redis://default:s3cret-pw@", 1)
    state = _state(with_password)
    try:
        with pytest.raises(StoreError) as refused:
            await state.start()
    finally:
        await state.aclose()
    assert "s3cret-pw" not in str(refused.value)
    assert "redis://default:***@" in str(refused.value)

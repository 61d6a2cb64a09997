"""What only the Redis store has: its key layout, lease TTLs, retention, prefixes and client ownership."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from typing import cast

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.crc import key_slot

from agent_service.adapters.redis_store import RedisConversationStore
from agent_service.domain import TurnResult
from agent_service.errors import StoreUnavailableError
from devstack import free_port


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def store(redis_url: str, key_prefix: str) -> AsyncIterator[RedisConversationStore]:
    opened = RedisConversationStore.from_url(redis_url, key_prefix=key_prefix)
    yield opened
    await opened.close()


async def test_one_conversation_keys_share_a_hash_tag(
    store: RedisConversationStore, raw: Redis, key_prefix: str
) -> None:
    await store.append_turn(TurnResult("conv-1", "t1"), customer_id="cust-001")
    assert await store.acquire_lock("conv-1", "holder", 30)
    # The conversation's keys, plus the global change feed (wake-up hints for other replicas' watch streams,
    # written outside the scripts).
    keys = sorted(
        [key async for key in raw.scan_iter(match=f"{key_prefix}*") if key != f"{key_prefix}events-feed"]
    )
    parts = ("turns", "index", "customer", "lock", "events", "eventseq")
    assert keys == sorted(f"{key_prefix}{{conv-1}}:{part}" for part in parts)
    # One Redis Cluster slot for all of them, so the Lua scripts stay single-slot.
    assert len({key_slot(key.encode()) for key in keys}) == 1
    index = raw.hget(f"{key_prefix}{{conv-1}}:index", "t1")
    assert await cast(Awaitable[str | None], index) == "0"
    assert await raw.get(f"{key_prefix}{{conv-1}}:customer") == "cust-001"


async def test_lock_is_a_lease_with_a_ttl(store: RedisConversationStore, raw: Redis, key_prefix: str) -> None:
    assert await store.acquire_lock("conv-1", "holder-a", 2.5)
    ttl_ms = await raw.pttl(f"{key_prefix}{{conv-1}}:lock")
    assert 0 < ttl_ms <= 2500
    assert await raw.get(f"{key_prefix}{{conv-1}}:lock") == "holder-a"
    await store.release_lock("conv-1", "holder-a")
    assert await raw.exists(f"{key_prefix}{{conv-1}}:lock") == 0


async def test_history_is_kept_without_retention(
    store: RedisConversationStore, raw: Redis, key_prefix: str
) -> None:
    await store.append_turn(TurnResult("conv-1", "t1"), customer_id="cust-001")
    for part in ("turns", "index", "customer"):
        assert await raw.ttl(f"{key_prefix}{{conv-1}}:{part}") == -1


async def test_retention_refreshes_an_expiry_on_every_append(
    redis_url: str, raw: Redis, key_prefix: str
) -> None:
    store = RedisConversationStore.from_url(redis_url, key_prefix=key_prefix, retention_seconds=3600)
    try:
        await store.append_turn(TurnResult("conv-1", "t1"))
        assert 3590 <= await raw.ttl(f"{key_prefix}{{conv-1}}:turns") <= 3600
        await raw.expire(f"{key_prefix}{{conv-1}}:turns", 10)
        await store.append_turn(TurnResult("conv-1", "t2"), customer_id="cust-001")
        for part in ("turns", "index", "customer"):
            assert 3590 <= await raw.ttl(f"{key_prefix}{{conv-1}}:{part}") <= 3600
    finally:
        await store.close()


async def test_prefixes_isolate_deployments(redis_url: str) -> None:
    blue = RedisConversationStore.from_url(redis_url, key_prefix=f"blue-{time.monotonic_ns()}:")
    green = RedisConversationStore.from_url(redis_url, key_prefix=f"green-{time.monotonic_ns()}:")
    try:
        await blue.append_turn(TurnResult("conv-1", "t1"))
        assert (await green.load("conv-1")).turns == ()
        await green.append_turn(TurnResult("conv-1", "t1"))  # no DuplicateTurnError across prefixes
        assert await blue.acquire_lock("conv-1", "a", 30)
        assert await green.acquire_lock("conv-1", "b", 30)
    finally:
        await blue.close()
        await green.close()


def test_bad_settings_are_refused(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    with pytest.raises(ValueError, match="key_prefix"):
        RedisConversationStore(client, key_prefix="app{x}:")
    with pytest.raises(ValueError, match="retention_seconds"):
        RedisConversationStore(client, retention_seconds=0)


async def test_an_injected_client_stays_open(redis_url: str, key_prefix: str) -> None:
    client = Redis.from_url(redis_url)
    try:
        store = RedisConversationStore(client, key_prefix=key_prefix)
        await store.append_turn(TurnResult("conv-1", "t1"))
        await store.close()
        assert await client.ping()
    finally:
        await client.aclose()


async def test_redis_down_fails_fast_with_a_redis_error() -> None:
    """... surfaced as the domain's StoreUnavailableError (→ UNAVAILABLE), the Redis error as its cause."""
    store = RedisConversationStore.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_timeout_seconds=1.0)
    started = time.monotonic()
    try:
        with pytest.raises(StoreUnavailableError) as raised:
            await store.load("conv-1")
        assert isinstance(raised.value.__cause__, redis.RedisError)
    finally:
        await store.close()
    assert time.monotonic() - started < 10


ids = st.text(min_size=1, max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(conversation_id=ids, turn_id=ids, message=st.text(max_size=300), customer=st.text(max_size=20))
async def test_any_text_round_trips(
    store: RedisConversationStore, conversation_id: str, turn_id: str, message: str, customer: str
) -> None:
    turn = TurnResult(conversation_id, turn_id, user_message=message, reply=message[::-1])
    existing = await store.get_turn(conversation_id, turn_id)
    if existing is None:
        await store.append_turn(turn, customer_id=customer)
        existing = turn
    assert await store.get_turn(conversation_id, turn_id) == existing
    assert existing in (await store.load(conversation_id)).turns


async def test_a_re_sent_acquire_by_the_holder_is_idempotent(store: RedisConversationStore) -> None:
    # What a client-side retry of a SET whose reply was lost looks like: the lease is already ours.
    assert await store.acquire_lock("conv-1", "holder-a", 30)
    assert await store.acquire_lock("conv-1", "holder-a", 30)
    assert not await store.acquire_lock("conv-1", "holder-b", 30)
    await store.release_lock("conv-1", "holder-a")
    assert await store.acquire_lock("conv-1", "holder-b", 30)


async def test_a_hung_redis_fails_the_call_within_the_retry_budget() -> None:
    """A Redis that accepts connections and never answers: the store gives up after (retries + 1) timeouts."""
    connections: list[asyncio.StreamWriter] = []

    async def swallow(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)

    hung = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = hung.sockets[0].getsockname()[1]
    timeout, retries = 0.3, 2
    store = RedisConversationStore.from_url(
        f"redis://127.0.0.1:{port}/0", socket_timeout_seconds=timeout, retries=retries
    )
    started = time.monotonic()
    try:
        with pytest.raises(StoreUnavailableError) as raised:
            await store.load("conv-1")
        assert isinstance(raised.value.__cause__, redis.TimeoutError)
    finally:
        await store.close()
        for writer in connections:
            writer.close()
        hung.close()
        await hung.wait_closed()
    elapsed = time.monotonic() - started
    assert len(connections) == retries + 1, "one attempt plus two retries"
    # Each attempt waited out its timeout (less a margin for clock rounding), and the backoffs between them are
    # capped at 0.5 s: about 1-2 s in all. The upper bound leaves a loaded machine room to be late yet stays
    # well under redis-py's default backoff (1 s doubling per retry) or a hang.
    budget = (retries + 1) * timeout + retries * 0.5
    assert 0.9 * (retries + 1) * timeout <= elapsed < budget + 3.0, elapsed

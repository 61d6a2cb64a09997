"""Redis conversation store, so agent replicas are stateless: every replica reads and writes the same history.

Same guarantees as the SQLite reference (`conversation_store.py`), held by Redis itself rather than by one
process:

* `append_turn` is one Lua script: the turn (serialised with `TurnResult.to_json`, exactly as the SQLite store
  does), its turn-id index entry and the customer binding are written together or not at all, and a turn id
  already present raises `DuplicateTurnError` without touching anything.
* the in-flight lock is a lease: `SET key holder NX PX lease`, released by a compare-and-delete script, so only
  the holder can release it and a crashed replica's lease simply expires. Asking again with the same holder
  id answers True while its lease is live (a retried command must not lock a turn out of its own lease); the
  agent uses a fresh holder id per turn, so this never lets a second turn in.
* `renew_lock` is a compare-and-PEXPIRE script: only the holder extends its own live lease.
* `load` reads the turns and the customer in one MULTI/EXEC, oldest first.
* a Redis that cannot be reached, times out or refuses writes (OOM, read-only replica, loading) raises
  `StoreUnavailableError` (→ UNAVAILABLE); the lease then simply expires, it is never left stuck.

Keys, per conversation `c` under the prefix `p` (default ``support-agent:``)::

    p{c}:turns     list of turn JSON, oldest first
    p{c}:index     hash turn_id -> position in the list
    p{c}:customer  the customer the conversation is bound to (absent until a turn names one)
    p{c}:lock      the in-flight lease, value = holder

The conversation id sits in a hash tag (`{c}`), so one conversation's keys share a Redis Cluster slot and the
scripts stay single-slot. With `retention_seconds`, every append refreshes an expiry on the conversation's keys
(idle conversations disappear); without it they are kept until deleted.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from agent_service.conversation_events import ConversationEvent, NewEvent, events_of_turn
from agent_service.domain import Conversation, TurnResult
from agent_service.errors import DuplicateTurnError, StoreUnavailableError

logger = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_KEY_PREFIX = "support-agent:"
# The global change feed (wake-up hints for other replicas' streams) keeps about this many entries.
FEED_MAXLEN = 100_000

# Appends events (JSON array of [kind, data JSON, source_key, create_time]) to a conversation's event stream
# with the next offsets (stream id "<offset>-1"); an event whose source_key the conversation has is skipped.
# Returns the offsets appended.
_ADD_EVENTS = """
local function add_events(stream, seq, dedup, encoded, retention)
  local appended = {}
  for _, event in ipairs(cjson.decode(encoded)) do
    if event[3] == '' or redis.call('HSETNX', dedup, event[3], '1') == 1 then
      local offset = redis.call('INCR', seq)
      redis.call('XADD', stream, offset .. '-1', 'k', event[1], 'd', event[2], 't', event[4])
      table.insert(appended, offset)
    end
  end
  if retention > 0 then
    for _, key in ipairs({stream, seq, dedup}) do
      if redis.call('EXISTS', key) == 1 then
        redis.call('PEXPIRE', key, retention)
      end
    end
  end
  return appended
end
"""

# KEYS: turns, index, customer, events, event seq, event keys, lock.
# ARGV: turn_id, turn JSON, customer_id ("" = leave unbound), retention ms (0 = none), the turn's events, the
# holder whose lock to release once the turn is stored ("" = none).
# Returns the new number of turns, or 0 when the turn id is already stored (nothing written).
_APPEND = (
    _ADD_EVENTS
    + """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  return 0
end
add_events(KEYS[4], KEYS[5], KEYS[6], ARGV[5], tonumber(ARGV[4]))
local count = redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], count - 1)
if ARGV[3] ~= '' then
  redis.call('SET', KEYS[3], ARGV[3], 'NX')
end
local retention = tonumber(ARGV[4])
if retention > 0 then
  redis.call('PEXPIRE', KEYS[1], retention)
  redis.call('PEXPIRE', KEYS[2], retention)
  if redis.call('EXISTS', KEYS[3]) == 1 then
    redis.call('PEXPIRE', KEYS[3], retention)
  end
end
if ARGV[6] ~= '' and redis.call('GET', KEYS[7]) == ARGV[6] then
  redis.call('DEL', KEYS[7])
end
return count
"""
)

# KEYS: turns, customer, events, event seq, event keys. ARGV: events, "1" to require the customer / "0",
# retention ms, the required customer. The offsets appended; nothing when the conversation is unknown or another customer's.
_APPEND_EVENTS = (
    _ADD_EVENTS
    + """
if ARGV[2] == '1' then
  if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('GET', KEYS[2]) ~= ARGV[4] then
    return {}
  end
end
return add_events(KEYS[3], KEYS[4], KEYS[5], ARGV[1], tonumber(ARGV[3]))
"""
)

# KEYS: turns, index. ARGV: turn_id. The turn's JSON, or nil.
_GET_TURN = """
local position = redis.call('HGET', KEYS[2], ARGV[1])
if not position then
  return false
end
return redis.call('LINDEX', KEYS[1], tonumber(position))
"""

# KEYS: lock. ARGV: holder. Deletes the lease only if `holder` still has it; 1 if deleted.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: lock. ARGV: holder, lease ms. Extends the lease only if `holder` still has it; 1 if extended.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# Error replies that mean "Redis cannot serve this now", not "this command is wrong".
_UNAVAILABLE_REPLIES = (
    "OOM",
    "READONLY",
    "LOADING",
    "MASTERDOWN",
    "BUSY",
    "CLUSTERDOWN",
    "TRYAGAIN",
    "NOREPLICAS",
)


async def _available(call: Awaitable[T]) -> T:
    """Awaits a Redis call; an outage (connection, timeout, refusing writes) becomes `StoreUnavailableError`."""
    try:
        return await call
    except (redis_errors.ConnectionError, redis_errors.TimeoutError) as error:
        raise StoreUnavailableError(f"conversation store unavailable: {type(error).__name__}") from error
    except redis_errors.ResponseError as error:
        if str(error).startswith(_UNAVAILABLE_REPLIES):
            raise StoreUnavailableError(f"conversation store unavailable: {str(error)[:80]}") from error
        raise


class RedisConversationStore:
    """`ConversationStore` on Redis (redis-py asyncio). Build it with `from_url` or pass a client.

    A client passed in is closed by `close()` only when `owns_client` is true (`from_url` sets it).
    """

    def __init__(
        self,
        client: Redis,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        retention_seconds: float | None = None,
        owns_client: bool = False,
    ) -> None:
        if "{" in key_prefix or "}" in key_prefix:
            raise ValueError("key_prefix must not contain '{' or '}' (the conversation id is the hash tag)")
        if retention_seconds is not None and retention_seconds <= 0:
            raise ValueError("retention_seconds must be positive when set")
        self._redis = client
        self._prefix = key_prefix
        self._retention_ms = int(retention_seconds * 1000) if retention_seconds else 0
        self._owns_client = owns_client
        self._append = client.register_script(_APPEND)
        self._append_events = client.register_script(_APPEND_EVENTS)
        self._listeners: list[Callable[[str], None]] = []
        self._get_turn = client.register_script(_GET_TURN)
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        retention_seconds: float | None = None,
        socket_timeout_seconds: float = 2.0,
        retries: int = 2,
        **client_options: Any,
    ) -> RedisConversationStore:
        """A store over a new client for `url` (`redis://`, `rediss://` or `unix://`), closed by `close()`.

        Every command carries `socket_timeout_seconds` and is retried `retries` times on connection errors
        and timeouts with a short backoff (redis-py's default backs off for seconds), so a hung Redis fails
        the turn after about (retries + 1) times the timeout instead of blocking it. Every command here is
        safe to re-send: reads are reads, a re-sent append finds its own turn id (→ `DuplicateTurnError`,
        which the turn answers from the store), a re-sent acquire finds its own holder, and release is a
        compare-and-delete.
        """
        options: dict[str, Any] = {
            "socket_timeout": socket_timeout_seconds,
            "socket_connect_timeout": socket_timeout_seconds,
            "health_check_interval": 30,
            "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), retries),
            **client_options,
        }
        client = Redis.from_url(url, **options)
        return cls(client, key_prefix=key_prefix, retention_seconds=retention_seconds, owns_client=True)

    def _key(self, conversation_id: str, part: str) -> str:
        return f"{self._prefix}{{{conversation_id}}}:{part}"

    async def load(self, conversation_id: str) -> Conversation:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.lrange(self._key(conversation_id, "turns"), 0, -1)
            pipe.get(self._key(conversation_id, "customer"))
            turns, customer = await _available(pipe.execute())
        return Conversation(
            conversation_id=conversation_id,
            customer_id=_text(customer) if customer is not None else "",
            turns=tuple(TurnResult.from_json(_text(item)) for item in turns),
        )

    async def get_turn(self, conversation_id: str, turn_id: str) -> TurnResult | None:
        stored = await _available(
            self._get_turn(
                keys=[self._key(conversation_id, "turns"), self._key(conversation_id, "index")],
                args=[turn_id],
            )
        )
        return TurnResult.from_json(_text(stored)) if stored else None

    async def append_turn(self, turn: TurnResult, customer_id: str = "", release_holder: str = "") -> None:
        count = await _available(
            self._append(
                keys=[
                    self._key(turn.conversation_id, "turns"),
                    self._key(turn.conversation_id, "index"),
                    self._key(turn.conversation_id, "customer"),
                    *self._event_keys(turn.conversation_id),
                    self._key(turn.conversation_id, "lock"),
                ],
                args=[
                    turn.turn_id,
                    turn.to_json(),
                    customer_id,
                    self._retention_ms,
                    _encode_events(events_of_turn(turn), time.time()),
                    release_holder,
                ],
            )
        )
        if int(count) == 0:
            raise DuplicateTurnError(f"turn {turn.turn_id!r} already stored")
        await self._announce(turn.conversation_id)

    async def acquire_lock(self, conversation_id: str, holder: str, lease_seconds: float) -> bool:
        key = self._key(conversation_id, "lock")
        lease_ms = max(1, int(lease_seconds * 1000))
        if await _available(self._redis.set(key, holder, nx=True, px=lease_ms)):
            return True
        # A SET whose reply was lost and which the client re-sent finds the lease already ours.
        current = await _available(self._redis.get(key))
        return current is not None and _text(current) == holder

    async def renew_lock(self, conversation_id: str, holder: str, lease_seconds: float) -> bool:
        lease_ms = max(1, int(lease_seconds * 1000))
        renewed = await _available(
            self._renew(keys=[self._key(conversation_id, "lock")], args=[holder, lease_ms])
        )
        return bool(int(renewed))

    async def release_lock(self, conversation_id: str, holder: str) -> None:
        released = await _available(self._release(keys=[self._key(conversation_id, "lock")], args=[holder]))
        if not int(released):
            logger.warning(
                "conversation lock was no longer held at release (lease expired?)",
                extra={"conversation_id": conversation_id},
            )

    # --- the event log (conversation_events.EventLog) -----------------------------------------------------

    def _event_keys(self, conversation_id: str) -> list[str]:
        return [self._key(conversation_id, part) for part in ("events", "eventseq", "eventkeys")]

    @property
    def _feed_key(self) -> str:
        return f"{self._prefix}events-feed"

    def add_listener(self, listener: Callable[[str], None]) -> None:
        self._listeners.append(listener)

    async def _announce(self, conversation_id: str) -> None:
        """Wakes this process's streams at once and other replicas' at their next poll of the feed (a hint:
        the conversation's own stream is the log; a lost hint delays a remote stream by one heartbeat)."""
        for listener in self._listeners:
            listener(conversation_id)
        try:
            await self._redis.xadd(
                self._feed_key, {"c": conversation_id}, maxlen=FEED_MAXLEN, approximate=True
            )
        except redis_errors.RedisError as error:
            logger.warning("could not announce conversation events", extra={"error": type(error).__name__})

    async def conversation_owner(self, conversation_id: str) -> str | None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.exists(self._key(conversation_id, "turns"))
            pipe.get(self._key(conversation_id, "customer"))
            exists, customer = await _available(pipe.execute())
        if not exists:
            return None
        return _text(customer) if customer is not None else ""

    async def append_events(
        self, conversation_id: str, events: Sequence[NewEvent], customer_id: str | None = None
    ) -> list[ConversationEvent]:
        now = time.time()
        offsets = await _available(
            self._append_events(
                keys=[
                    self._key(conversation_id, "turns"),
                    self._key(conversation_id, "customer"),
                    *self._event_keys(conversation_id),
                ],
                args=[
                    _encode_events(events, now),
                    "0" if customer_id is None else "1",
                    self._retention_ms,
                    customer_id or "",
                ],
            )
        )
        if not offsets:
            return []
        appended = await self.read_events(conversation_id, int(offsets[0]) - 1, len(offsets))
        await self._announce(conversation_id)
        return appended

    async def read_events(
        self, conversation_id: str, after_offset: int, limit: int
    ) -> list[ConversationEvent]:
        entries = await _available(
            self._redis.xrange(
                self._key(conversation_id, "events"), f"{after_offset + 1}-0", "+", count=limit
            )
        )
        events = []
        for entry_id, fields in entries:
            values = {_text(key): _text(value) for key, value in fields.items()}
            events.append(
                ConversationEvent(
                    conversation_id,
                    int(_text(entry_id).split("-", 1)[0]),
                    values["k"],
                    json.loads(values["d"]),
                    float(values["t"]),
                )
            )
        return events

    async def end_offset(self, conversation_id: str) -> int:
        value = await _available(self._redis.get(self._key(conversation_id, "eventseq")))
        return int(value) if value is not None else 0

    @property
    def feed_start(self) -> str:
        return "0-0"

    async def changed_since(self, cursor: str) -> tuple[str, set[str]]:
        if not cursor:
            last = await _available(self._redis.xrevrange(self._feed_key, "+", "-", count=1))
            return (_text(last[0][0]) if last else "0-0"), set()
        entries = await _available(self._redis.xrange(self._feed_key, f"({cursor}", "+", count=10000))
        if not entries:
            return cursor, set()
        changed = {_text(fields.get(b"c", fields.get("c", b""))) for _, fields in entries}
        return _text(entries[-1][0]), changed

    async def get_cursor(self, name: str) -> int:
        value = await _available(self._redis.get(f"{self._prefix}cursor:{name}"))
        return int(value) if value is not None else 0

    async def set_cursor(self, name: str, value: int) -> None:
        await _available(self._redis.set(f"{self._prefix}cursor:{name}", value))

    async def close(self) -> None:
        if self._owns_client:
            await self._redis.aclose()


def _encode_events(events: Sequence[NewEvent], now: float) -> str:
    return json.dumps(
        [
            [
                event.kind,
                json.dumps(event.data, ensure_ascii=False, separators=(",", ":")),
                event.source_key,
                repr(event.create_time or now),
            ]
            for event in events
        ],
        ensure_ascii=False,
    )


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value

"""Transcript retention on SQLite (CONVERSATION_RETENTION_SECONDS): idle conversations past the retention are
purged when the store opens and then periodically on writes; active ones are kept."""

from __future__ import annotations

from pathlib import Path

from agent_service.adapters.sqlite_store import MIN_PURGE_INTERVAL_SECONDS, SqliteConversationStore
from agent_service.domain import TurnResult

DAY = 86_400.0


async def test_idle_conversations_are_purged_at_start_and_on_later_writes(tmp_path: Path) -> None:
    now = [1_700_000_000.0]
    path = tmp_path / "agent.sqlite3"
    store = SqliteConversationStore(path, clock=lambda: now[0])
    await store.append_turn(TurnResult("old", "t1", "hi", create_time=now[0]), customer_id="cust-1")
    await store.append_turn(TurnResult("active", "t1", "hi", create_time=now[0]), customer_id="cust-1")
    now[0] += 20 * DAY
    await store.append_turn(TurnResult("active", "t2", "again", create_time=now[0]))
    await store.close()

    reopened = SqliteConversationStore(path, clock=lambda: now[0], retention_seconds=7 * DAY)  # purges now
    assert (await reopened.load("old")).turns == () and (await reopened.load("old")).customer_id == ""
    assert len((await reopened.load("active")).turns) == 2

    await reopened.append_turn(TurnResult("later", "t1", "hi", create_time=now[0]))
    now[0] += 8 * DAY + MIN_PURGE_INTERVAL_SECONDS
    await reopened.append_turn(TurnResult("fresh", "t1", "hi", create_time=now[0]))  # this write purges
    assert (await reopened.load("active")).turns == () and (await reopened.load("later")).turns == ()
    assert len((await reopened.load("fresh")).turns) == 1
    assert await reopened.purge_expired() == 0
    await reopened.close()

"""The ConversationStore contract, run against SQLite (the reference) and Redis alike.

`make_store()` opens another store over the same backing, so "two stores" behave like two agent replicas.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from agent_service.domain import (
    EscalationInfo,
    Flag,
    Source,
    ToolCallRecord,
    TurnResult,
    UsageInfo,
)
from agent_service.errors import DuplicateTurnError
from tests.scaling.conftest import StoreFactory


def full_turn(conversation_id: str = "conv-1", turn_id: str = "t1", message: str = "hi") -> TurnResult:
    """A turn with every field set, so a lossy serialisation shows up."""
    return TurnResult(
        conversation_id=conversation_id,
        turn_id=turn_id,
        user_message=message,
        reply="Your order ORD-12345 shipped — ünïcødé ✓",
        tool_calls=(
            ToolCallRecord(
                id="call_1",
                name="lookup_order_status",
                arguments_json='{"order_id": "ORD-12345"}',
                result_json='{"status": "shipped"}',
            ),
            ToolCallRecord(id="call_2", name="nope", arguments_json="{", result_json="{}", is_error=True),
        ),
        escalation=EscalationInfo(
            ticket_id="TCK-1", priority="high", reason_code="billing_dispute", detail="x"
        ),
        sources=(Source(doc_id="returns.md", title="Returns", chunk_id="c1", distance=0.31),),
        flags=(Flag(stage="input", rule="prompt_injection", detail="ignore previous"),),
        state="pending_human",
        usage=UsageInfo(
            model="gpt-4o", model_calls=2, prompt_tokens=120, completion_tokens=30, fallback=True
        ),
        knowledge_gap=True,
        assignee="alice",
        ticket_id="TCK-1",
        create_time=1_700_000_000.25,
    )


async def test_unknown_conversation_is_empty(make_store: StoreFactory) -> None:
    store = make_store()
    conversation = await store.load("nobody")
    assert conversation.conversation_id == "nobody"
    assert conversation.customer_id == ""
    assert conversation.turns == ()
    assert await store.get_turn("nobody", "t1") is None


async def test_turn_round_trips_exactly(make_store: StoreFactory) -> None:
    store = make_store()
    turn = full_turn()
    await store.append_turn(turn, customer_id="cust-001")
    loaded = await store.load("conv-1")
    assert loaded.turns == (turn,)
    assert loaded.customer_id == "cust-001"
    assert await store.get_turn("conv-1", "t1") == turn


async def test_turns_load_oldest_first_and_by_turn_id(make_store: StoreFactory) -> None:
    store = make_store()
    ids = [f"t{index}" for index in range(12)]
    for index, turn_id in enumerate(ids):
        await store.append_turn(TurnResult("conv-1", turn_id, user_message=f"m{index}", reply=f"r{index}"))
    loaded = await store.load("conv-1")
    assert [turn.turn_id for turn in loaded.turns] == ids
    assert [turn.user_message for turn in loaded.turns] == [f"m{index}" for index in range(12)]
    stored = await store.get_turn("conv-1", "t7")
    assert stored is not None and stored.reply == "r7"
    assert await store.get_turn("conv-1", "t99") is None


async def test_duplicate_turn_id_raises_and_changes_nothing(make_store: StoreFactory) -> None:
    store = make_store()
    await store.append_turn(TurnResult("conv-1", "t1", user_message="first", reply="one"))
    with pytest.raises(DuplicateTurnError):
        await store.append_turn(TurnResult("conv-1", "t1", user_message="again", reply="two"), "cust-9")
    loaded = await store.load("conv-1")
    assert [(turn.turn_id, turn.reply) for turn in loaded.turns] == [("t1", "one")]
    # The refused append did not bind the conversation either.
    assert loaded.customer_id == ""


async def test_storing_a_turn_releases_its_holders_lock_and_only_that(make_store: StoreFactory) -> None:
    store = make_store()
    assert await store.acquire_lock("conv-1", "turn-a", 30)
    await store.append_turn(TurnResult("conv-1", "t1", reply="one"), release_holder="someone-else")
    assert not await store.acquire_lock("conv-1", "turn-b", 30)  # another holder's name releases nothing
    await store.append_turn(TurnResult("conv-1", "t2", reply="two"), release_holder="turn-a")
    assert await store.acquire_lock("conv-1", "turn-b", 30)  # released with the stored turn
    with pytest.raises(DuplicateTurnError):
        await store.append_turn(TurnResult("conv-1", "t2", reply="again"), release_holder="turn-b")
    assert not await store.acquire_lock("conv-1", "turn-c", 30)  # a refused duplicate keeps the lock


async def test_same_turn_id_in_another_conversation_is_fine(make_store: StoreFactory) -> None:
    store = make_store()
    await store.append_turn(TurnResult("conv-1", "t1", reply="a"))
    await store.append_turn(TurnResult("conv-2", "t1", reply="b"))
    first, second = await store.get_turn("conv-1", "t1"), await store.get_turn("conv-2", "t1")
    assert first is not None and first.reply == "a"
    assert second is not None and second.reply == "b"


async def test_customer_binding_is_first_non_empty_and_sticks(make_store: StoreFactory) -> None:
    store = make_store()
    # A system note names no customer: the conversation stays unbound.
    await store.append_turn(TurnResult("conv-1", "handback-1", system_note="handed back"))
    assert (await store.load("conv-1")).customer_id == ""
    await store.append_turn(TurnResult("conv-1", "t1"), customer_id="cust-001")
    await store.append_turn(TurnResult("conv-1", "t2"), customer_id="cust-002")
    loaded = await store.load("conv-1")
    assert loaded.customer_id == "cust-001"
    assert len(loaded.turns) == 3


async def test_concurrent_retries_across_replicas_store_one_turn(make_store: StoreFactory) -> None:
    replicas = [make_store() for _ in range(4)]
    turn = TurnResult("conv-1", "t1", user_message="once", reply="stored once")
    outcomes = await asyncio.gather(
        *(replica.append_turn(turn, "cust-001") for replica in replicas for _ in range(3)),
        return_exceptions=True,
    )
    assert sum(1 for outcome in outcomes if outcome is None) == 1
    assert all(isinstance(outcome, DuplicateTurnError) for outcome in outcomes if outcome is not None)
    for replica in replicas:
        assert (await replica.load("conv-1")).turns == (turn,)


async def test_concurrent_distinct_turns_are_all_kept_and_indexed(make_store: StoreFactory) -> None:
    first, second = make_store(), make_store()
    turns = [TurnResult("conv-1", f"t{index}", reply=str(index)) for index in range(20)]
    await asyncio.gather(
        *((first if index % 2 else second).append_turn(turn) for index, turn in enumerate(turns))
    )
    loaded = await first.load("conv-1")
    assert sorted(turn.turn_id for turn in loaded.turns) == sorted(turn.turn_id for turn in turns)
    for turn in turns:
        assert await second.get_turn("conv-1", turn.turn_id) == turn


async def test_lock_has_one_holder_across_replicas(make_store: StoreFactory) -> None:
    first, second = make_store(), make_store()
    assert await first.acquire_lock("conv-1", "replica-a", 30)
    assert not await second.acquire_lock("conv-1", "replica-b", 30)
    assert not await first.acquire_lock("conv-1", "replica-a-again", 30)
    # Other conversations are independent.
    assert await second.acquire_lock("conv-2", "replica-b", 30)
    # Only the holder releases.
    await second.release_lock("conv-1", "replica-b")
    assert not await second.acquire_lock("conv-1", "replica-b", 30)
    await first.release_lock("conv-1", "replica-a")
    assert await second.acquire_lock("conv-1", "replica-b", 30)


async def test_contended_lock_has_exactly_one_winner(make_store: StoreFactory) -> None:
    replicas = [make_store() for _ in range(3)]
    won = await asyncio.gather(
        *(
            replica.acquire_lock("conv-1", f"holder-{index}-{n}", 30)
            for index, replica in enumerate(replicas)
            for n in range(4)
        )
    )
    assert won.count(True) == 1


async def test_lease_expires_when_the_holder_dies(make_store: StoreFactory) -> None:
    crashed, survivor = make_store(), make_store()
    assert await crashed.acquire_lock("conv-1", "crashed-replica", 1.0)
    started = time.monotonic()
    assert not await survivor.acquire_lock("conv-1", "survivor", 30)
    deadline = started + 10
    while not await survivor.acquire_lock("conv-1", "survivor", 30):
        assert time.monotonic() < deadline, "the lease never expired"
        await asyncio.sleep(0.05)
    assert time.monotonic() - started >= 0.9
    # The crashed holder's late release must not free the survivor's lease.
    await crashed.release_lock("conv-1", "crashed-replica")
    assert not await crashed.acquire_lock("conv-1", "someone-else", 30)


async def test_renewal_keeps_the_lease_past_its_first_expiry_for_its_holder_only(
    make_store: StoreFactory,
) -> None:
    holder, other = make_store(), make_store()
    assert await holder.acquire_lock("conv-1", "turn-a", 0.6)
    assert not await other.renew_lock("conv-1", "turn-b", 30)  # not its lease
    for _ in range(4):  # 1.2 s in all: twice the lease
        await asyncio.sleep(0.3)
        assert await holder.renew_lock("conv-1", "turn-a", 0.6)
        assert not await other.acquire_lock("conv-1", "turn-b", 30)
    await holder.release_lock("conv-1", "turn-a")
    assert not await holder.renew_lock("conv-1", "turn-a", 30)  # released: nothing to renew
    assert await other.acquire_lock("conv-1", "turn-b", 30)


async def test_close_is_clean(make_store: StoreFactory) -> None:
    store = make_store()
    await store.append_turn(TurnResult("conv-1", "t1"))
    await store.close()
    # The backing survives the store: a new one sees the turn.
    assert [turn.turn_id for turn in (await make_store().load("conv-1")).turns] == ["t1"]

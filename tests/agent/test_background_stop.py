"""The agent's background followers stop when asked, even when grpc.aio turns the cancellation of the task
awaiting an RPC into an AioRpcError(CANCELLED) — the error each loop otherwise logs and retries (a shutdown, and
a test's teardown, would then wait forever). The RPC is the one part replaced here: it blocks until cancelled,
then fails the way grpc.aio does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from agent_service.adapters.ticket_feed import TicketEventFollower
from agent_service.adapters.webhook_relay import ConversationEventRelay

CANCELLED = grpc.aio.AioRpcError(
    grpc.StatusCode.CANCELLED, grpc.aio.Metadata(), grpc.aio.Metadata(), "Locally cancelled by application!"
)


class BlockingStub:
    """Each call blocks until its task is cancelled, then raises AioRpcError(CANCELLED)."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()

    async def _block(self) -> None:
        self.entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise CANCELLED from None

    async def PublishConversationEvents(self, request: Any, timeout: float) -> Any:  # noqa: N802, ASYNC109
        await self._block()

    def WatchTicketEvents(self, request: Any) -> AsyncIterator[Any]:  # noqa: N802
        async def stream() -> AsyncIterator[Any]:
            await self._block()
            yield None

        return stream()


class Store:
    """Just enough of the conversation store and event log for the loops to reach their RPC."""

    feed_start = "0"

    async def acquire_lock(self, conversation_id: str, holder: str, lease_seconds: float) -> bool:
        return True

    async def renew_lock(self, conversation_id: str, holder: str, lease_seconds: float) -> bool:
        return True

    async def release_lock(self, conversation_id: str, holder: str) -> None:
        return None

    async def get_cursor(self, name: str) -> int:
        return 0


async def test_the_webhook_relay_stops_inside_an_rpc() -> None:
    channel = grpc.aio.insecure_channel("127.0.0.1:9")
    relay = ConversationEventRelay(channel, Store(), Store())  # type: ignore[arg-type]
    stub = BlockingStub()
    relay._stub = stub  # type: ignore[assignment]
    relay.start()
    await stub.entered.wait()
    await asyncio.wait_for(relay.stop(), timeout=10)  # a bound so a regression fails instead of hanging
    await channel.close()


async def test_the_ticket_feed_follower_stops_inside_its_stream() -> None:
    channel = grpc.aio.insecure_channel("127.0.0.1:9")
    follower = TicketEventFollower(channel, Store())  # type: ignore[arg-type]
    stub = BlockingStub()
    follower._stub = stub  # type: ignore[assignment]
    follower.start()
    await stub.entered.wait()
    await asyncio.wait_for(follower.stop(), timeout=10)
    await channel.close()

"""A task that runs one loop in the background until `stop()` (the ticket-feed follower, the webhook relay).

grpc.aio turns the cancellation of a task awaiting an RPC into AioRpcError(CANCELLED), which a retrying loop
takes for a failed call and retries: so `stop()` sets `stopping` as well as cancelling, and a loop checks
`stopping` before it waits to try again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class BackgroundLoop:
    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self.stopping = False

    def _start(self, loop: Coroutine[Any, Any, None], name: str) -> None:
        self._task = asyncio.create_task(loop, name=name)

    async def _stop_loop(self) -> None:
        self.stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

"""Ticket retention: resolved tickets older than `TICKET_RETENTION_SECONDS` are deleted with their messages,
once when the service starts and then periodically. Open and assigned tickets are never purged."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from tools_service.adapters.sqlite_tickets import SqliteTicketStore

logger = logging.getLogger(__name__)

MIN_PURGE_INTERVAL_SECONDS = 60.0
MAX_PURGE_INTERVAL_SECONDS = 3600.0


async def purge_once(store: SqliteTicketStore, retention_seconds: float) -> int:
    purged = await store.purge_resolved(time.time() - retention_seconds)
    if purged:
        logger.info("purged resolved tickets past retention", extra={"tickets": purged})
    return purged


async def start_retention(
    store: SqliteTicketStore, retention_seconds: float
) -> Callable[[], Awaitable[None]]:
    """Purges now, then every tenth of the retention (between a minute and an hour); returns the stop."""
    await purge_once(store, retention_seconds)
    interval = min(MAX_PURGE_INTERVAL_SECONDS, max(MIN_PURGE_INTERVAL_SECONDS, retention_seconds / 10))

    async def loop() -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await purge_once(store, retention_seconds)
            except Exception:  # a failed purge is retried at the next interval; serving goes on
                logger.exception("ticket purge failed")

    task = asyncio.create_task(loop())

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return stop

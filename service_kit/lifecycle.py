"""A started gRPC server and the one way it stops: NOT_SERVING → drain → stop → close what it used."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health

from service_kit.grpc_server import bind, set_status

logger = logging.getLogger(__name__)

# Closes one resource the server used (a channel, a store, a model client, a background task).
Close = Callable[[], Awaitable[object]]


@dataclass(kw_only=True, eq=False)
class StartedServer:
    """A server that is listening on `port` and reports SERVING.

    `closers` are closed in reverse order (last opened, first closed) once the server has stopped, so nothing
    a handler still needs during the drain goes away under it. `on_drain` run first, when the drain starts:
    they end calls that would otherwise never finish by themselves (open-ended streams), so the drain does
    not wait out its whole grace period for them. Services subclass it to expose the handles their tests and
    tools reach into.
    """

    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int
    closers: Sequence[Close] = ()
    on_drain: Sequence[Close] = ()
    _stopped: bool = field(default=False, init=False)

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING for every service name, drain in-flight calls for `grace` seconds (None: cancel them
        at once), stop, then close the resources. A second call does nothing."""
        if self._stopped:
            return
        self._stopped = True
        # Also makes later health updates (a dependency watcher, a store probe) no-ops.
        await self.health.enter_graceful_shutdown()
        await close_all(self.on_drain)
        await self.server.stop(grace)
        await close_all(self.closers)


async def close_all(closers: Sequence[Close]) -> None:
    """Closes each resource, last opened first; one that fails is logged and the rest are still closed."""
    for close in reversed(closers):
        try:
            await close()
        except Exception:  # one failing close must not keep the others open
            logger.exception("closing a resource failed during shutdown")


@contextlib.asynccontextmanager
async def closing_on_error(closers: list[Close]) -> AsyncIterator[list[Close]]:
    """`async with closing_on_error([]) as closers:` around a `start_server` body that appends each resource's
    close as it opens it: if starting fails part-way, what was already opened is closed before the error
    propagates. On success the list goes to the StartedServer, which closes it when the server stops."""
    try:
        yield closers
    except BaseException:
        await close_all(closers)
        raise


async def start_serving(
    server: grpc.aio.Server,
    health_servicer: health.aio.HealthServicer,
    service_names: Sequence[str],
    address: str,
) -> int:
    """Binds `address` (port 0 allowed), starts the server and reports SERVING; returns the bound port."""
    port = bind(server, address)
    await server.start()
    await set_status(health_servicer, service_names, serving=True)
    return port

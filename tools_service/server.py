"""tools_service process: config → logging → adapters → gRPC server → serve until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health

from service_kit.env import ConfigError
from service_kit.grpc_server import bind, new_server, serve_until_signal, set_status
from service_kit.jsonlog import configure_logging
from service_kit.observability import setup_observability
from support.v1 import tools_pb2, tools_pb2_grpc
from tools_service.adapters.http_orders import HttpOrderBackend
from tools_service.adapters.sqlite_db import SqliteDatabase
from tools_service.adapters.sqlite_orders import SqliteOrderBackend
from tools_service.adapters.sqlite_tickets import SqliteTicketStore
from tools_service.config import Config
from tools_service.limits import CallLimiter, Limits
from tools_service.orders import OrderBackend, OrderService
from tools_service.servicer import ToolsServicer
from tools_service.tickets import TicketService
from tools_service.tools import ToolRunner

logger = logging.getLogger(__name__)

SERVICE_NAME = tools_pb2.DESCRIPTOR.services_by_name["ToolsService"].full_name


@dataclass
class StartedServer:
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int
    db: SqliteDatabase
    order_backend: OrderBackend
    _stopped: bool = False

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING, drain for `grace` seconds, close the backends. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        await set_status(self.health, [SERVICE_NAME], serving=False)
        await self.server.stop(grace)
        await self.order_backend.close()
        await self.db.close()


async def start_server(config: Config, order_backend: OrderBackend | None = None) -> StartedServer:
    """Opens the SQLite store (seeding demo orders when empty), starts serving on config.addr (port 0 is fine).

    `order_backend` replaces the configured one (tests plug a hung or failing backend here).
    """
    db = SqliteDatabase(config.db_path)
    await db.open()
    if order_backend is None:
        if config.order_backend == "http":
            assert config.order_api_url is not None
            order_backend = HttpOrderBackend(
                config.order_api_url,
                auth_header=config.order_api_auth_header,
                timeout_seconds=config.order_api_timeout_seconds,
                retries=config.order_api_retries,
            )
        else:
            sqlite_orders = SqliteOrderBackend(db)
            if config.seed_demo_data and (seeded := await sqlite_orders.seed_if_empty()):
                logger.info("seeded %d demo orders", seeded)
            order_backend = sqlite_orders
    orders = OrderService(order_backend, config.order_id_pattern, config.tool_timeout_seconds)
    tickets = TicketService(SqliteTicketStore(db), config.tool_timeout_seconds)
    limiter = CallLimiter(
        Limits(
            per_conversation=config.limit_per_conversation,
            per_customer_per_minute=config.limit_per_customer_per_minute,
            identical_calls=config.limit_identical_calls,
        )
    )
    runner = ToolRunner(orders, tickets, limiter, config.order_id_pattern)
    server, health_servicer = new_server([SERVICE_NAME])
    tools_pb2_grpc.add_ToolsServiceServicer_to_server(ToolsServicer(runner, orders, tickets), server)  # type: ignore[no-untyped-call]
    port = bind(server, config.addr)
    await server.start()
    await set_status(health_servicer, [SERVICE_NAME], serving=True)
    return StartedServer(server=server, health=health_servicer, port=port, db=db, order_backend=order_backend)


async def _serve(config: Config) -> None:
    started = await start_server(config)
    logger.info(
        "tools_service listening",
        extra={"addr": config.addr, "port": started.port, "order_backend": config.order_backend},
    )
    try:
        await serve_until_signal(started.server, started.health)
    finally:
        await started.order_backend.close()
        await started.db.close()


def main() -> None:
    try:
        config = Config.from_env()
    except ConfigError as error:
        print(f"tools_service: configuration error: {error}", file=sys.stderr)
        sys.exit(2)
    configure_logging("tools_service", config.log_level)
    obs = setup_observability("tools_service")
    try:
        asyncio.run(_serve(config))
    finally:
        obs.shutdown()

"""tools_service process: the SQLite store and order backend → the gRPC server; `main` runs it until a signal."""

from __future__ import annotations

import logging

from service_kit.grpc_server import new_server
from service_kit.lifecycle import StartedServer, closing_on_error, start_serving
from service_kit.service_main import run_service
from support.v1 import tools_pb2, tools_pb2_grpc
from tools_service.actions import ActionDesk
from tools_service.adapters.http_orders import HttpOrderBackend
from tools_service.adapters.sqlite_actions import SqliteActionStore
from tools_service.adapters.sqlite_db import SqliteDatabase
from tools_service.adapters.sqlite_orders import SqliteOrderBackend
from tools_service.adapters.sqlite_tickets import SqliteTicketStore
from tools_service.config import Config
from tools_service.http_tool import HttpTools
from tools_service.limits import CallLimiter, Limits, WindowLimiter
from tools_service.orders import OrderBackend, OrderService, OrderWriter
from tools_service.retention import start_retention
from tools_service.servicer import PERMISSIONS, ToolsServicer
from tools_service.tickets import TicketFeed, TicketService
from tools_service.tool_catalog import load_tools
from tools_service.tools import ToolRunner
from tools_service.webhooks import Outbox, WebhookDeliverer

__all__ = ["SERVICE_NAME", "StartedServer", "main", "start_server"]

logger = logging.getLogger(__name__)

SERVICE_NAME = tools_pb2.DESCRIPTOR.services_by_name["ToolsService"].full_name


async def _configured_order_backend(config: Config, db: SqliteDatabase) -> OrderBackend:
    if config.order_backend == "http":
        assert config.order_api_url is not None
        return HttpOrderBackend(
            config.order_api_url,
            auth_header=config.order_api_auth_header,
            timeout_seconds=config.order_api_timeout_seconds,
            retries=config.order_api_retries,
        )
    sqlite_orders = SqliteOrderBackend(db, return_window_days=config.return_window_days)
    if config.seed_demo_data and (seeded := await sqlite_orders.seed_if_empty()):
        logger.info("seeded %d demo orders", seeded)
    return sqlite_orders


async def start_server(config: Config, order_backend: OrderBackend | None = None) -> StartedServer:
    """Opens the SQLite store (seeding demo orders when empty), starts serving on config.addr (port 0 is fine).

    `order_backend` replaces the configured one (tests plug a hung or failing backend here). If starting fails
    part-way, what was opened is closed again.
    """
    async with closing_on_error([]) as closers:
        specs = load_tools(config.tools_file, order_id_pattern=config.order_id_pattern)
        db = SqliteDatabase(config.db_path)
        await db.open()
        closers.append(db.close)
        if order_backend is None:
            order_backend = await _configured_order_backend(config, db)
        closers.append(order_backend.close)
        orders = OrderService(order_backend, config.order_id_pattern, config.tool_timeout_seconds)
        ticket_store = SqliteTicketStore(db, outbox_urls=config.webhooks.urls)
        await ticket_store.ensure_schema()
        outbox = Outbox(db)
        deliverer = WebhookDeliverer(outbox, config.webhooks)
        ticket_store.add_listener(deliverer.wake)
        deliverer.start()
        closers.append(deliverer.stop)
        if config.ticket_retention_seconds is not None:
            closers.append(await start_retention(ticket_store, config.ticket_retention_seconds))
        tickets = TicketService(
            ticket_store,
            config.tool_timeout_seconds,
            max_messages=config.ticket_max_messages,
            escalation_limiter=WindowLimiter(
                config.limit_escalations_per_customer_per_minute,
                "escalations_per_customer_per_minute",
                "new tickets",
            ),
        )
        limiter = CallLimiter(
            Limits(
                per_conversation=config.limit_per_conversation,
                per_customer_per_minute=config.limit_per_customer_per_minute,
                identical_calls=config.limit_identical_calls,
            )
        )
        desk = ActionDesk(
            SqliteActionStore(db),
            ttl_seconds=config.action_ttl_seconds,
            writes_per_hour=config.write_actions_per_customer_per_hour,
        )
        if interrupted := await desk.recover_interrupted():
            logger.warning("%d write actions were interrupted by a stop: now unknown", interrupted)
        closers.append(desk.close)
        http_tools = HttpTools()
        closers.append(http_tools.close)
        runner = ToolRunner(
            orders,
            tickets,
            limiter,
            config.order_id_pattern,
            specs=specs,
            desk=desk,
            order_writer=order_backend if isinstance(order_backend, OrderWriter) else None,
            http_tools=http_tools,
            return_window_days=config.return_window_days,
        )
        server, health_servicer = new_server(
            [SERVICE_NAME], config.auth.for_service(PERMISSIONS), tls=config.tls, limits=config.grpc_limits
        )
        tools_pb2_grpc.add_ToolsServiceServicer_to_server(
            ToolsServicer(
                runner,
                orders,
                tickets,
                feed=TicketFeed(ticket_store),
                # No webhook URLs: nothing to list, redeliver or publish.
                outbox=outbox if config.webhooks.urls else None,
                desk=desk,
            ),
            server,
        )  # type: ignore[no-untyped-call]
        port = await start_serving(server, health_servicer, [SERVICE_NAME], config.addr)
    logger.info(
        "tools_service listening",
        extra={"addr": config.addr, "port": port, "order_backend": config.order_backend},
    )
    return StartedServer(server=server, health=health_servicer, port=port, closers=closers)


def main() -> None:
    run_service("tools_service", Config.from_env, start_server)

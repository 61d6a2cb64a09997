"""agent_service process: the adapters and the turn runner → the gRPC server; `main` runs it until a signal."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from agent_service import guardrails
from agent_service.adapters.channels import open_channel
from agent_service.adapters.offline_model import OfflineModel
from agent_service.adapters.openai_model import OpenAIModel
from agent_service.adapters.retrieval_client import RetrievalClient
from agent_service.adapters.sqlite_store import SqliteConversationStore
from agent_service.adapters.ticket_feed import TicketEventFollower
from agent_service.adapters.tools_client import ToolsClient
from agent_service.adapters.webhook_relay import ConversationEventRelay
from agent_service.breaker import CircuitBreaker, FallbackModel
from agent_service.config import Config
from agent_service.conversation_events import ConversationWatcher, EventHub, EventLog
from agent_service.conversation_store import ConversationStore
from agent_service.dependency_health import DependencyWatcher
from agent_service.escalation_policy import EscalationPolicy, PolicyConfigError, PolicyRules
from agent_service.model_port import ModelPort
from agent_service.servicer import PERMISSIONS, AgentServicer
from agent_service.turn import TurnRunner
from service_kit import lifecycle
from service_kit.grpc_server import new_server
from service_kit.lifecycle import Close, closing_on_error, start_serving
from service_kit.service_main import run_service
from support.v1 import agent_pb2, agent_pb2_grpc, retrieval_pb2, tools_pb2

logger = logging.getLogger(__name__)

SERVICE_NAME: str = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
TOOLS_SERVICE: str = tools_pb2.DESCRIPTOR.services_by_name["ToolsService"].full_name
RETRIEVAL_SERVICE: str = retrieval_pb2.DESCRIPTOR.services_by_name["RetrievalService"].full_name


@dataclass(kw_only=True, eq=False)
class StartedServer(lifecycle.StartedServer):
    """The agent server, with its turn runner and conversation store (tests look into both)."""

    runner: TurnRunner
    store: ConversationStore


def build_model(config: Config) -> ModelPort:
    """The configured OpenAI-compatible model behind a breaker, or the offline engine alone."""
    offline = OfflineModel()
    if not config.uses_remote_model:
        return offline
    primary = OpenAIModel(
        config.openai_model,
        api_key=config.openai_api_key,
        base_url=config.openai_base_url,
        temperature=config.openai_temperature,
        timeout_seconds=config.model_timeout_seconds,
        max_tokens=config.model_max_tokens,
        max_retries=config.model_max_retries,
        backoff_seconds=config.model_retry_backoff_seconds,
        context_placement=config.model_context_placement,
    )
    breaker = CircuitBreaker(config.breaker_failure_threshold, config.breaker_cooldown_seconds)
    return FallbackModel(primary, offline, breaker)


def build_store(config: Config) -> ConversationStore:
    """Redis when REDIS_URL is set (stateless replicas), else SQLite at $DATA_DIR/agent.sqlite3."""
    if config.redis_url:
        from agent_service.adapters.redis_store import RedisConversationStore

        return RedisConversationStore.from_url(
            config.redis_url,
            key_prefix=config.redis_key_prefix,
            retention_seconds=config.conversation_retention_seconds,
        )
    return SqliteConversationStore(config.db_path, retention_seconds=config.conversation_retention_seconds)


async def start_server(config: Config, model: ModelPort | None = None) -> StartedServer:
    """Builds the adapters, binds `config.addr` (port 0 allowed), starts serving and reports SERVING.

    The escalation rules are read here, once, before anything listens (a bad file raises PolicyConfigError).
    If starting fails part-way, what was opened is closed again.
    """
    policy = EscalationPolicy(PolicyRules.load(config.escalation_rules_path))
    async with closing_on_error([]) as closers:
        retrieval_channel = open_channel(config.retrieval_addr, config.auth, config.tls, config.grpc_limits)
        closers.append(retrieval_channel.close)
        tools_channel = open_channel(config.tools_addr, config.auth, config.tls, config.grpc_limits)
        closers.append(tools_channel.close)
        store = build_store(config)
        closers.append(store.close)
        model = model or build_model(config)
        closers.append(model.aclose)
        runner = TurnRunner(
            settings=config.turn_settings,
            model=model,
            retrieval=RetrievalClient(
                retrieval_channel,
                top_k=config.retrieval_top_k,
                max_distance=config.retrieval_max_distance,
                timeout_seconds=config.retrieval_timeout_seconds,
            ),
            tools=ToolsClient(tools_channel, timeout_seconds=config.tool_call_timeout_seconds),
            store=store,
            policy=policy,
            guardrails=guardrails,
        )
        server, health_servicer = new_server(
            [SERVICE_NAME], config.auth.for_service(PERMISSIONS), tls=config.tls, limits=config.grpc_limits
        )
        conversation_watcher = None
        on_drain: list[Close] = []
        if isinstance(store, EventLog):
            hub = EventHub(store, poll_seconds=config.watch.poll_seconds)
            closers.append(hub.close)
            on_drain.append(hub.drain)
            conversation_watcher = ConversationWatcher(store, hub, config.watch)
            follower = TicketEventFollower(tools_channel, store)
            follower.start()
            closers.append(follower.stop)
            relay = ConversationEventRelay(tools_channel, store, store)
            relay.start()
            closers.append(relay.stop)
        agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentServicer(runner, conversation_watcher), server)  # type: ignore[no-untyped-call]
        port = await start_serving(server, health_servicer, [SERVICE_NAME], config.addr)
        channels = {
            "tools": (tools_channel, TOOLS_SERVICE),
            "retrieval": (retrieval_channel, RETRIEVAL_SERVICE),
        }
        watcher = DependencyWatcher(
            health_servicer,
            SERVICE_NAME,
            {name: channels[name] for name in config.required_dependencies},
            config.dependency_check_seconds,
        )
        watcher.start()
        # The guardrail and escalation models take about 2 s to load: load them beside serving, not in the first
        # customer's turn (which waits for them without holding the event loop).
        warm_up = runner.start_warm_up()
        closers.append(lambda: asyncio.wait_for(asyncio.shield(warm_up), timeout=30))
        closers.append(watcher.stop)
    logger.info(
        "agent_service listening",
        extra={
            "port": port,
            "model": model.name,
            "retrieval_addr": config.retrieval_addr,
            "tools_addr": config.tools_addr,
            "conversation_store": type(store).__name__,
        },
    )
    return StartedServer(
        server=server,
        health=health_servicer,
        port=port,
        closers=closers,
        on_drain=on_drain,
        runner=runner,
        store=store,
    )


def main() -> None:
    run_service("agent_service", Config.from_env, start_server, config_errors=(PolicyConfigError,))

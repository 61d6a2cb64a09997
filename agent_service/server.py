"""agent_service process: config, logging, adapters, the gRPC server and its lifecycle."""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health

from agent_service import guardrails
from agent_service.adapters.channels import open_channel
from agent_service.adapters.offline_model import OfflineModel
from agent_service.adapters.openai_model import OpenAIModel
from agent_service.adapters.retrieval_client import RetrievalClient
from agent_service.adapters.sqlite_store import SqliteConversationStore
from agent_service.adapters.tools_client import ToolsClient
from agent_service.breaker import CircuitBreaker, FallbackModel
from agent_service.config import Config
from agent_service.conversation_store import ConversationStore
from agent_service.dependency_health import DependencyWatcher
from agent_service.escalation_policy import EscalationPolicy, PolicyConfigError, PolicyRules
from agent_service.model_port import ModelPort
from agent_service.servicer import AgentServicer
from agent_service.turn import TurnRunner
from agent_service.turn_contract import TurnSettings
from service_kit.env import ConfigError
from service_kit.grpc_server import bind, new_server, serve_until_signal, set_status
from service_kit.jsonlog import configure_logging
from service_kit.observability import setup_observability
from support.v1 import agent_pb2, agent_pb2_grpc, retrieval_pb2, tools_pb2

logger = logging.getLogger(__name__)

SERVICE_NAME: str = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name
TOOLS_SERVICE: str = tools_pb2.DESCRIPTOR.services_by_name["ToolsService"].full_name
RETRIEVAL_SERVICE: str = retrieval_pb2.DESCRIPTOR.services_by_name["RetrievalService"].full_name


@dataclass
class StartedServer:
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int
    runner: TurnRunner
    model: ModelPort
    store: ConversationStore
    watcher: DependencyWatcher
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    async def stop(self, grace: float | None = None) -> None:
        await self.watcher.stop()
        await set_status(self.health, [SERVICE_NAME], serving=False)
        await self.server.stop(grace)
        await self.close_adapters()

    async def close_adapters(self) -> None:
        await self.watcher.stop()
        for channel in self.channels:
            await channel.close()
        await self.model.aclose()
        await self.store.close()


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
        max_retries=config.model_max_retries,
        backoff_seconds=config.model_retry_backoff_seconds,
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
    return SqliteConversationStore(config.db_path)


async def start_server(config: Config, model: ModelPort | None = None) -> StartedServer:
    """Builds the adapters, binds `config.addr` (port 0 allowed), starts serving and reports SERVING."""
    policy = EscalationPolicy(PolicyRules.load(config.escalation_rules_path))
    retrieval_channel = open_channel(config.retrieval_addr)
    tools_channel = open_channel(config.tools_addr)
    store = build_store(config)
    model = model or build_model(config)
    runner = TurnRunner(
        settings=TurnSettings(
            max_tool_rounds=config.max_tool_rounds,
            max_turns=config.max_turns,
            max_message_chars=config.max_message_chars,
            context_token_budget=config.context_token_budget,
            link_allowlist=config.link_allowlist,
            turn_lease_seconds=config.turn_lease_seconds,
            max_concurrent_turns=config.max_concurrent_turns,
        ),
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
    server, health_servicer = new_server([SERVICE_NAME])
    agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentServicer(runner), server)  # type: ignore[no-untyped-call]
    port = bind(server, config.addr)
    await server.start()
    await set_status(health_servicer, [SERVICE_NAME], serving=True)
    channels = {"tools": (tools_channel, TOOLS_SERVICE), "retrieval": (retrieval_channel, RETRIEVAL_SERVICE)}
    watcher = DependencyWatcher(
        health_servicer,
        SERVICE_NAME,
        {name: channels[name] for name in config.required_dependencies},
        config.dependency_check_seconds,
    )
    watcher.start()
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
        runner=runner,
        model=model,
        store=store,
        watcher=watcher,
        channels=[retrieval_channel, tools_channel],
    )


async def _serve(config: Config) -> None:
    started = await start_server(config)
    try:
        await serve_until_signal(started.server, started.health)
    finally:
        await started.close_adapters()


def main() -> None:
    try:
        config = Config.from_env()
        # Fail fast on a bad rules file too, before anything listens.
        PolicyRules.load(config.escalation_rules_path)
    except (ConfigError, PolicyConfigError) as error:
        print(f"agent_service: configuration error: {error}", file=sys.stderr)
        sys.exit(2)
    configure_logging("agent_service", config.log_level)
    obs = setup_observability("agent_service")
    try:
        asyncio.run(_serve(config))
    finally:
        obs.shutdown()

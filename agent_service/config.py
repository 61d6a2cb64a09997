"""agent_service configuration, read once from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent_service.conversation_events import WatchSettings
from agent_service.prompts import ContextPlacement
from agent_service.turn_contract import TurnSettings
from service_kit.auth import SERVICE, AuthConfig
from service_kit.env import ConfigError, env_float, env_int, env_list, env_opt, env_str
from service_kit.grpc_server import ServerLimits
from service_kit.tls import TlsConfig

DEFAULT_ADDR = "127.0.0.1:50051"
DEFAULT_RETRIEVAL_ADDR = "127.0.0.1:50052"
DEFAULT_TOOLS_ADDR = "127.0.0.1:50053"
# The turn's limits have their defaults in one place, TurnSettings.
_TURN = TurnSettings()


@dataclass(frozen=True)
class Config:
    addr: str = DEFAULT_ADDR
    # Each may be host:port, a comma-separated list of host:port, or a gRPC target such as dns:///name:port.
    retrieval_addr: str = DEFAULT_RETRIEVAL_ADDR
    tools_addr: str = DEFAULT_TOOLS_ADDR
    data_dir: Path = Path("./data")
    log_level: str = "INFO"
    # OpenAI-compatible model; used when either the key or the base URL is set, else the offline engine.
    openai_api_key: str | None = None
    openai_base_url: str | None = None
    openai_model: str = "gpt-4o"
    openai_temperature: float = 0.3
    model_timeout_seconds: float = 30.0
    # Upper bound on the tokens one model call may generate (sent as `max_tokens`).
    model_max_tokens: int = 512
    model_max_retries: int = 2
    model_retry_backoff_seconds: float = 0.25
    # Where the KB context goes in the request (agent_service.prompts.ContextPlacement): auto, separate, system,
    # user.
    model_context_placement: ContextPlacement = ContextPlacement.AUTO
    # Circuit breaker around the configured model.
    breaker_failure_threshold: int = 3
    breaker_cooldown_seconds: float = 30.0
    max_tool_rounds: int = _TURN.max_tool_rounds
    max_turns: int = _TURN.max_turns
    max_message_chars: int = _TURN.max_message_chars
    # Rough token budget for the history sent to the model (system prompt and KB context always kept).
    context_token_budget: int = _TURN.context_token_budget
    retrieval_top_k: int = 4
    # None: the retrieval service's calibrated default.
    retrieval_max_distance: float | None = None
    retrieval_timeout_seconds: float = 5.0
    tool_call_timeout_seconds: float = 10.0
    escalation_rules_path: str | None = None
    link_allowlist: tuple[str, ...] = field(default_factory=tuple)
    # Load shedding: turns beyond this run concurrently → RESOURCE_EXHAUSTED at once.
    max_concurrent_turns: int = _TURN.max_concurrent_turns
    # How long a conversation's in-flight lock lives if its holder dies without releasing it.
    turn_lease_seconds: float = _TURN.turn_lease_seconds
    # Dependencies whose outage turns the agent's health NOT_SERVING ("tools", "retrieval"), and how often
    # they are checked (0 disables the watcher).
    required_dependencies: tuple[str, ...] = ("tools",)
    dependency_check_seconds: float = 2.0
    # Set: conversations live in Redis (replicas are stateless); unset: SQLite under data_dir.
    redis_url: str | None = None
    redis_key_prefix: str = "support-agent:"
    # Idle conversations are deleted after this long (unset: kept). Redis: key expiry; SQLite: purged at start
    # and then periodically on writes.
    conversation_retention_seconds: float | None = None
    # A turn running longer than this is stopped with DEADLINE_EXCEEDED (keep it below turn_lease_seconds).
    turn_deadline_seconds: float = _TURN.turn_deadline_seconds
    # Per-customer Chat turn rate (token bucket; 0 = unlimited) and its burst.
    customer_turns_per_minute: float = _TURN.customer_turns_per_minute
    customer_turn_burst: int = _TURN.customer_turn_burst
    # Hard cap on stored messages per conversation.
    max_conversation_messages: int = _TURN.max_conversation_messages
    # Principals (service_kit.auth): AUTH_CREDENTIALS_FILE / AUTH_TOKENS_<ROLE>, or AUTH_DISABLED=true;
    # the agent calls tools and retrieval as the `service` role.
    auth: AuthConfig = field(default_factory=AuthConfig)
    # TLS_CERT_FILE/TLS_KEY_FILE (+ TLS_CLIENT_CA_FILE: mTLS), callers TLS_CA_FILE; unset: plaintext.
    tls: TlsConfig = field(default_factory=TlsConfig)
    # GRPC_MAX_MESSAGE_BYTES, GRPC_MAX_CONCURRENT_RPCS.
    grpc_limits: ServerLimits = field(default_factory=ServerLimits)
    # WatchConversation: heartbeats, per-stream buffer, slow consumers, cross-replica polling (WATCH_*).
    watch: WatchSettings = field(default_factory=WatchSettings)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "agent.sqlite3"

    @property
    def turn_settings(self) -> TurnSettings:
        return TurnSettings(
            max_tool_rounds=self.max_tool_rounds,
            max_turns=self.max_turns,
            max_message_chars=self.max_message_chars,
            context_token_budget=self.context_token_budget,
            link_allowlist=self.link_allowlist,
            turn_lease_seconds=self.turn_lease_seconds,
            max_concurrent_turns=self.max_concurrent_turns,
            turn_deadline_seconds=self.turn_deadline_seconds,
            customer_turns_per_minute=self.customer_turns_per_minute,
            customer_turn_burst=self.customer_turn_burst,
            max_conversation_messages=self.max_conversation_messages,
        )

    @property
    def uses_remote_model(self) -> bool:
        return self.openai_api_key is not None or self.openai_base_url is not None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        max_distance_raw = env_opt("RETRIEVAL_MAX_DISTANCE", environ)
        max_distance: float | None = None
        if max_distance_raw is not None:
            max_distance = env_float("RETRIEVAL_MAX_DISTANCE", 0.0, environ, minimum=0.0)
            if max_distance > 2.0:
                raise ConfigError(f"RETRIEVAL_MAX_DISTANCE={max_distance} must be <= 2 (cosine distance)")
        temperature = env_float("OPENAI_TEMPERATURE", 0.3, environ, minimum=0.0)
        if temperature > 2.0:
            raise ConfigError(f"OPENAI_TEMPERATURE={temperature} must be <= 2")
        return cls(
            addr=env_str("AGENT_ADDR", DEFAULT_ADDR, environ),
            retrieval_addr=env_str("RETRIEVAL_ADDR", DEFAULT_RETRIEVAL_ADDR, environ),
            tools_addr=env_str("TOOLS_ADDR", DEFAULT_TOOLS_ADDR, environ),
            data_dir=Path(env_str("DATA_DIR", "./data", environ)),
            log_level=env_str("LOG_LEVEL", "INFO", environ),
            openai_api_key=env_opt("OPENAI_API_KEY", environ),
            openai_base_url=env_opt("OPENAI_BASE_URL", environ),
            openai_model=env_str("OPENAI_MODEL", "gpt-4o", environ),
            openai_temperature=temperature,
            model_timeout_seconds=env_float("MODEL_TIMEOUT_SECONDS", 30.0, environ, minimum=0.001),
            model_max_tokens=env_int("MODEL_MAX_TOKENS", 512, environ, minimum=1),
            model_max_retries=env_int("MODEL_MAX_RETRIES", 2, environ, minimum=0),
            model_retry_backoff_seconds=env_float("MODEL_RETRY_BACKOFF_SECONDS", 0.25, environ, minimum=0.0),
            model_context_placement=_placement(env_str("MODEL_CONTEXT_PLACEMENT", "auto", environ)),
            breaker_failure_threshold=env_int("MODEL_BREAKER_FAILURES", 3, environ, minimum=1),
            breaker_cooldown_seconds=env_float("MODEL_BREAKER_COOLDOWN_SECONDS", 30.0, environ, minimum=0.0),
            max_tool_rounds=env_int("MAX_TOOL_ROUNDS", _TURN.max_tool_rounds, environ, minimum=1),
            max_turns=env_int("MAX_TURNS", _TURN.max_turns, environ, minimum=1),
            max_message_chars=env_int("MAX_MESSAGE_CHARS", _TURN.max_message_chars, environ, minimum=1),
            context_token_budget=env_int(
                "CONTEXT_TOKEN_BUDGET", _TURN.context_token_budget, environ, minimum=100
            ),
            retrieval_top_k=env_int("RETRIEVAL_TOP_K", 4, environ, minimum=1),
            retrieval_max_distance=max_distance,
            retrieval_timeout_seconds=env_float("RETRIEVAL_TIMEOUT_SECONDS", 5.0, environ, minimum=0.001),
            tool_call_timeout_seconds=env_float("TOOL_CALL_TIMEOUT_SECONDS", 10.0, environ, minimum=0.001),
            escalation_rules_path=env_opt("ESCALATION_RULES_PATH", environ),
            link_allowlist=env_list("LINK_ALLOWLIST", (), environ),
            max_concurrent_turns=env_int(
                "MAX_CONCURRENT_TURNS", _TURN.max_concurrent_turns, environ, minimum=1
            ),
            turn_lease_seconds=env_float(
                "TURN_LEASE_SECONDS", _TURN.turn_lease_seconds, environ, minimum=1.0
            ),
            required_dependencies=_dependencies(env_list("REQUIRED_DEPENDENCIES", ("tools",), environ)),
            dependency_check_seconds=env_float("DEPENDENCY_CHECK_SECONDS", 2.0, environ, minimum=0.0),
            redis_url=env_opt("REDIS_URL", environ),
            redis_key_prefix=env_str("REDIS_KEY_PREFIX", "support-agent:", environ),
            conversation_retention_seconds=(
                env_float("CONVERSATION_RETENTION_SECONDS", 0.0, environ, minimum=1.0)
                if env_opt("CONVERSATION_RETENTION_SECONDS", environ)
                else None
            ),
            turn_deadline_seconds=env_float(
                "TURN_DEADLINE_SECONDS", _TURN.turn_deadline_seconds, environ, minimum=0.1
            ),
            customer_turns_per_minute=env_float(
                "CUSTOMER_TURNS_PER_MINUTE", _TURN.customer_turns_per_minute, environ, minimum=0.0
            ),
            customer_turn_burst=env_int("CUSTOMER_TURN_BURST", _TURN.customer_turn_burst, environ, minimum=1),
            max_conversation_messages=env_int(
                "MAX_CONVERSATION_MESSAGES", _TURN.max_conversation_messages, environ, minimum=2
            ),
            auth=AuthConfig.from_env(environ, outbound_role=SERVICE),
            tls=TlsConfig.from_env(environ),
            grpc_limits=ServerLimits.from_env(environ),
            watch=WatchSettings.from_env(environ),
        )


def _placement(value: str) -> ContextPlacement:
    try:
        return ContextPlacement(value.strip().lower())
    except ValueError:
        choices = ", ".join(placement.value for placement in ContextPlacement)
        raise ConfigError(f"MODEL_CONTEXT_PLACEMENT={value!r} must be one of {choices}") from None


def _dependencies(names: tuple[str, ...]) -> tuple[str, ...]:
    unknown = sorted(set(names) - {"tools", "retrieval"})
    if unknown:
        raise ConfigError(f"REQUIRED_DEPENDENCIES has unknown entries {unknown}; use tools and/or retrieval")
    return names

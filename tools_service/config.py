"""tools_service configuration, read once from the environment."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from service_kit.auth import AuthConfig
from service_kit.env import ConfigError, env_bool, env_float, env_int, env_opt, env_str
from service_kit.grpc_server import ServerLimits
from service_kit.tls import TlsConfig
from tools_service.order_rules import RETURN_WINDOW_DAYS
from tools_service.tool_catalog import SHIPPED_TOOLS_FILE, load_tools
from tools_service.webhooks_config import WebhookSettings

DEFAULT_ADDR = "127.0.0.1:50053"
DEFAULT_ORDER_ID_PATTERN = r"^ORD-\d{5}$"
ORDER_BACKENDS = ("sqlite", "http")


@dataclass(frozen=True)
class Config:
    addr: str = DEFAULT_ADDR
    data_dir: Path = Path("./data")
    log_level: str = "INFO"
    order_id_pattern: str = DEFAULT_ORDER_ID_PATTERN
    # Every backend call runs under this timeout and under the caller's gRPC deadline, whichever is sooner.
    tool_timeout_seconds: float = 10.0
    limit_per_conversation: int = 20
    limit_per_customer_per_minute: int = 30
    limit_identical_calls: int = 3
    # New helpdesk tickets a customer may open per minute (EscalateToHuman and the escalate_to_human tool).
    limit_escalations_per_customer_per_minute: int = 30
    # Messages a ticket takes (customer and human agent together); more are RESOURCE_EXHAUSTED.
    ticket_max_messages: int = 500
    # Resolved tickets older than this are deleted with their messages (None: kept).
    ticket_retention_seconds: float | None = None
    order_backend: str = "sqlite"
    order_api_url: str | None = None
    # "Header-Name: value", e.g. "Authorization: Bearer s3cret".
    order_api_auth_header: str | None = None
    order_api_timeout_seconds: float = 5.0
    order_api_retries: int = 2
    # The tools the model gets (TOOLS_FILE; docs/tools.md), validated at start-up.
    tools_file: Path = SHIPPED_TOOLS_FILE
    # A proposed write action not confirmed within this many seconds expires (ACTION_TTL_SECONDS).
    action_ttl_seconds: float = 600.0
    # Write actions a customer may have proposed in the last hour (WRITE_ACTIONS_PER_CUSTOMER_PER_HOUR).
    write_actions_per_customer_per_hour: int = 10
    # Days after delivery a return can be started (RETURN_WINDOW_DAYS).
    return_window_days: int = RETURN_WINDOW_DAYS
    # Seed the demo orders into an empty SQLite order store on start.
    seed_demo_data: bool = True
    # Principals (service_kit.auth): AUTH_CREDENTIALS_FILE / AUTH_TOKENS_<ROLE>, or AUTH_DISABLED=true.
    auth: AuthConfig = field(default_factory=AuthConfig)
    # TLS_CERT_FILE/TLS_KEY_FILE (+ TLS_CLIENT_CA_FILE: mTLS), callers TLS_CA_FILE; unset: plaintext.
    tls: TlsConfig = field(default_factory=TlsConfig)
    # GRPC_MAX_MESSAGE_BYTES, GRPC_MAX_CONCURRENT_RPCS.
    grpc_limits: ServerLimits = field(default_factory=ServerLimits)
    # WEBHOOK_URLS, WEBHOOK_SECRET, ...: helpdesk webhooks (tools_service/webhooks.py); no URLs: none sent.
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "tools.sqlite3"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        pattern = env_str("ORDER_ID_PATTERN", DEFAULT_ORDER_ID_PATTERN, environ)
        try:
            re.compile(pattern)
        except re.error as error:
            raise ConfigError(
                f"ORDER_ID_PATTERN={pattern!r} is not a valid regular expression: {error}"
            ) from None
        backend = env_str("ORDER_BACKEND", "sqlite", environ).lower()
        if backend not in ORDER_BACKENDS:
            raise ConfigError(f"ORDER_BACKEND={backend!r} must be one of {', '.join(ORDER_BACKENDS)}")
        api_url = env_opt("ORDER_API_URL", environ)
        if backend == "http" and api_url is None:
            raise ConfigError("ORDER_BACKEND=http needs ORDER_API_URL")
        auth_header = env_opt("ORDER_API_AUTH_HEADER", environ)
        if auth_header is not None and ":" not in auth_header:
            raise ConfigError("ORDER_API_AUTH_HEADER must look like 'Header-Name: value'")
        timeout = env_float("TOOL_TIMEOUT_SECONDS", 10.0, environ, minimum=0.001)
        tools_file = Path(env_opt("TOOLS_FILE", environ) or SHIPPED_TOOLS_FILE)
        load_tools(tools_file, order_id_pattern=pattern, environ=environ)  # a bad file stops the start here
        return cls(
            addr=env_str("TOOLS_ADDR", DEFAULT_ADDR, environ),
            data_dir=Path(env_str("DATA_DIR", "./data", environ)),
            log_level=env_str("LOG_LEVEL", "INFO", environ),
            order_id_pattern=pattern,
            tool_timeout_seconds=timeout,
            limit_per_conversation=env_int("TOOL_LIMIT_PER_CONVERSATION", 20, environ, minimum=1),
            limit_per_customer_per_minute=env_int(
                "TOOL_LIMIT_PER_CUSTOMER_PER_MINUTE", 30, environ, minimum=1
            ),
            limit_identical_calls=env_int("TOOL_LIMIT_IDENTICAL_CALLS", 3, environ, minimum=1),
            limit_escalations_per_customer_per_minute=env_int(
                "TOOL_LIMIT_ESCALATIONS_PER_CUSTOMER_PER_MINUTE", 30, environ, minimum=1
            ),
            ticket_max_messages=env_int("TICKET_MAX_MESSAGES", 500, environ, minimum=1),
            ticket_retention_seconds=(
                env_float("TICKET_RETENTION_SECONDS", 0.0, environ, minimum=1.0)
                if env_opt("TICKET_RETENTION_SECONDS", environ)
                else None
            ),
            order_backend=backend,
            order_api_url=api_url,
            order_api_auth_header=auth_header,
            order_api_timeout_seconds=env_float("ORDER_API_TIMEOUT_SECONDS", 5.0, environ, minimum=0.001),
            order_api_retries=env_int("ORDER_API_RETRIES", 2, environ, minimum=0),
            tools_file=tools_file,
            action_ttl_seconds=env_float("ACTION_TTL_SECONDS", 600.0, environ, minimum=1.0),
            write_actions_per_customer_per_hour=env_int(
                "WRITE_ACTIONS_PER_CUSTOMER_PER_HOUR", 10, environ, minimum=1
            ),
            return_window_days=env_int("RETURN_WINDOW_DAYS", RETURN_WINDOW_DAYS, environ, minimum=0),
            seed_demo_data=env_bool("TOOLS_SEED_DEMO_DATA", True, environ),
            auth=AuthConfig.from_env(environ),
            tls=TlsConfig.from_env(environ),
            grpc_limits=ServerLimits.from_env(environ),
            webhooks=WebhookSettings.from_env(environ),
        )

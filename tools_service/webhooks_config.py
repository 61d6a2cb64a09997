"""Webhook settings (WEBHOOK_*), read once with the rest of tools_service's configuration."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from service_kit.env import ConfigError, env_float, env_int, env_opt


@dataclass(frozen=True)
class WebhookSettings:
    urls: tuple[str, ...] = ()
    secret: str = ""
    timeout_seconds: float = 5.0
    max_attempts: int = 8
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 300.0
    poll_seconds: float = 0.5

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WebhookSettings:
        raw = env_opt("WEBHOOK_URLS", environ) or ""
        urls = tuple(url.strip() for url in raw.split(",") if url.strip())
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"WEBHOOK_URLS: {url!r} is not an http(s) URL")
        secret = env_opt("WEBHOOK_SECRET", environ) or ""
        if urls and len(secret) < 16:
            raise ConfigError("WEBHOOK_SECRET must be set (at least 16 characters) when WEBHOOK_URLS is")
        return cls(
            urls=urls,
            secret=secret,
            timeout_seconds=env_float("WEBHOOK_TIMEOUT_SECONDS", 5.0, environ, minimum=0.01),
            max_attempts=env_int("WEBHOOK_MAX_ATTEMPTS", 8, environ, minimum=1),
            backoff_seconds=env_float("WEBHOOK_BACKOFF_SECONDS", 1.0, environ, minimum=0.001),
            max_backoff_seconds=env_float("WEBHOOK_MAX_BACKOFF_SECONDS", 300.0, environ, minimum=0.001),
        )

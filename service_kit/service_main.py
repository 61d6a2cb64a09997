"""The one `main` of every service: configuration → logging and observability → start → serve until
SIGTERM/SIGINT → stop.

    def main() -> None:
        run_service("tools_service", Config.from_env, start_server)

A configuration error (`ConfigError`, or one of `config_errors` the service adds) prints
"<name>: configuration error: ..." on stderr and exits 2, whether it is found reading the environment or while
starting; one of `startup_errors` (e.g. a vector store that cannot be reached) prints "<name>: ..." and exits 1.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import NoReturn, Protocol, TypeVar

from service_kit.env import ConfigError
from service_kit.jsonlog import configure_logging
from service_kit.lifecycle import StartedServer
from service_kit.observability import ObservabilityConfig, setup_observability

logger = logging.getLogger(__name__)

DEFAULT_GRACE_SECONDS = 10.0


class ServiceConfig(Protocol):
    @property
    def log_level(self) -> str: ...


C = TypeVar("C", bound=ServiceConfig)


def run_service(
    name: str,
    load_config: Callable[[], C],
    start: Callable[[C], Awaitable[StartedServer]],
    *,
    config_errors: tuple[type[Exception], ...] = (),
    startup_errors: tuple[type[Exception], ...] = (),
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
) -> None:
    """Runs one service process to its end; returns when it stopped cleanly after a signal."""
    try:
        config = load_config()
        observability_config = ObservabilityConfig.from_env()
    except ConfigError as error:
        _exit_with_config_error(name, error)
    configure_logging(name, config.log_level)
    obs = setup_observability(name, observability_config)
    all_config_errors: tuple[type[Exception], ...] = (ConfigError, *config_errors)
    try:
        asyncio.run(_serve(start, config, grace_seconds))
    except all_config_errors as error:
        _exit_with_config_error(name, error)
    except startup_errors as error:
        logger.error("cannot start: %s", error)
        print(f"{name}: {error}", file=sys.stderr)
        sys.exit(1)
    finally:
        obs.shutdown()


def _exit_with_config_error(name: str, error: Exception) -> NoReturn:
    print(f"{name}: configuration error: {error}", file=sys.stderr)
    sys.exit(2)


async def _serve(start: Callable[[C], Awaitable[StartedServer]], config: C, grace_seconds: float) -> None:
    started = await start(config)
    try:
        await wait_for_stop_signal()
        logger.info("shutdown requested; draining", extra={"grace_seconds": grace_seconds})
    finally:
        await started.stop(grace_seconds)
    logger.info("stopped")


async def wait_for_stop_signal() -> None:
    """Returns at the first SIGTERM or SIGINT, and ignores both from then on."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    # A second signal during the drain (Ctrl-C reaches the whole process group, then a supervisor's SIGTERM)
    # must not kill the process by the default action once the event loop has closed.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_IGN)

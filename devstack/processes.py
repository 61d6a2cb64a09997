"""The three services as local processes (`python -m <service>`): start, wait until SERVING, ingest a
knowledge base, stop in reverse order (SIGTERM, wait, SIGKILL)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from devstack.credentials import (
    CREDENTIALS_FILE_NAME,
    Credentials,
    ensure_credentials_file,
    shared_test_credentials,
)
from devstack.health import START_TIMEOUT_SECONDS, StackError, free_port, wait_serving
from devstack.services import REPO_ROOT, SERVICES, ServiceSpec

logger = logging.getLogger(__name__)

STOP_TIMEOUT_SECONDS = 15.0
SAMPLE_LINK_ALLOWLIST = "example.com"
LOG_TAIL_CHARS = 3000
# Settings a developer's shell may hold that must not reach an isolated stack (real keys, shared stores,
# addresses and limits of another stack).
FOREIGN_PREFIXES = (
    "OPENAI_",
    "CHROMA_",
    "REDIS_",
    "OTEL_",
    "SERVICE_AUTH_",
    "AUTH_",
    "AGENT_",
    "RETRIEVAL_",
    "TOOLS_",
    "TOOL_",
    "MAX_CONCURRENT",
)


def isolated_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """`environ` (default os.environ) without the variables of FOREIGN_PREFIXES."""
    source = os.environ if environ is None else environ
    return {key: value for key, value in source.items() if not key.startswith(FOREIGN_PREFIXES)}


def stop_process(
    process: subprocess.Popen[bytes],
    timeout: float = STOP_TIMEOUT_SECONDS,
    signum: int = signal.SIGTERM,
    label: str = "",
) -> int:
    """Sends `signum` if the process still runs, waits up to `timeout` seconds, then SIGKILLs it."""
    if process.poll() is None:
        process.send_signal(signum)
    return wait_or_kill(process, timeout, label)


def wait_or_kill(process: subprocess.Popen[bytes], timeout: float, label: str = "") -> int:
    """Waits up to `timeout` seconds for a process told to stop; SIGKILLs it after that."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        logger.warning("%s did not stop in %.0fs; killing it", label or f"pid {process.pid}", timeout)
        process.kill()
        return process.wait()


@dataclass
class RunningService:
    spec: ServiceSpec
    process: subprocess.Popen[bytes]
    command: list[str]
    stop_signal: int = signal.SIGTERM


@dataclass
class ProcessStack:
    """The services as subprocesses sharing one DATA_DIR.

    Every service gets `environ` (default: this process's environment), its listen and dial addresses, DATA_DIR,
    then `env` (overrides for all), then the overrides given to `launch`. `addrs` maps a service name to its
    address; missing ones get a free loopback port. With `log_dir`, each service appends stdout and stderr to
    `<log_dir>/<name>.log`; without, they write to this process's terminal.

    Credentials: `<data_dir>/credentials.json` (0600), written on first use (from `credentials`, default
    `shared_test_credentials()`) and reused afterwards; every service and the ingest get AUTH_CREDENTIALS_FILE
    pointing at it (`env` may override it). `self.credentials` holds the tokens in use.

    `async with` stops whatever is still running on exit.
    """

    data_dir: Path
    environ: Mapping[str, str] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    addrs: dict[str, str] = field(default_factory=dict)
    log_dir: Path | None = None
    start_timeout: float = START_TIMEOUT_SECONDS
    running: dict[str, RunningService] = field(default_factory=dict)
    credentials: Credentials | None = None
    credentials_created: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        tokens = (self.credentials or shared_test_credentials()).tokens
        self.credentials, self.credentials_created = ensure_credentials_file(
            self.data_dir / CREDENTIALS_FILE_NAME, tokens
        )
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        for name in SERVICES:
            self.addrs.setdefault(name, f"127.0.0.1:{free_port()}")

    async def __aenter__(self) -> ProcessStack:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop_all)

    # --- environment and commands ---------------------------------------------------------------------

    def environment(self, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if self.environ is None else self.environ)
        env.update({SERVICES[name].addr_var: addr for name, addr in self.addrs.items()})
        env.update(DATA_DIR=str(self.data_dir), PYTHONUNBUFFERED="1")
        # The sample help center's own domain: the operator's link allow-list of the demo store.
        env.setdefault("LINK_ALLOWLIST", SAMPLE_LINK_ALLOWLIST)
        assert self.credentials is not None and self.credentials.path is not None
        env.update(AUTH_CREDENTIALS_FILE=str(self.credentials.path))
        env.update(self.env)
        env.update(overrides or {})
        return env

    def command(self, spec: ServiceSpec) -> list[str]:
        """How a service is run (a subclass may wrap it, e.g. in a profiler)."""
        return [sys.executable, "-m", spec.module]

    def stop_signal(self, command: Sequence[str]) -> int:
        """The signal that stops a process started with `command` gracefully."""
        return signal.SIGTERM

    # --- one service ------------------------------------------------------------------------------------

    def log_path(self, name: str) -> Path | None:
        return None if self.log_dir is None else self.log_dir / f"{name}.log"

    def launch(self, name: str, env: Mapping[str, str] | None = None) -> RunningService:
        """Starts a service process without waiting for it (Popen returns once the child is forked)."""
        if name in self.running:
            raise StackError(f"{name} service is already running")
        spec = SERVICES[name]
        command = self.command(spec)
        log_path = self.log_path(name)
        log = None if log_path is None else log_path.open("ab")
        try:
            process = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env=self.environment(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=None if log is None else subprocess.STDOUT,
            )
        except OSError as error:
            raise StackError(f"cannot start {name} service: {error}") from error
        finally:
            if log is not None:
                log.close()  # the child holds its own descriptor
        running = RunningService(spec, process, command, self.stop_signal(command))
        self.running[name] = running
        return running

    async def wait_ready(self, name: str, within_seconds: float | None = None) -> float:
        """Waits until the service is SERVING; returns time.monotonic() at that moment."""
        running = self.running[name]
        try:
            return await wait_serving(
                self.addrs[name],
                running.spec.grpc_service,
                running.process,
                self.start_timeout if within_seconds is None else within_seconds,
                poll_seconds=0.01,
                label=f"{name} service",
            )
        except StackError as error:
            raise StackError(f"{error}{self._tail_note(name)}") from None

    async def start(self, name: str, env: Mapping[str, str] | None = None) -> float:
        self.launch(name, env)
        return await self.wait_ready(name)

    def stop(self, name: str, timeout: float = STOP_TIMEOUT_SECONDS) -> int | None:
        """Stops one service gracefully; its exit status, or None if it was not started."""
        running = self.running.pop(name, None)
        if running is None:
            return None
        return stop_process(running.process, timeout, running.stop_signal, name)

    def kill(self, name: str) -> None:
        """kill -9: no handler runs, nothing is flushed or drained."""
        running = self.running.pop(name)
        running.process.kill()
        running.process.wait(timeout=10)

    def pid(self, name: str) -> int:
        return self.running[name].process.pid

    def log_paths(self) -> list[Path]:
        """Every log file written under `log_dir` so far (the services' and the ingest's)."""
        return [] if self.log_dir is None else sorted(self.log_dir.glob("*.log"))

    def log_tail(self, name: str, chars: int = LOG_TAIL_CHARS) -> str:
        path = self.log_path(name)
        try:
            text = "(no log)" if path is None else path.read_text("utf-8", "replace")
        except OSError:
            return "(no log)"
        return text[-chars:] or "(empty log)"

    def _tail_note(self, name: str) -> str:
        return "" if self.log_dir is None else f"; log tail:\n{self.log_tail(name)}"

    # --- the stack ----------------------------------------------------------------------------------------

    async def start_backends(self) -> None:
        """Retrieval and tools, started together, both SERVING."""
        for name in ("retrieval", "tools"):
            self.launch(name)
        await asyncio.gather(*(self.wait_ready(name) for name in ("retrieval", "tools")))

    async def ingest(self, kb_dir: Path, *, if_empty: bool = False) -> float:
        """Ingests `kb_dir` into the running retrieval service with support-ingest; returns the seconds taken."""
        command = [str(Path(sys.executable).parent / "support-ingest"), "--quiet"]
        command += ["--if-empty"] if if_empty else []
        command += ["--addr", self.addrs["retrieval"], str(kb_dir)]
        log_path = self.log_path("ingest")
        started = time.monotonic()
        log = None if log_path is None else log_path.open("ab")
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                cwd=REPO_ROOT,
                env=self.environment(),
                stdout=log,
                stderr=None if log is None else subprocess.STDOUT,
            )
            code = await process.wait()
        except OSError as error:
            raise StackError(f"cannot run {command[0]}: {error}") from error
        finally:
            if log is not None:
                log.close()
        if code != 0:
            raise StackError(f"ingesting {kb_dir} failed (exit {code}){self._tail_note('ingest')}")
        return time.monotonic() - started

    async def start_all(self, kb_dir: Path | None = None, *, if_empty: bool = False) -> None:
        """Retrieval and tools, `kb_dir` ingested (when given), then the agent; each SERVING."""
        await self.start_backends()
        if kb_dir is not None:
            await self.ingest(kb_dir, if_empty=if_empty)
        await self.start("agent")

    def exited(self) -> tuple[str, int] | None:
        """The first running service whose process has exited, with its status."""
        for name, running in self.running.items():
            code = running.process.poll()
            if code is not None:
                return name, code
        return None

    def check_alive(self) -> None:
        dead = self.exited()
        if dead is not None:
            name, code = dead
            raise StackError(f"{name} service died with status {code}{self._tail_note(name)}")

    def stop_all(self, timeout: float = STOP_TIMEOUT_SECONDS) -> dict[str, int]:
        """Signals every service, callers first (the agent, then tools and retrieval, whatever order they were
        started or restarted in), so they drain together, then waits for each (SIGKILL after `timeout`).
        Returns each exit status by name."""
        order = [name for name in reversed(SERVICES) if name in self.running]
        stopping = [self.running.pop(name) for name in order]
        for running in stopping:
            if running.process.poll() is None:
                running.process.send_signal(running.stop_signal)
        return {
            running.spec.name: wait_or_kill(running.process, timeout, running.spec.name)
            for running in stopping
        }

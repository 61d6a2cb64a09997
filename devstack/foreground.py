"""`python -m devstack` (what `make run` runs): the three services as local processes on embedded defaults,
in the foreground.

Starts retrieval and tools, waits until both report SERVING, ingests the knowledge base when the collection is
empty, starts the agent, prints where everything listens, then waits. Ctrl-C or SIGTERM stops the agent first,
then the others, each draining in-flight calls. If one service dies, the rest are stopped and the exit status
is non-zero. The services listen on $<NAME>_ADDR (else their defaults) and keep their data in $DATA_DIR
(else ./data).

Authentication is on: the first start writes one random token per role to `$DATA_DIR/credentials.json` (0600;
later starts reuse it), every service reads it through AUTH_CREDENTIALS_FILE, and the grpcurl flags to call
as each role are printed. support-chat, support-tickets, support-ingest, support-eval and the Python client
read the same file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from devstack.credentials import Credentials, new_tokens
from devstack.health import StackError
from devstack.processes import ProcessStack
from devstack.services import REPO_ROOT, SAMPLE_KB, SERVICES

logger = logging.getLogger("devstack")
ALIVE_CHECK_SECONDS = 0.2


def foreground_stack() -> ProcessStack:
    """The services on the addresses and DATA_DIR of this environment, writing to this terminal."""
    addrs = {name: os.environ.get(spec.addr_var, spec.default_addr) for name, spec in SERVICES.items()}
    data_dir = Path(os.environ.get("DATA_DIR", str(REPO_ROOT / "data")))
    return ProcessStack(data_dir, addrs=addrs, credentials=Credentials(new_tokens()))


def grpcurl_hints(stack: ProcessStack) -> list[str]:
    """How to call the stack with grpcurl as each role (the tokens are the developer's own, on their machine)."""
    credentials = stack.credentials
    assert credentials is not None
    agent, tools, retrieval = stack.addrs["agent"], stack.addrs["tools"], stack.addrs["retrieval"]
    return [
        f"credentials in {credentials.path} ({'created now' if stack.credentials_created else 'reused'}); "
        "the CLIs read it. grpcurl flags by role:",
        f"  backend (as cust-001):  grpcurl -plaintext -H 'authorization: Bearer {credentials.token('backend')}' "
        f"-H 'x-customer-id: cust-001' {agent} list",
        f"  staff (helpdesk):       grpcurl -plaintext -H 'authorization: Bearer {credentials.token('staff')}' "
        f"-H 'x-agent-name: alice' {tools} list",
        f"  kb_admin (ingest):      grpcurl -plaintext -H 'authorization: Bearer {credentials.token('kb_admin')}' "
        f"{retrieval} list",
    ]


async def run(kb_dir: Path, ingest: bool) -> int:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    stack = foreground_stack()
    try:
        await stack.start_all(kb_dir if ingest else None, if_empty=True)
    except StackError as error:
        logger.error("start-up failed: %s", error)
        stack.stop_all()
        return 1
    for name, spec in SERVICES.items():
        logger.info("%-9s %-28s listening on %s", name, spec.grpc_service, stack.addrs[name])
    for line in grpcurl_hints(stack):
        logger.info("%s", line)
    logger.info("data in %s; ready. Ctrl-C stops all three.", stack.data_dir)
    while not stopping.is_set():
        dead = stack.exited()
        if dead is not None:
            logger.error("%s exited unexpectedly with status %d", *dead)
            stack.stop_all()
            return 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), ALIVE_CHECK_SECONDS)
    logger.info("stopping")
    # A negative status means a service died of the signal instead of handling it.
    code = max((abs(status) for status in stack.stop_all().values()), default=0)
    logger.info("stopped" if code == 0 else f"stopped with status {code}")
    return code


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m devstack", description="Run the three support-agent services locally."
    )
    parser.add_argument(
        "--kb", type=Path, default=SAMPLE_KB, help="knowledge base folder to ingest when empty"
    )
    parser.add_argument("--no-ingest", action="store_true", help="do not ingest the knowledge base")
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[stack] %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    sys.exit(asyncio.run(run(args.kb, ingest=not args.no_ingest)))

"""Developer-only launchers for the three services: `python -m devstack` (what `make run` runs), the
subprocess stack used by support-eval, the benchmarks and the tests, and the in-process stack of the tests.

Nothing here ships in a service image; the services never import it. The in-process pieces live in
`devstack.inprocess` (importing it loads all three services), the rest is importable from here.
"""

from devstack.health import StackError, free_port, health_status, wait_serving
from devstack.processes import (
    STOP_TIMEOUT_SECONDS,
    ProcessStack,
    RunningService,
    isolated_environ,
    stop_process,
    wait_or_kill,
)
from devstack.services import AGENT, REPO_ROOT, RETRIEVAL, SAMPLE_KB, SERVICES, TOOLS, ServiceSpec

__all__ = [
    "AGENT",
    "REPO_ROOT",
    "RETRIEVAL",
    "SAMPLE_KB",
    "SERVICES",
    "STOP_TIMEOUT_SECONDS",
    "TOOLS",
    "ProcessStack",
    "RunningService",
    "ServiceSpec",
    "StackError",
    "free_port",
    "health_status",
    "isolated_environ",
    "stop_process",
    "wait_or_kill",
    "wait_serving",
]

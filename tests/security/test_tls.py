"""TLS and mutual TLS through configuration (service_kit.tls), with a private CA this test makes with `openssl`.

- a server built by `new_server` with TLS / mTLS settings: a TLS client that trusts the CA gets through, a
  plaintext client, a client that trusts another CA and (under mTLS) a client without a certificate do not;
- the three services as processes, configured only through the environment the way a deployment does it
  (TLS_CERT_FILE, TLS_KEY_FILE, TLS_CLIENT_CA_FILE on every service; TLS_CA_FILE, TLS_CLIENT_CERT_FILE,
  TLS_CLIENT_KEY_FILE on the agent for its calls to retrieval and tools): Chat through real gRPC over mTLS
  succeeds, and every port refuses plaintext and certificate-less callers.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack import SERVICES, ProcessStack, isolated_environ
from service_kit.env import ConfigError
from service_kit.grpc_server import bind, new_server, set_status
from service_kit.tls import TlsConfig, secure_or_insecure_channel
from support.v1 import agent_pb2, agent_pb2_grpc

SERVICE = "support.v1.ToolsService"
BACKEND_TOKEN = "backend-token-for-the-tls-test-0123"
SERVICE_TOKEN = "service-token-for-the-tls-test-4567"
KB_ADMIN_TOKEN = "kbadmin-token-for-the-tls-test-8901"
STAFF_TOKEN = "staff-token-for-the-tls-test-23456789"
START_TIMEOUT_SECONDS = 120.0


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def _make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key.name, "-out", cert.name, "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return cert, key


def _issue(directory: Path, ca: tuple[Path, Path], name: str, extensions: str) -> tuple[Path, Path]:
    key, csr, cert = directory / f"{name}.key", directory / f"{name}.csr", directory / f"{name}.pem"
    ext = directory / f"{name}.ext"
    ext.write_text(extensions)
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key.name, "-out", csr.name, "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", csr.name, "-CA", ca[0].name, "-CAkey", ca[1].name, "-CAcreateserial",
        "-out", cert.name, "-days", "2", "-extfile", ext.name,
        cwd=directory,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    directory = tmp_path_factory.mktemp("pki")
    ca = _make_ca(directory, "test-ca")
    other_ca, _ = _make_ca(directory, "other-ca")
    server = _issue(
        directory,
        ca,
        "server",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
        "keyUsage=critical,digitalSignature\n",
    )
    client = _issue(
        directory, ca, "client", "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n"
    )
    return Pki(ca[0], server[0], server[1], client[0], client[1], other_ca)


def server_env(pki: Pki, *, mutual: bool = True) -> dict[str, str]:
    env = {"TLS_CERT_FILE": str(pki.server_cert), "TLS_KEY_FILE": str(pki.server_key)}
    if mutual:
        env["TLS_CLIENT_CA_FILE"] = str(pki.ca)
    return env


def caller_env(pki: Pki, *, with_certificate: bool = True, ca: Path | None = None) -> dict[str, str]:
    env = {"TLS_CA_FILE": str(ca or pki.ca)}
    if with_certificate:
        env.update(TLS_CLIENT_CERT_FILE=str(pki.client_cert), TLS_CLIENT_KEY_FILE=str(pki.client_key))
    return env


# ---------------------------------------------------------------------------------------------------------
# Configuration


def test_tls_config_reads_the_files_from_the_environment_and_names_what_is_wrong(pki: Pki) -> None:
    config = TlsConfig.from_env({**server_env(pki), **caller_env(pki), "TLS_SERVER_NAME": "localhost"})
    assert config.server_enabled and config.requires_client_certificate and config.client_enabled
    assert config.server_credentials() is not None and config.channel_credentials() is not None
    assert config.channel_options() == [("grpc.ssl_target_name_override", "localhost")]
    assert "BEGIN" not in repr(config)  # paths only, never key material

    plaintext = TlsConfig.from_env({})
    assert not plaintext.server_enabled and not plaintext.client_enabled
    assert plaintext.server_credentials() is None and plaintext.channel_credentials() is None

    with pytest.raises(ConfigError, match=re.escape("TLS_CERT_FILE='/no/such.pem': no such file")):
        TlsConfig.from_env({"TLS_CERT_FILE": "/no/such.pem", "TLS_KEY_FILE": str(pki.server_key)})
    with pytest.raises(ConfigError, match="TLS_CERT_FILE and TLS_KEY_FILE must be set together"):
        TlsConfig.from_env({"TLS_CERT_FILE": str(pki.server_cert)})
    with pytest.raises(ConfigError, match="TLS_CLIENT_CA_FILE"):
        TlsConfig.from_env({"TLS_CLIENT_CA_FILE": str(pki.ca)})
    with pytest.raises(ConfigError, match="TLS_CLIENT_CERT_FILE and TLS_CLIENT_KEY_FILE"):
        TlsConfig.from_env({"TLS_CA_FILE": str(pki.ca), "TLS_CLIENT_CERT_FILE": str(pki.client_cert)})


def test_every_service_config_reads_tls_once(pki: Pki, tmp_path: Path) -> None:
    from agent_service.config import Config as AgentConfig
    from retrieval_service.config import Config as RetrievalConfig
    from tools_service.config import Config as ToolsConfig

    environ = {
        **server_env(pki),
        **caller_env(pki),
        "DATA_DIR": str(tmp_path),
        "AUTH_TOKENS_SERVICE": SERVICE_TOKEN,
        "AUTH_TOKENS_BACKEND": BACKEND_TOKEN,
    }
    for config_type in (AgentConfig, RetrievalConfig, ToolsConfig):
        config = config_type.from_env(environ)
        assert config.tls.cert_file == pki.server_cert, config_type
        assert config.tls.client_ca_file == pki.ca, config_type


# ---------------------------------------------------------------------------------------------------------
# One server built by new_server


@dataclass
class Served:
    port: int

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"


async def _serve(tls: TlsConfig) -> tuple[grpc.aio.Server, Served]:
    server, health = new_server([SERVICE], tls=tls)
    port = bind(server, "127.0.0.1:0")
    await server.start()
    await set_status(health, [SERVICE], serving=True)
    return server, Served(port)


@pytest.fixture
async def mtls_server(pki: Pki) -> AsyncIterator[Served]:
    server, served = await _serve(TlsConfig.from_env(server_env(pki)))
    yield served
    await server.stop(None)


@pytest.fixture
async def tls_server(pki: Pki) -> AsyncIterator[Served]:
    server, served = await _serve(TlsConfig.from_env(server_env(pki, mutual=False)))
    yield served
    await server.stop(None)


async def _check(addr: str, tls: TlsConfig) -> grpc.StatusCode:
    async with secure_or_insecure_channel(addr, tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5.0)
        except grpc.aio.AioRpcError as error:
            return error.code()
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    return grpc.StatusCode.OK


async def test_tls_server_accepts_tls_callers_only(pki: Pki, tls_server: Served) -> None:
    assert await _check(tls_server.addr, TlsConfig.from_env(caller_env(pki, with_certificate=False))) == (
        grpc.StatusCode.OK
    )
    # Plaintext HTTP/2 to a TLS port: no RPC gets through.
    assert await _check(tls_server.addr, TlsConfig()) == grpc.StatusCode.UNAVAILABLE
    # A caller that trusts another CA refuses the server's certificate.
    other = TlsConfig.from_env(caller_env(pki, with_certificate=False, ca=pki.other_ca))
    assert await _check(tls_server.addr, other) == grpc.StatusCode.UNAVAILABLE


async def test_mtls_server_requires_a_client_certificate_from_its_ca(pki: Pki, mtls_server: Served) -> None:
    assert await _check(mtls_server.addr, TlsConfig.from_env(caller_env(pki))) == grpc.StatusCode.OK
    without_certificate = TlsConfig.from_env(caller_env(pki, with_certificate=False))
    assert await _check(mtls_server.addr, without_certificate) == grpc.StatusCode.UNAVAILABLE
    assert await _check(mtls_server.addr, TlsConfig()) == grpc.StatusCode.UNAVAILABLE


async def test_a_server_name_override_checks_the_certificate_against_that_name(
    pki: Pki, tls_server: Served
) -> None:
    env = caller_env(pki, with_certificate=False)
    assert await _check(tls_server.addr, TlsConfig.from_env({**env, "TLS_SERVER_NAME": "localhost"})) == (
        grpc.StatusCode.OK
    )
    wrong_name = TlsConfig.from_env({**env, "TLS_SERVER_NAME": "retrieval.elsewhere.example"})
    assert await _check(tls_server.addr, wrong_name) == grpc.StatusCode.UNAVAILABLE


# ---------------------------------------------------------------------------------------------------------
# The three services as processes, configured through the environment


@pytest.fixture(scope="module")
def mtls_stack(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessStack]:
    base = tmp_path_factory.mktemp("tls-stack")
    credentials = {
        "AUTH_TOKENS_BACKEND": BACKEND_TOKEN,
        "AUTH_TOKENS_SERVICE": SERVICE_TOKEN,
        "AUTH_TOKENS_KB_ADMIN": KB_ADMIN_TOKEN,
        "AUTH_TOKENS_STAFF": STAFF_TOKEN,
    }
    stack = ProcessStack(
        base,
        environ=isolated_environ(),
        env={"LOG_LEVEL": "WARNING", "REDIS_URL": "", **credentials, **server_env(pki)},
        log_dir=base / "logs",
    )
    try:
        for name in ("retrieval", "tools"):
            stack.launch(name)
        # The agent is SERVING only while it reaches both dependencies, over mTLS with its own certificate.
        stack.launch("agent", {**caller_env(pki), "REQUIRED_DEPENDENCIES": "tools,retrieval"})
        caller = TlsConfig.from_env(caller_env(pki))
        for name in ("retrieval", "tools", "agent"):
            _wait_serving(stack, name, caller)
        yield stack
    finally:
        stack.stop_all()


def _wait_serving(stack: ProcessStack, name: str, tls: TlsConfig) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    process = stack.running[name].process
    while True:
        if process.poll() is not None:
            pytest.fail(f"{name} exited with {process.returncode}: {stack.log_tail(name)}")
        if asyncio.run(_status(stack.addrs[name], SERVICES[name].grpc_service, tls)) == 1:
            return
        if time.monotonic() > deadline:
            pytest.fail(
                f"{name} not SERVING over mTLS after {START_TIMEOUT_SECONDS:.0f}s: {stack.log_tail(name)}"
            )
        time.sleep(0.2)


async def _status(addr: str, service: str, tls: TlsConfig) -> int:
    async with secure_or_insecure_channel(addr, tls) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=1.0
            )
        except grpc.aio.AioRpcError:
            return -1
    return int(reply.status)


async def _chat(addr: str, tls: TlsConfig) -> agent_pb2.ChatResponse | grpc.StatusCode:
    metadata = (("authorization", f"Bearer {BACKEND_TOKEN}"), ("x-customer-id", "cust-001"))
    async with secure_or_insecure_channel(addr, tls) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            reply: agent_pb2.ChatResponse = await stub.Chat(
                agent_pb2.ChatRequest(conversation_id="tls-conv-1", message="Where is my order ORD-12345?"),
                timeout=60,
                metadata=metadata,
            )
        except grpc.aio.AioRpcError as error:
            return error.code()
    return reply


@pytest.mark.slow
@pytest.mark.e2e
async def test_chat_over_mutual_tls_between_every_service(pki: Pki, mtls_stack: ProcessStack) -> None:
    reply = await _chat(mtls_stack.addrs["agent"], TlsConfig.from_env(caller_env(pki)))
    assert isinstance(reply, agent_pb2.ChatResponse), reply
    assert reply.reply


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize("name", ["agent", "retrieval", "tools"])
async def test_every_port_refuses_plaintext_and_callers_without_a_certificate(
    pki: Pki, mtls_stack: ProcessStack, name: str
) -> None:
    addr, service = mtls_stack.addrs[name], SERVICES[name].grpc_service
    assert await _status(addr, service, TlsConfig.from_env(caller_env(pki))) == 1
    assert await _status(addr, service, TlsConfig()) == -1
    assert await _status(addr, service, TlsConfig.from_env(caller_env(pki, with_certificate=False))) == -1
    if name == "agent":
        assert await _chat(addr, TlsConfig()) == grpc.StatusCode.UNAVAILABLE
        no_certificate = TlsConfig.from_env(caller_env(pki, with_certificate=False))
        assert await _chat(addr, no_certificate) == grpc.StatusCode.UNAVAILABLE

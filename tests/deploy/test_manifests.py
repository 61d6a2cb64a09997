"""The deployment files, validated with the real tools: hadolint, docker-compose, kubectl kustomize and the
Kubernetes JSON schemas (kubernetes-validate, offline)."""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
NAMESPACE = "support-agent"

# service → (port, gRPC service name, listen-address variable)
SERVICES = {
    "agent": (50051, "support.v1.AgentService", "AGENT_ADDR"),
    "retrieval": (50052, "support.v1.RetrievalService", "RETRIEVAL_ADDR"),
    "tools": (50053, "support.v1.ToolsService", "TOOLS_ADDR"),
}


def _tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found (it is pinned in requirements.txt)")
    return found


def _run(*command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, env=env, check=False
    )


def test_grpc_service_names_exist_in_the_contracts() -> None:
    protos = "\n".join(path.read_text() for path in (REPO_ROOT / "protos/support/v1").glob("*.proto"))
    assert "package support.v1;" in protos
    for _port, full_name, _var in SERVICES.values():
        assert re.search(rf"^service {full_name.rsplit('.', 1)[1]} \{{", protos, re.MULTILINE), full_name


# ---------------------------------------------------------------------------------------------------------
# Dockerfile


def _dockerfile_stages() -> dict[str, list[str]]:
    """Stage name → its instructions (continuation lines joined)."""
    text = (REPO_ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE)
        if match:
            current = stages.setdefault(match.group(1), [])
        current.append(line)
    return stages


def test_hadolint_passes() -> None:
    result = _run(_tool("hadolint"), "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_has_a_non_root_target_per_service_with_a_grpc_healthcheck() -> None:
    stages = _dockerfile_stages()
    assert {"build", "runtime", *SERVICES} <= set(stages)
    build = " ".join(stages["build"])
    assert "grpc_tools.protoc -I protos" in build and "--pyi_out" in build  # stubs at build time
    runtime = stages["runtime"]
    assert any(re.fullmatch(r"USER 10001:10001", line) for line in runtime)
    for service, (port, full_name, var) in SERVICES.items():
        lines = stages[service]
        assert lines[0].startswith("FROM runtime AS"), service
        assert f"ENV {var}=0.0.0.0:{port}" in lines
        assert f"EXPOSE {port} 9464" in lines
        (entrypoint,) = [line for line in lines if line.startswith("ENTRYPOINT")]
        assert entrypoint == f'ENTRYPOINT ["python", "-m", "{service}_service"]'  # exec form
        (healthcheck,) = [line for line in lines if line.startswith("HEALTHCHECK")]
        assert (
            f'CMD ["python", "-m", "service_kit.healthcheck", "127.0.0.1:{port}", "{full_name}"]'
            in healthcheck
        )
        assert not any(line.startswith("USER") and "root" in line for line in lines)


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    ignored = set((REPO_ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "data", "tests", ".env", "support"} <= ignored
    # What the build needs stays in.
    assert not {"protos", "service_kit", "requirements", "requirements-nodeps.txt", "kb"} & ignored


# ---------------------------------------------------------------------------------------------------------
# docker-compose


CREDENTIALS_SECRET_PATH = "/run/secrets/auth_credentials"
# Services that carry credentials, and the one-shot ingest (calls as kb_admin).
COMPOSE_CALLERS = ("agent", "retrieval", "tools", "ingest")
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|API_KEY|AUTH|CREDENTIAL", re.IGNORECASE)


def _compose_binary() -> str:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose not installed (scripts/ensure_system_tools.sh installs it in CI)")
    return binary


def _compose_env(**extra: str) -> dict[str, str]:
    prefixes = ("OPENAI_", "OTEL_", "AUTH_", "AGENT_")
    env = {key: value for key, value in os.environ.items() if not key.startswith(prefixes)}
    return {**env, **extra}


@pytest.fixture(scope="module")
def credentials_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("compose") / "credentials.json"


@pytest.fixture(scope="module")
def compose(credentials_file: Path) -> dict[str, Any]:
    env = _compose_env(OPENAI_API_KEY="sk-from-the-environment", AUTH_CREDENTIALS_FILE=str(credentials_file))
    result = _run(_compose_binary(), "-f", "docker-compose.yml", "config", env=env)
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def test_compose_has_the_stack_with_health_checks_and_ordered_start(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"agent", "retrieval", "tools", "chroma", "redis", "ingest"} <= set(services)
    for name, (port, full_name, var) in SERVICES.items():
        service = services[name]
        assert service["build"]["target"] == name
        assert service["environment"][var] == f"0.0.0.0:{port}"
        assert service["healthcheck"]["test"] == [
            "CMD",
            "python",
            "-m",
            "service_kit.healthcheck",
            f"127.0.0.1:{port}",
            full_name,
        ]
        assert service["environment"]["METRICS_PORT"] == "9464"
    for name in ("chroma", "redis"):
        assert services[name]["healthcheck"]["test"][0] == "CMD"
    agent = services["agent"]
    assert agent["depends_on"] == {
        "retrieval": {"condition": "service_healthy"},
        "tools": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    assert services["retrieval"]["depends_on"] == {"chroma": {"condition": "service_healthy"}}
    assert services["ingest"]["depends_on"] == {"retrieval": {"condition": "service_healthy"}}
    # The one-shot ingest runs the project's console script from the retrieval image against the image's kb/.
    assert services["ingest"]["image"] == services["retrieval"]["image"]
    assert services["ingest"]["entrypoint"] == ["support-ingest"]
    assert services["ingest"]["command"][-1] == "/app/kb" and "--if-empty" in services["ingest"]["command"]
    assert (
        'support-ingest = "retrieval_service.ingest_cli:main"' in (REPO_ROOT / "pyproject.toml").read_text()
    )
    assert agent["environment"]["RETRIEVAL_ADDR"] == "dns:///retrieval:50052"
    assert agent["environment"]["TOOLS_ADDR"] == "dns:///tools:50053"
    assert agent["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert services["retrieval"]["environment"]["CHROMA_HOST"] == "chroma"


def test_compose_takes_the_model_key_from_the_environment_and_uses_named_volumes(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert services["agent"]["environment"]["OPENAI_API_KEY"] == "sk-from-the-environment"
    assert services["agent"]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == ""  # tracing off by default
    named = set(compose["volumes"])
    for name in ("chroma", "redis", "retrieval", "tools", "agent"):
        for volume in services[name]["volumes"]:
            source = volume["source"] if isinstance(volume, dict) else volume.split(":", 1)[0]
            assert source in named, (name, volume)
    raw = (REPO_ROOT / "docker-compose.yml").read_text()
    assert "OPENAI_API_KEY: ${OPENAI_API_KEY:-}" in raw
    assert re.search(r"sk-[A-Za-z0-9]{8,}", raw) is None  # no real-looking key committed


def test_compose_refuses_to_start_without_credentials() -> None:
    """No AUTH_CREDENTIALS_FILE: `config` (and so `up`) stops with a message that says what to set."""
    result = _run(_compose_binary(), "-f", "docker-compose.yml", "config", "-q", env=_compose_env())
    assert result.returncode != 0
    assert "set AUTH_CREDENTIALS_FILE to the JSON file of role tokens" in result.stderr


def test_compose_gives_every_service_the_credentials_secret(
    compose: dict[str, Any], credentials_file: Path
) -> None:
    assert compose["secrets"] == {"auth_credentials": {"file": str(credentials_file)}}
    services = compose["services"]
    for name in COMPOSE_CALLERS:
        service = services[name]
        assert service["environment"]["AUTH_CREDENTIALS_FILE"] == CREDENTIALS_SECRET_PATH, name
        sources = [item["source"] if isinstance(item, dict) else item for item in service["secrets"]]
        assert sources == ["auth_credentials"], name
        assert not {key for key in service["environment"] if key.startswith("AUTH_TOKENS_")}, name
        assert service["environment"].get("AUTH_DISABLED", "false") == "false", name


def test_compose_runs_the_images_locked_down_as_image_check_does(compose: dict[str, Any]) -> None:
    """`make image-check` starts every image with a read-only root filesystem (tmpfs /tmp, /data a volume), no
    capabilities and no privilege escalation; compose runs them the same way."""
    services = compose["services"]
    for name in COMPOSE_CALLERS:
        service = services[name]
        assert service["read_only"] is True, name
        assert service["tmpfs"] == ["/tmp"], name
        assert service["cap_drop"] == ["ALL"], name
        assert service["security_opt"] == ["no-new-privileges:true"], name
    for name in SERVICES:
        targets = [
            item["target"] if isinstance(item, dict) else item.split(":")[1]
            for item in services[name]["volumes"]
        ]
        assert targets == ["/data"], name


def test_compose_has_no_literal_secrets() -> None:
    """Every credential-like setting in the file is interpolated from the environment or points at a mounted
    secret; none is written in it."""
    raw_text = (REPO_ROOT / "docker-compose.yml").read_text()
    raw = yaml.safe_load(raw_text)
    checked = 0
    for name, service in raw["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if not SECRET_NAME.search(key):
                continue
            checked += 1
            text = str(value)
            assert text.startswith("${") or text.startswith("/run/secrets/"), (name, key, text)
    assert checked >= 5
    assert "Bearer " not in raw_text
    assert re.search(r"AUTH_TOKENS_\w+\s*[:=]\s*[^\s$]", raw_text) is None


def _published(port: str | dict[str, Any]) -> tuple[str, str]:
    """(host ip, host port) of a compose port entry."""
    if isinstance(port, dict):
        return str(port.get("host_ip", "")), str(port.get("published", ""))
    parts = port.split("/")[0].split(":")
    return (parts[0], parts[1]) if len(parts) == 3 else ("", parts[0] if len(parts) == 2 else "")


def test_compose_publishes_only_the_agent_and_only_on_loopback(compose: dict[str, Any]) -> None:
    services = compose["services"]
    published = {name: service["ports"] for name, service in services.items() if service.get("ports")}
    default_profile = {name for name in published if not services[name].get("profiles")}
    assert default_profile == {"agent"}
    assert [_published(port) for port in published["agent"]] == [("127.0.0.1", "50051")]
    for name, ports in published.items():  # the observability extras too
        for port in ports:
            assert _published(port)[0] == "127.0.0.1", (name, port)


def test_compose_agent_port_can_be_opened_on_purpose(credentials_file: Path) -> None:
    env = _compose_env(AUTH_CREDENTIALS_FILE=str(credentials_file), AGENT_BIND="0.0.0.0", AGENT_PORT="6000")
    result = _run(_compose_binary(), "-f", "docker-compose.yml", "config", env=env)
    assert result.returncode == 0, result.stderr
    agent = yaml.safe_load(result.stdout)["services"]["agent"]
    assert [_published(port) for port in agent["ports"]] == [("0.0.0.0", "6000")]


# ---------------------------------------------------------------------------------------------------------
# Kubernetes


def _render(path: str) -> list[dict[str, Any]]:
    result = _run(_tool("kubectl"), "kustomize", path)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return _render("deploy/k8s/base")


@pytest.fixture(scope="module")
def overlay() -> list[dict[str, Any]]:
    return _render("deploy/k8s/overlays/openai")


def _by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def _containers(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for kind in ("Deployment", "StatefulSet", "Job"):
        for name, doc in _by_kind(docs, kind).items():
            pod = doc["spec"]["template"]["spec"]
            for container in pod["containers"]:
                yield name, pod, container


@pytest.mark.parametrize("which", ["base", "overlay"])
def test_every_rendered_object_validates_against_the_kubernetes_schemas(which: str, request: Any) -> None:
    docs: list[dict[str, Any]] = request.getfixturevalue(which)
    assert len(docs) >= 15
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]


def test_the_schema_check_catches_a_misspelt_probe_field(base: list[dict[str, Any]]) -> None:
    """Guards the check above: strict validation really rejects what a cluster would silently drop."""
    deployment = copy.deepcopy(_by_kind(base, "Deployment")["retrieval"])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["grpc"]["serviceName"] = container["readinessProbe"]["grpc"].pop("service")
    with pytest.raises(kubernetes_validate.ValidationError, match="serviceName"):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)


def test_deployments_have_native_grpc_probes_on_the_right_ports(base: list[dict[str, Any]]) -> None:
    deployments = _by_kind(base, "Deployment")
    assert set(deployments) == set(SERVICES)
    for name, (port, full_name, var) in SERVICES.items():
        (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        ports = {item["name"]: item["containerPort"] for item in container["ports"]}
        assert ports == {"grpc": port, "metrics": 9464}
        env = {item["name"]: item.get("value") for item in container["env"]}
        assert env[var] == f"0.0.0.0:{port}"
        assert container["readinessProbe"]["grpc"] == {"port": port, "service": full_name}
        assert container["livenessProbe"]["grpc"] == {"port": port}
        assert container["startupProbe"]["grpc"] == {"port": port}
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert set(container[probe]) & {"exec", "httpGet", "tcpSocket"} == set()
        assert container["image"].startswith(f"support-agent/{name}:")
        assert container["resources"]["requests"]["cpu"]
        assert container["resources"]["limits"]["memory"]


def test_compose_and_kubernetes_probe_what_each_image_healthcheck_probes(
    compose: dict[str, Any], base: list[dict[str, Any]]
) -> None:
    """The health checks of compose and the readiness probes of Kubernetes ask the same port and gRPC service
    as the HEALTHCHECK that `make image-check` runs in each image (read from the Dockerfile, not restated)."""
    stages = _dockerfile_stages()
    deployments = _by_kind(base, "Deployment")
    for name in SERVICES:
        (line,) = [line for line in stages[name] if line.startswith("HEALTHCHECK")]
        argv = json.loads(line.split(" CMD ", 1)[1])
        assert argv[:3] == ["python", "-m", "service_kit.healthcheck"]
        address, service_name = argv[3], argv[4]
        assert compose["services"][name]["healthcheck"]["test"] == ["CMD", *argv]
        (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        port = int(address.rsplit(":", 1)[1])
        assert container["readinessProbe"]["grpc"] == {"port": port, "service": service_name}
        env = {item["name"]: item.get("value") for item in container["env"]}
        assert env[SERVICES[name][2]] == compose["services"][name]["environment"][SERVICES[name][2]]


def test_services_are_headless_so_grpc_clients_round_robin(base: list[dict[str, Any]]) -> None:
    services = _by_kind(base, "Service")
    deployments = _by_kind(base, "Deployment")
    for name, (port, _full_name, _var) in SERVICES.items():
        spec = services[name]["spec"]
        assert spec["clusterIP"] == "None"
        assert {
            "name": "grpc",
            "port": port,
            "targetPort": "grpc",
            "appProtocol": "kubernetes.io/h2c",
        } in spec["ports"]
        pod_labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert spec["selector"].items() <= pod_labels.items()


def test_agent_dials_the_headless_services_by_dns_name(base: list[dict[str, Any]]) -> None:
    (config,) = _by_kind(base, "ConfigMap").values()
    data = config["data"]
    assert data["RETRIEVAL_TARGET"] == f"dns:///retrieval.{NAMESPACE}.svc.cluster.local:50052"
    assert data["TOOLS_TARGET"] == f"dns:///tools.{NAMESPACE}.svc.cluster.local:50053"
    assert data["CHROMA_HOST"] == f"chroma.{NAMESPACE}.svc.cluster.local"
    (container,) = _by_kind(base, "Deployment")["agent"]["spec"]["template"]["spec"]["containers"]
    refs = {item["name"]: item.get("valueFrom", {}) for item in container["env"]}
    assert refs["RETRIEVAL_ADDR"]["configMapKeyRef"] == {
        "name": config["metadata"]["name"],
        "key": "RETRIEVAL_TARGET",
    }
    assert refs["TOOLS_ADDR"]["configMapKeyRef"] == {
        "name": config["metadata"]["name"],
        "key": "TOOLS_TARGET",
    }
    secrets = _by_kind(base, "Secret")
    assert refs["REDIS_URL"]["secretKeyRef"]["name"] in secrets  # generated name with hash suffix, rewritten
    assert refs["OPENAI_API_KEY"]["secretKeyRef"] == {
        "name": "openai-credentials",
        "key": "OPENAI_API_KEY",
        "optional": True,
    }


def test_hpa_scales_agent_and_retrieval_apart(base: list[dict[str, Any]]) -> None:
    hpas = _by_kind(base, "HorizontalPodAutoscaler")
    assert set(hpas) == {"agent", "retrieval"}
    for name, hpa in hpas.items():
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert hpa["spec"]["minReplicas"] >= 2
        # The HPA owns the replica count; the Deployment must not fight it on every apply.
        assert "replicas" not in _by_kind(base, "Deployment")[name]["spec"]
    assert _by_kind(base, "Deployment")["tools"]["spec"]["replicas"] == 1


def test_pods_run_as_non_root_with_a_locked_down_container(base: list[dict[str, Any]]) -> None:
    seen = set()
    for name, pod, container in _containers(base):
        seen.add(name)
        assert pod["enableServiceLinks"] is False
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        if name in SERVICES or name == "ingest-kb":
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["runAsUser"] == 10001
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
            assert ({"/data", "/tmp"} if name in SERVICES else {"/tmp"}) <= mounts
    assert seen == {"agent", "retrieval", "tools", "chroma", "redis", "ingest-kb"}


def test_openai_overlay_sets_the_endpoint_and_requires_the_key(overlay: list[dict[str, Any]]) -> None:
    (config,) = _by_kind(overlay, "ConfigMap").values()
    assert config["data"]["OPENAI_BASE_URL"].startswith("https://")
    assert config["data"]["OPENAI_MODEL"]
    assert config["data"]["RETRIEVAL_TARGET"].startswith("dns:///retrieval.")  # merged, not replaced
    agent = _by_kind(overlay, "Deployment")["agent"]["spec"]["template"]["spec"]
    (container,) = agent["containers"]
    key = next(item for item in container["env"] if item["name"] == "OPENAI_API_KEY")
    assert key["valueFrom"]["secretKeyRef"]["optional"] is False
    envs = [item["name"] for item in container["env"]]
    assert len(envs) == len(set(envs))
    assert agent["terminationGracePeriodSeconds"] == 90
    # The key itself is never in the manifests.
    assert all(doc["kind"] != "Secret" or "OPENAI_API_KEY" not in doc.get("data", {}) for doc in overlay)


AUTH_SECRET = "support-agent-auth"
# Who gets which role's tokens: the roles each server admits, plus the role it calls others as.
ROLE_TOKENS = {
    "agent": {"backend", "staff", "service"},
    "tools": {"service", "backend", "staff"},
    "retrieval": {"service", "backend", "staff", "kb_admin"},
    "ingest-kb": {"kb_admin"},
}


@pytest.mark.parametrize("which", ["base", "overlay"])
def test_every_service_reads_its_role_tokens_from_the_auth_secret(which: str, request: Any) -> None:
    docs: list[dict[str, Any]] = request.getfixturevalue(which)
    containers = {name: container for name, _pod, container in _containers(docs)}
    for name, roles in ROLE_TOKENS.items():
        env = {item["name"]: item for item in containers[name]["env"]}
        tokens = {key: item for key, item in env.items() if key.startswith("AUTH_TOKENS_")}
        assert set(tokens) == {f"AUTH_TOKENS_{role.upper()}" for role in roles}, name
        for key, item in tokens.items():
            assert "value" not in item, (name, key)
            assert item["valueFrom"]["secretKeyRef"] == {"name": AUTH_SECRET, "key": key[12:].lower()}, name
        assert "AUTH_DISABLED" not in env, name


@pytest.mark.parametrize("which", ["base", "overlay"])
def test_manifests_carry_no_credentials_and_expose_nothing_outside_the_cluster(
    which: str, request: Any
) -> None:
    docs: list[dict[str, Any]] = request.getfixturevalue(which)
    # The auth Secret is created by the operator, never rendered from these files.
    assert AUTH_SECRET not in _by_kind(docs, "Secret")
    for doc in _by_kind(docs, "Secret").values():
        values = {**doc.get("data", {}), **doc.get("stringData", {})}
        assert not {key for key in values if key.startswith("AUTH_") or key in ROLE_TOKENS["retrieval"]}
    for name, _pod, container in _containers(docs):
        for item in container.get("env", []):
            if SECRET_NAME.search(item["name"]):
                assert "value" not in item, (name, item["name"])  # from a Secret, never a literal
    for service in _by_kind(docs, "Service").values():
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", service["metadata"]["name"]
    assert not _by_kind(docs, "Ingress")


def test_ingest_job_loads_the_sample_kb_through_the_headless_service(base: list[dict[str, Any]]) -> None:
    job = _by_kind(base, "Job")["ingest-kb"]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert (
        container["image"]
        == _by_kind(base, "Deployment")["retrieval"]["spec"]["template"]["spec"]["containers"][0]["image"]
    )
    assert container["command"] == ["support-ingest"]
    assert container["args"] == [
        "--if-empty",
        "--quiet",
        "--addr",
        f"dns:///retrieval.{NAMESPACE}.svc.cluster.local:50052",
        "/app/kb",
    ]
    assert pod["restartPolicy"] == "OnFailure"
    assert job["spec"]["ttlSecondsAfterFinished"] > 0


def test_network_policies_let_only_the_callers_in(base: list[dict[str, Any]]) -> None:
    policies = _by_kind(base, "NetworkPolicy")
    pods = {name: pod for name, pod, _container in _containers(base)}
    labels = {
        doc["metadata"]["name"]: doc["spec"]["template"]["metadata"]["labels"]
        for kind in ("Deployment", "StatefulSet", "Job")
        for doc in _by_kind(base, kind).values()
    }
    assert set(pods) == set(labels)
    expected = {  # target → (port, callers)
        "retrieval": (50052, {"agent", "ingest-kb"}),
        "tools": (50053, {"agent"}),
        "chroma": (8000, {"retrieval"}),
        "redis": (6379, {"agent"}),
    }
    for target, (port, callers) in expected.items():
        spec = policies[target]["spec"]
        assert spec["podSelector"]["matchLabels"].items() <= labels[target].items()
        (rule,) = [rule for rule in spec["ingress"] if {"port": port} in rule.get("ports", [])]
        allowed = {
            name
            for name, pod_labels in labels.items()
            for peer in rule["from"]
            if peer["podSelector"]["matchLabels"].items() <= pod_labels.items()
        }
        assert allowed == callers, target


# ---------------------------------------------------------------------------------------------------------
# Build context


def _dockerignore_patterns() -> list[str]:
    lines = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _ignored(relative: str, patterns: list[str]) -> bool:
    """.dockerignore semantics for the patterns used here: a path is out when it or a parent matches."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    for pattern in patterns:
        for candidate in candidates:
            if fnmatch.fnmatchcase(candidate, pattern):
                return True
            if pattern.startswith("**/") and fnmatch.fnmatchcase(candidate.rsplit("/", 1)[-1], pattern[3:]):
                return True
    return False


def test_build_context_generates_stubs_and_imports_every_service(tmp_path: Path) -> None:
    """What `COPY . .` brings in (per .dockerignore) is enough: the Dockerfile's protoc step works on it and
    the three entry modules and the health probe import from it alone."""
    patterns = _dockerignore_patterns()
    context = tmp_path / "context"
    for root, dirs, files in os.walk(REPO_ROOT):
        base = Path(root).relative_to(REPO_ROOT)
        dirs[:] = [name for name in dirs if not _ignored((base / name).as_posix(), patterns)]
        for name in files:
            relative = (base / name).as_posix()
            if not _ignored(relative, patterns):
                target = context / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(root) / name, target)
    assert not (context / ".venv").exists() and not (context / "tests").exists()
    assert (context / "kb").is_dir() and any((context / "kb").iterdir())

    protos = sorted(
        str(path.relative_to(context)) for path in (context / "protos/support/v1").glob("*.proto")
    )
    protoc = [sys.executable, "-m", "grpc_tools.protoc", "-I", "protos"]
    protoc += ["--python_out=.", "--grpc_python_out=.", "--pyi_out=.", *protos]
    result = subprocess.run(protoc, cwd=context, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    (context / "support/__init__.py").touch()
    (context / "support/v1/__init__.py").touch()

    modules = [
        "agent_service.server",
        "retrieval_service.server",
        "tools_service.server",
        "service_kit.healthcheck",
    ]
    script = (
        "import importlib, sys\n"
        f"for name in {[*modules, 'support.v1.agent_pb2_grpc']!r}:\n"
        "    module = importlib.import_module(name)\n"
        f"    assert module.__file__.startswith({str(context)!r}), module.__file__\n"
    )
    env = {**os.environ, "PYTHONPATH": str(context)}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]

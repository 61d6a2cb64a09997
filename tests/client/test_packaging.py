"""clients/python builds into a wheel carrying the generated stubs, installs without the repo, and imports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow

CLIENT_DIR = REPO_ROOT / "clients" / "python"
PIP = (sys.executable, "-m", "pip", "--disable-pip-version-check", "-q")
MYPY = (
    sys.executable,
    "-m",
    "mypy",
    "--strict",
    "--follow-imports=silent",
    "--ignore-missing-imports",
    "--config-file=",
)
WHEEL = (*PIP, "wheel", "--no-deps", "--no-build-isolation", "--no-index")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of clients/python beside a copy of protos/ (the repository's layout), so the
    build's own artefacts (build/, *.egg-info) never land in the working tree."""
    root = tmp_path_factory.mktemp("client-build")
    source = root / "clients" / "python"
    shutil.copytree(
        CLIENT_DIR, source, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__")
    )
    shutil.copytree(REPO_ROOT / "protos", root / "protos")
    out = root / "dist"
    subprocess.run(
        [*WHEEL, "-w", str(out), str(source)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (built,) = out.glob("support_agent_client-*.whl")
    return built


def test_wheel_carries_the_client_and_the_generated_stubs(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())

    expected = {
        "support_agent_client/__init__.py",
        "support_agent_client/py.typed",
        "support/__init__.py",
        "support/py.typed",
        "support/v1/__init__.py",
    }
    for proto in ("agent", "types", "tools", "retrieval"):
        expected |= {
            f"support/v1/{proto}_pb2.py",
            f"support/v1/{proto}_pb2.pyi",
            f"support/v1/{proto}_pb2_grpc.py",
        }
    assert expected <= names, sorted(expected - names)
    metadata = next(name for name in names if name.endswith(".dist-info/METADATA"))
    requires = [
        line
        for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
        if line.startswith("Requires-Dist")
    ]
    assert sorted(requires) == ["Requires-Dist: grpcio<2,>=1.85.1", "Requires-Dist: protobuf<8,>=7.35.1"]


def test_generated_stubs_match_the_protos(wheel: Path) -> None:
    """The wheel's descriptors are the repository's contract: same services and methods as protos/."""
    text = zipfile.ZipFile(wheel).read("support/v1/agent_pb2_grpc.py").decode()
    for method in ("Chat", "StreamChat", "GetConversation"):
        assert f"/support.v1.AgentService/{method}" in text
    assert "from support.v1 import agent_pb2" in text, "package-mirroring imports (grpc/grpc#29390)"


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel installed with `pip install --target` (no dependencies: grpcio and protobuf are in this venv)."""
    target = tmp_path_factory.mktemp("client-site")
    subprocess.run(
        [*PIP, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return target


def test_installed_wheel_imports_outside_the_repository(installed: Path, tmp_path: Path) -> None:
    target = installed
    probe = (
        "import support.v1.agent_pb2 as pb, support_agent_client as c\n"
        "from support_agent_client import AgentClient, ChatResponse, InvalidRequest\n"
        "assert ChatResponse is pb.ChatResponse\n"
        "assert issubclass(InvalidRequest, c.AgentError)\n"
        "print(pb.__file__)\n"
        "print(c.__file__)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    stub_file, client_file = result.stdout.split()
    # Imported from the installed copy, not from the repository's own generated support/ package.
    assert Path(stub_file).is_relative_to(target)
    assert Path(client_file).is_relative_to(target)


def test_the_build_needs_the_protos(tmp_path: Path) -> None:
    source = tmp_path / "clients" / "python"
    shutil.copytree(
        CLIENT_DIR, source, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__")
    )
    result = subprocess.run(
        [*WHEEL, "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode != 0
    assert "no .proto files found" in result.stdout + result.stderr


def test_sdist_carries_the_protos_and_builds_on_its_own(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    source = root / "clients" / "python"
    shutil.copytree(
        CLIENT_DIR, source, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__")
    )
    shutil.copytree(REPO_ROOT / "protos", root / "protos")
    sdist_dir = tmp_path / "sdist"
    build_sdist = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    subprocess.run(
        [sys.executable, "-c", build_sdist, str(sdist_dir)],
        cwd=source,
        check=True,
        capture_output=True,
        timeout=120,
    )
    (archive,) = sdist_dir.glob("support_agent_client-*.tar.gz")
    unpacked = tmp_path / "elsewhere"
    shutil.unpack_archive(archive, unpacked)
    (sdist_root,) = unpacked.iterdir()
    assert (sdist_root / "protos" / "support" / "v1" / "agent.proto").is_file()

    # No ../../protos next to the unpacked sdist: the copy inside it is what the build uses.
    subprocess.run(
        [*WHEEL, "-w", str(tmp_path / "dist"), str(sdist_root)], check=True, capture_output=True, timeout=120
    )
    (built,) = (tmp_path / "dist").glob("support_agent_client-*.whl")
    assert "support/v1/agent_pb2.py" in zipfile.ZipFile(built).namelist()


TYPED_USER = """
from support_agent_client import AgentClient, InvalidRequest


async def main() -> None:
    async with AgentClient("127.0.0.1:50051", customer_id="cust-001") as client:
        response = await client.chat("c", "hi")
        reveal_type(response)
        wrong: int = response.reply
        async for event in client.stream_chat("c", "hi"):
            reveal_type(event.final.usage.prompt_tokens)
        try:
            await client.get_conversation("c")
        except InvalidRequest as error:
            reveal_type(error.fields)
"""


def test_installed_package_is_typed_for_mypy(installed: Path, tmp_path: Path) -> None:
    """py.typed and the generated .pyi reach a caller's mypy: real types, and a wrong one is caught."""
    (tmp_path / "user.py").write_text(TYPED_USER)
    result = subprocess.run(
        [*MYPY, "--cache-dir", str(tmp_path / "cache"), "user.py"],
        cwd=tmp_path,
        env={**os.environ, "MYPYPATH": str(installed)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    user_lines = [line for line in result.stdout.splitlines() if line.startswith("user.py:")]

    assert 'Revealed type is "support.v1.agent_pb2.ChatResponse"' in user_lines[0]
    assert "Incompatible types in assignment" in user_lines[1]
    assert 'Revealed type is "int"' in user_lines[2]
    assert 'Revealed type is "tuple[str, ...]"' in user_lines[3]
    assert len(user_lines) == 4, result.stdout

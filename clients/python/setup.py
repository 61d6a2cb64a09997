"""Build hook: generate the `support.v1` stubs from the repository's protos into the build directory.

pip builds this directory in place (a local path or a git URL with `#subdirectory=clients/python`), so the protos
are found at `../../protos`. An sdist carries a copy under `protos/`; `SUPPORT_AGENT_PROTOS` overrides both.
Nothing generated is written into the source tree.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from setuptools import setup  # type: ignore[import-untyped]
from setuptools.command.build_py import build_py  # type: ignore[import-untyped]
from setuptools.command.sdist import sdist  # type: ignore[import-untyped]

HERE = Path(__file__).resolve().parent
PROTO_PACKAGE = Path("support") / "v1"


def proto_root() -> Path:
    """The include directory that holds `support/v1/*.proto`."""
    override = os.environ.get("SUPPORT_AGENT_PROTOS")
    candidates = [Path(override)] if override else [HERE / "protos", HERE.parent.parent / "protos"]
    for candidate in candidates:
        if any((candidate / PROTO_PACKAGE).glob("*.proto")):
            return candidate
    looked = ", ".join(str(candidate / PROTO_PACKAGE) for candidate in candidates)
    raise RuntimeError(f"support-agent-client: no .proto files found (looked in {looked})")


def generate_stubs(root: Path, out: Path) -> list[Path]:
    """Runs grpc_tools.protoc (python, grpc and .pyi outputs) into `out`; returns the files written."""
    import grpc_tools  # type: ignore[import-untyped]  # build requirement, see pyproject.toml
    from grpc_tools import protoc

    protos = sorted((root / PROTO_PACKAGE).glob("*.proto"))
    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    out.mkdir(parents=True, exist_ok=True)
    before = set(out.rglob("*"))
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{root}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            f"--pyi_out={out}",
            *(str(proto) for proto in protos),
        ]
    )
    if code != 0:
        raise RuntimeError(f"support-agent-client: protoc failed with exit code {code}")
    markers = [
        out / "support" / "__init__.py",
        out / PROTO_PACKAGE / "__init__.py",
        out / "support" / "py.typed",
    ]
    for marker in markers:
        marker.touch()
    written = {path for path in out.rglob("*") if path.is_file()} - before
    return sorted(written | set(markers))


class BuildPyWithStubs(build_py):  # type: ignore[misc]
    """build_py that also emits support/v1/*_pb2.py, *_pb2.pyi and *_pb2_grpc.py into build_lib."""

    def run(self) -> None:
        super().run()
        self._stubs = [] if self.dry_run else generate_stubs(proto_root(), Path(self.build_lib))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs: list[str] = super().get_outputs(include_bytecode)
        return outputs + [str(path) for path in getattr(self, "_stubs", [])]


class SdistWithProtos(sdist):  # type: ignore[misc]
    """sdist that carries the protos, so building the wheel from the sdist alone works."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        target = Path(base_dir) / "protos" / PROTO_PACKAGE
        target.mkdir(parents=True, exist_ok=True)
        for proto in (proto_root() / PROTO_PACKAGE).glob("*.proto"):
            shutil.copy2(proto, target / proto.name)


setup(cmdclass={"build_py": BuildPyWithStubs, "sdist": SdistWithProtos})

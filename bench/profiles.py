"""Summaries of py-spy profiles (`--profile DIR`): where each service's threads spend their samples.

py-spy records with `--threads --idle -f raw`, so every line of the output is
`thread (0x..);frame;frame;... count` including samples of waiting threads. The summary gives, per thread,
its share of samples and how many of them were idle (in epoll/select/lock waits), then the heaviest frames
by inclusive and by self samples over the busy samples.

    python -m bench.profiles DIR/agent-*.txt
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Leaf frames of a thread that is waiting, not working. grpc's `_poll_wrapper` thread shows as a bare
# `run (threading.py)` leaf: it sits in native poll.
_IDLE_MARKERS = (
    "select (",
    "poll (",
    "epoll",
    "_worker (concurrent/futures/thread.py",
    "wait (threading.py",
    "run (threading.py",
)
_FRAME = re.compile(r"^(?P<function>.*?) \((?P<where>[^()]*)\)$")


# Inclusive groups: a busy sample counts for a group when any frame of its stack is in one of the paths.
GROUPS: dict[str, tuple[str, ...]] = {
    "openai client (request building, parsing)": ("openai/",),
    "HTTP client (httpx2/aiohttp)": ("httpx2/", "aiohttp/client", "aiohttp/connector", "aiohttp/http_"),
    "gRPC (grpc.aio, protobuf)": ("grpc/", "_pb2", "google/protobuf"),
    "logging (JSON, redaction)": ("logging/", "jsonlog.py", "redact.py"),
    "guardrails": ("guardrails.py",),
    "escalation policy": ("escalation_policy.py",),
    "conversation store (SQLite)": ("sqlite_store.py", "sqlite3"),
    "embedding (onnxruntime, tokenizer)": ("onnxruntime", "embedding.py", "tokenizers"),
    "ChromaDB query": ("chromadb/",),
    "tracing and metrics libraries": ("opentelemetry", "prometheus_client"),
    "imports (start-up)": ("<frozen importlib._bootstrap",),
}


@dataclass
class ProfileSummary:
    total: int = 0
    threads: Counter[str] = field(default_factory=Counter)
    idle_by_thread: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)
    self_time: Counter[str] = field(default_factory=Counter)
    groups: Counter[str] = field(default_factory=Counter)

    @property
    def busy(self) -> int:
        return self.total - sum(self.idle_by_thread.values())


def _short(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    where = match.group("where")
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{match.group('function')} ({where})"


def is_idle(frames: Sequence[str]) -> bool:
    leaf = frames[-1] if frames else ""
    return any(marker in leaf for marker in _IDLE_MARKERS)


def summarise(lines: Sequence[str], thread_filter: str = "") -> ProfileSummary:
    """Counts samples; with `thread_filter`, only threads whose label contains it (e.g. "MainThread")."""
    summary = ProfileSummary()
    for line in lines:
        stack, _, count_text = line.rstrip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = frames[0] if frames[0].startswith(("thread", "process")) else "?"
        if thread_filter and thread_filter not in thread:
            continue
        frames = [frame for frame in frames if not frame.startswith(("thread", "process"))]
        summary.total += count
        summary.threads[thread] += count
        if is_idle(frames):
            summary.idle_by_thread[thread] += count
            continue
        for frame in {_short(frame) for frame in frames}:
            summary.inclusive[frame] += count
        if frames:
            summary.self_time[_short(frames[-1])] += count
        for group, paths in GROUPS.items():
            if any(path in frame for frame in frames for path in paths):
                summary.groups[group] += count
    return summary


def render(summary: ProfileSummary, top: int = 15) -> str:
    if not summary.total:
        return "(no samples)"
    lines = [f"{summary.total} samples, {summary.busy} busy ({100 * summary.busy / summary.total:.0f}%)"]
    for thread, count in summary.threads.most_common(6):
        idle = summary.idle_by_thread[thread]
        lines.append(f"  {thread}: {count} samples, {100 * (count - idle) / count:.0f}% busy")
    busy = max(1, summary.busy)
    lines.append("groups (inclusive share of busy samples; a sample may count in several):")
    lines += [f"  {100 * n / busy:5.1f}%  {group}" for group, n in summary.groups.most_common()]
    lines.append("inclusive (share of busy samples):")
    lines += [f"  {100 * n / busy:5.1f}%  {frame}" for frame, n in summary.inclusive.most_common(top)]
    lines.append("self:")
    lines += [f"  {100 * n / busy:5.1f}%  {frame}" for frame, n in summary.self_time.most_common(top)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Summarise py-spy raw profiles written by `python -m bench --profile`."
    )
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument(
        "--thread", default="", help="only threads whose label contains this, e.g. MainThread"
    )
    args = parser.parse_args(argv)
    for path in args.files:
        print(f"== {path}")
        print(render(summarise(path.read_text(errors="replace").splitlines(), args.thread), args.top))


if __name__ == "__main__":
    main()

"""retrieval: `python -m bench.retrieval` (the retrieval service's own benchmark: ingest throughput, Search
latency at 100k chunks), run as a subprocess and read back."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from bench.report import Figure, Target
from bench.scenarios.context import (
    BenchContext,
)
from bench.stack import REPO_ROOT

RETRIEVAL_TIMEOUT_SECONDS = 600.0


async def run_retrieval(ctx: BenchContext) -> list[Figure]:
    out = ctx.run_dir / "retrieval.json"
    command = [sys.executable, "-m", "bench.retrieval", *ctx.settings.retrieval_args, "--json", str(out)]
    log = ctx.stack.logs_dir / "bench-retrieval.log"
    with log.open("ab") as sink:
        process = await asyncio.create_subprocess_exec(*command, cwd=REPO_ROOT, stdout=sink, stderr=sink)
        try:
            await asyncio.wait_for(process.wait(), RETRIEVAL_TIMEOUT_SECONDS)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise RuntimeError(
                f"bench.retrieval did not finish in {RETRIEVAL_TIMEOUT_SECONDS:.0f} s"
            ) from None
    # It exits 1 when one of its own targets is missed; only a missing result is a failure.
    if not out.is_file():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-5:])
        raise RuntimeError(f"bench.retrieval exited {process.returncode} without results; see {log}:\n{tail}")
    result: dict[str, Any] = json.loads(out.read_text())
    chunks = int(result.get("collection_chunks", 0))
    raw = result.get("raw_embedding_chunks_per_s")
    size = f"{chunks} chunks in the collection"
    return [
        Figure(
            "retrieval",
            f"ingest via gRPC ({result.get('ingested_chunks', 0)} chunks)",
            "chunks/s",
            result.get("ingest_chunks_per_s"),
            raw,
            "raw embedding, model only",
            Target(">=", 0.9 * raw) if raw else None,
            note="target: >= 90% of raw embedding throughput",
            details=result,
        ),
        Figure(
            "retrieval",
            f"Search p50 at {chunks} chunks",
            "ms",
            result.get("search_p50_ms"),
            None,
            "",
            Target("<=", 8.0),
            note=size,
        ),
        Figure(
            "retrieval",
            f"Search p99 at {chunks} chunks",
            "ms",
            result.get("search_p99_ms"),
            None,
            "",
            Target("<=", 20.0),
            note=size,
        ),
    ]

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

RETRIEVAL_TIMEOUT_SECONDS = 1800.0


async def run_retrieval(ctx: BenchContext) -> list[Figure]:
    # Imports chromadb and the retrieval service: only when this scenario runs.
    from bench.retrieval import FLOOR_TOP_K, SEARCH_FLOOR_RATIO_TARGET

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
    floor = result.get("search_floor_p50_ms")
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
            f"Search floor at {chunks} chunks: embed one query + Chroma query, p50",
            "ms",
            floor,
            note=f"in-process, k={FLOOR_TOP_K}, interleaved with the Search calls; {size}",
        ),
        Figure(
            "retrieval",
            f"Search p50 at {chunks} chunks",
            "ms",
            result.get("search_p50_ms"),
            floor,
            "in-process floor",
            Target("<=", SEARCH_FLOOR_RATIO_TARGET * floor) if floor else None,
            note=f"target: <= {SEARCH_FLOOR_RATIO_TARGET:g} x the floor; {size}",
        ),
        Figure(
            "retrieval",
            f"Search p50 / floor at {chunks} chunks",
            "x",
            result.get("search_vs_floor_p50"),
            1.0,
            "in-process floor",
            Target("<=", SEARCH_FLOOR_RATIO_TARGET),
        ),
        Figure(
            "retrieval",
            f"Search throughput, one replica, {result.get('concurrent_searches')} in flight",
            "searches/s",
            result.get("concurrent_searches_per_s"),
            note=(
                f"{result.get('concurrent_cpu_ms_per_search')} ms CPU per search (server and client, one "
                f"process); mean query batch {result.get('mean_query_batch')}; {size}"
            ),
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

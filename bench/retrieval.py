"""Retrieval benchmark: `python -m bench.retrieval [--chunks N] [--ingest-chunks M] [--queries Q]`.

Through a real in-process retrieval server over gRPC with an embedded Chroma in a temporary folder:
1. raw embedding throughput: the model alone on every 4th batch of the same chunk texts and their sentences
   (what ingest embeds: retrieval_service.sentence_index), interleaved with step 2 so both see the same
   machine load (chunks/s);
2. ingest throughput: M single-chunk documents through IngestDocuments (validation, token-aware
   chunking, embedding, Chroma upsert), in requests of --batch-size documents (chunks/s);
3. the collection is then filled up to N chunks: the remaining N-M vectors are the real embeddings of the
   ingested chunks (and of their sentences, in the sentence collection) plus small Gaussian noise, each
   stored with the text of the chunk it copies (so the HNSW indexes hold realistic, clustered vectors and
   the BM25 index N real texts without running the model N times: 100k real chunks take over an hour on
   two cores); then the lexical index is built and the threshold calibrated (timed: "index build");
4. search latency: Q Search calls, one at a time, each including query embedding, the vector and the BM25
   search and their fusion (p50 / p99); interleaved with them (alternating which goes first), the Search
   floor: the same query embedded in this process and the same collection queried by that vector (k=4, the
   seed loop's query), so both see the same machine load;
5. throughput of one replica: --concurrency callers each sending Search after Search for
   --concurrent-seconds (searches/s, CPU of this process per search, mean query batch of the server's
   retrieval_service.query_batcher).
Prints a table with targets (ingest >= 90% of raw embedding throughput; Search p50 <= 1.3 x the floor
measured in the same run; p99 <= 20 ms at 100k) and PASS/MISS; --json writes the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import chromadb
import numpy as np
import numpy.typing as npt
from chromadb.config import Settings

from devstack.credentials import role_channel, shared_test_credentials
from retrieval_service import sentence_index
from retrieval_service.adapters.embedding import MiniLMEmbedding
from retrieval_service.config import Config
from retrieval_service.query_batcher import DEFAULT_MAX_BATCH
from retrieval_service.server import start_server
from support.v1 import retrieval_pb2, retrieval_pb2_grpc

INGEST_TARGET_RATIO = 0.90
# Search p50 against the floor (embed one query + Chroma query by vector, in-process) of the same run.
SEARCH_FLOOR_RATIO_TARGET = 1.3
FLOOR_TOP_K = 4
SEARCH_P99_TARGET_MS = 20.0

_TOPICS = (
    "refund",
    "return",
    "shipping",
    "express delivery",
    "password",
    "two-factor authentication",
    "gift card",
    "warranty",
    "order tracking",
    "cancellation",
    "payment",
    "invoice",
    "international order",
    "damaged item",
    "discount code",
    "privacy",
)
_WORDS = [
    "customer",
    "order",
    "item",
    "package",
    "delivery",
    "business",
    "days",
    "account",
    "settings",
    "support",
    "team",
    "store",
    "credit",
    "label",
    "carrier",
    "warehouse",
    "checkout",
    "address",
    "confirmation",
    "email",
    "receipt",
    "policy",
    "exchange",
    "replacement",
    "photo",
    "claim",
    "balance",
    "code",
    "instalment",
    "card",
    "bank",
    "statement",
    "security",
    "device",
    "backup",
    "browser",
    "app",
    "chat",
    "phone",
    "hours",
    "weekday",
]
_QUESTIONS = (
    "How long does express shipping take?",
    "Can I get a refund after 30 days?",
    "How do I reset my password?",
    "Where is my order?",
    "Do gift cards expire?",
    "How do I turn on two-factor authentication?",
    "My package arrived damaged, what now?",
    "Which payment methods can I use?",
    "How do I cancel an order?",
    "Do you ship internationally?",
)


def synthetic_article(rng: random.Random, index: int) -> str:
    """A help-centre style paragraph of roughly 200-240 word pieces (one chunk)."""
    topic = rng.choice(_TOPICS)
    sentences = [f"# {topic.title()} note {index}", ""]
    body: list[str] = []
    while len(" ".join(body).split()) < 150:
        words = rng.sample(_WORDS, 9)
        body.append(
            f"The {topic} {words[0]} {words[1]} takes {rng.randint(1, 30)} {words[2]} for {' '.join(words[3:])}."
        )
    sentences.append(" ".join(body))
    return "\n".join(sentences)


def _embedded_sentences(article: str) -> list[str]:
    """What ingest embeds beside a one-chunk article: its sentences, each with the title."""
    title = article.splitlines()[0].lstrip("# ")
    return [
        sentence_index.embedded_text(title, sentence) for sentence in sentence_index.sentences_of(article)
    ]


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def _noisy(rng: np.random.Generator, vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    noisy = vectors + rng.normal(0.0, 0.02, vectors.shape).astype(np.float32)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    return noisy


def _fill(data_dir: Path, collection: str, embedding: MiniLMEmbedding, total: int, seed: int) -> float:
    """Adds noisy copies of the stored chunks, and of their sentence vectors in the sentence collection
    (retrieval_service.sentence_index), until the collection holds `total` chunks; returns seconds."""
    client: Any = chromadb.PersistentClient(
        path=str(data_dir / "chroma"), settings=Settings(anonymized_telemetry=False)
    )
    store = client.get_collection(collection, embedding_function=embedding)
    existing = store.get(include=["embeddings", "documents", "metadatas"])
    base = np.asarray(existing["embeddings"], dtype=np.float32)
    texts = list(existing["documents"] or [])
    sentence_store = client.get_collection(
        collection + sentence_index.COLLECTION_SUFFIX, embedding_function=embedding
    )
    said = sentence_store.get(include=["embeddings"])
    sentence_vectors = dict(zip(said["ids"], np.asarray(said["embeddings"], dtype=np.float32), strict=True))
    base_sentences = [
        np.asarray(
            [
                sentence_vectors[sentence]
                for sentence in sentence_index.sentence_ids(
                    chunk_id, int((meta or {}).get(sentence_index.COUNT_KEY, 0) or 0)
                )
            ],
            dtype=np.float32,
        ).reshape(-1, base.shape[1])
        for chunk_id, meta in zip(existing["ids"], existing["metadatas"] or [], strict=True)
    ]
    missing = total - len(base)
    if missing <= 0:
        return 0.0
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    step = min(5000, int(client.get_max_batch_size()))
    for start in range(0, missing, step):
        size = min(step, missing - start)
        chosen = rng.integers(0, len(base), size)
        ids = [f"synthetic/{start + i}#0" for i in range(size)]
        metadatas = [
            {
                "doc_id": f"synthetic/{start + i}",
                "category": "synthetic",
                sentence_index.COUNT_KEY: len(base_sentences[int(index)]),
            }
            for i, index in enumerate(chosen)
        ]
        copies = [base_sentences[int(index)] for index in chosen]
        sentence_ids = [
            sentence
            for chunk_id, copied in zip(ids, copies, strict=True)
            for sentence in sentence_index.sentence_ids(chunk_id, len(copied))
        ]
        sentence_vectors_copied = _noisy(rng, np.concatenate(copies))
        for part in range(0, len(sentence_ids), step):
            sentence_store.upsert(
                ids=sentence_ids[part : part + step], embeddings=sentence_vectors_copied[part : part + step]
            )
        store.upsert(
            ids=ids,
            embeddings=_noisy(rng, base[chosen]),
            documents=[texts[int(index)] for index in chosen],
            metadatas=metadatas,
        )
        print(f"  filled {start + size}/{missing}", file=sys.stderr, end="\r", flush=True)
    print(file=sys.stderr)
    return time.perf_counter() - started


def _open_collection(data_dir: Path, collection: str, embedding: MiniLMEmbedding) -> Any:
    client: Any = chromadb.PersistentClient(
        path=str(data_dir / "chroma"), settings=Settings(anonymized_telemetry=False)
    )
    return client.get_collection(collection, embedding_function=embedding)


@dataclass(frozen=True)
class ConcurrentRun:
    per_second: float
    # CPU of this whole process (server and client) per search.
    cpu_ms_per_search: float
    latencies_ms: list[float]


async def _concurrent_searches(
    stub: retrieval_pb2_grpc.RetrievalServiceStub, queries: list[str], in_flight: int, seconds: float
) -> ConcurrentRun:
    """`in_flight` callers each sending Search after Search for `seconds`: searches/s of one replica."""
    latencies: list[float] = []
    stop_at = time.monotonic() + seconds

    async def caller(index: int) -> None:
        number = index
        while time.monotonic() < stop_at:
            request = retrieval_pb2.SearchRequest(query=queries[number % len(queries)], max_distance=2.0)
            begin = time.perf_counter()
            await stub.Search(request, timeout=30)
            latencies.append((time.perf_counter() - begin) * 1000)
            number += in_flight

    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.gather(*(caller(index) for index in range(in_flight)))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return ConcurrentRun(len(latencies) / elapsed, cpu * 1000 / len(latencies), latencies)


def _floor_query(store: Any, embedding: MiniLMEmbedding, query: str) -> None:
    """What any implementation must do for one query: embed it, query the vectors."""
    vector = embedding.embed_batch([query])
    store.query(query_embeddings=vector, n_results=FLOOR_TOP_K)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    ingest_chunks = min(args.ingest_chunks, args.chunks)
    embedding = (
        MiniLMEmbedding.shared() if args.threads == 1 else MiniLMEmbedding(intra_op_threads=args.threads)
    )
    articles = [synthetic_article(rng, i) for i in range(ingest_chunks)]
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        config = Config(
            addr="127.0.0.1:0",
            data_dir=data_dir,
            collection="bench",
            max_batch_documents=max(256, args.batch_size),
            auth=shared_test_credentials().server_auth(),
            query_batch=args.query_batch,
        )
        server = await start_server(config, embedding=embedding)
        try:
            embedding.embed(articles[:16])  # warm-up
            raw_seconds = 0.0
            raw_chunks = 0
            ingest_seconds = 0.0
            chunks = 0
            async with role_channel(f"127.0.0.1:{server.port}") as channel:
                stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)  # type: ignore[no-untyped-call]
                for number, start in enumerate(range(0, len(articles), args.batch_size)):
                    batch = articles[start : start + args.batch_size]
                    # Raw embedding of the same texts, interleaved with ingestion so that both see the same
                    # machine load (other processes on a shared box skew two separate phases differently).
                    if number % max(1, args.raw_every) == 0 and raw_chunks < max(1, args.raw_sample):
                        texts = batch + [sentence for text in batch for sentence in _embedded_sentences(text)]
                        begin = time.perf_counter()
                        await asyncio.to_thread(embedding.embed, texts)
                        raw_seconds += time.perf_counter() - begin
                        raw_chunks += len(batch)
                    documents = [
                        retrieval_pb2.Document(doc_id=f"bench/{start + i}.md", content=text)
                        for i, text in enumerate(batch)
                    ]
                    begin = time.perf_counter()
                    reply = await stub.IngestDocuments(
                        retrieval_pb2.IngestDocumentsRequest(documents=documents), timeout=600
                    )
                    ingest_seconds += time.perf_counter() - begin
                    chunks += sum(result.chunks_added for result in reply.results)
                    print(
                        f"  ingested {start + len(documents)}/{len(articles)}",
                        file=sys.stderr,
                        end="\r",
                        flush=True,
                    )
                print(file=sys.stderr)
                raw_rate = raw_chunks / raw_seconds
                ingest_rate = chunks / ingest_seconds

                fill_seconds = await asyncio.to_thread(
                    _fill, data_dir, "bench", embedding, args.chunks, args.seed
                )
                # Older servers have no lexical index to warm; time it where there is one.
                warm = getattr(server.kb, "warm", None)
                begin = time.perf_counter()
                if warm is not None:
                    await asyncio.to_thread(warm)
                index_seconds = time.perf_counter() - begin
                stats = await stub.GetStats(retrieval_pb2.GetStatsRequest(), timeout=120)

                latencies: list[float] = []
                floor: list[float] = []
                store = _open_collection(data_dir, "bench", embedding)
                queries = [
                    rng.choice(_QUESTIONS) + ("" if i < len(_QUESTIONS) else f" ({rng.choice(_WORDS)})")
                    for i in range(args.queries)
                ]
                for query in queries[:50]:  # warm-up: caches, HNSW pages, thread pool
                    await stub.Search(retrieval_pb2.SearchRequest(query=query, max_distance=2.0), timeout=10)
                    _floor_query(store, embedding, query)
                for number, query in enumerate(queries):
                    for search_first in (number % 2 == 0, number % 2 == 1):
                        begin = time.perf_counter()
                        if search_first:
                            request = retrieval_pb2.SearchRequest(query=query, max_distance=2.0)
                            await stub.Search(request, timeout=10)
                            latencies.append((time.perf_counter() - begin) * 1000)
                        else:
                            _floor_query(store, embedding, query)
                            floor.append((time.perf_counter() - begin) * 1000)
                batcher = server.kb.query_batcher
                jobs, batched = (batcher.jobs_run, batcher.queries_run) if batcher else (0, 0)
                concurrent = await _concurrent_searches(
                    stub, queries, args.concurrency, args.concurrent_seconds
                )
                if batcher:
                    jobs, batched = batcher.jobs_run - jobs, batcher.queries_run - batched
        finally:
            await server.stop(None)
    ratio = ingest_rate / raw_rate
    p50, p99 = _percentile(latencies, 0.50), _percentile(latencies, 0.99)
    floor_p50 = _percentile(floor, 0.50)
    return {
        "collection_chunks": stats.chunks,
        "ingested_chunks": chunks,
        "raw_embedding_chunks_per_s": round(raw_rate, 1),
        "ingest_chunks_per_s": round(ingest_rate, 1),
        "ingest_vs_raw": round(ratio, 3),
        "ingest_pass": ratio >= INGEST_TARGET_RATIO,
        "fill_seconds": round(fill_seconds, 1),
        "index_build_seconds": round(index_seconds, 1),
        "search_queries": len(latencies),
        "search_p50_ms": round(p50, 2),
        "search_p99_ms": round(p99, 2),
        "search_mean_ms": round(statistics.fmean(latencies), 2),
        "search_floor_p50_ms": round(floor_p50, 2),
        "search_floor_p99_ms": round(_percentile(floor, 0.99), 2),
        "search_vs_floor_p50": round(p50 / floor_p50, 3),
        "search_p50_pass": p50 <= SEARCH_FLOOR_RATIO_TARGET * floor_p50,
        "search_p99_pass": p99 <= SEARCH_P99_TARGET_MS,
        "concurrent_searches": args.concurrency,
        "concurrent_searches_per_s": round(concurrent.per_second, 1),
        "concurrent_cpu_ms_per_search": round(concurrent.cpu_ms_per_search, 3),
        "concurrent_p50_ms": round(_percentile(concurrent.latencies_ms, 0.50), 2),
        "query_batch": args.query_batch,
        "mean_query_batch": round(batched / jobs, 2) if jobs else 1.0,
        "embedding_threads": args.threads,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cpu_count": os.cpu_count(),
        "batch_size": args.batch_size,
    }


def _table(result: dict[str, Any]) -> str:
    def verdict(ok: bool) -> str:
        return "PASS" if ok else "MISS"

    rows = [
        ("raw embedding (model only)", f"{result['raw_embedding_chunks_per_s']:.1f} chunks/s", "-", ""),
        (
            f"ingest ({result['ingested_chunks']} chunks via gRPC)",
            f"{result['ingest_chunks_per_s']:.1f} chunks/s = {result['ingest_vs_raw']:.0%} of raw",
            f">= {INGEST_TARGET_RATIO:.0%} of raw",
            verdict(result["ingest_pass"]),
        ),
        (
            f"search floor p50 at {result['collection_chunks']} chunks (embed + Chroma query, in-process)",
            f"{result['search_floor_p50_ms']:.2f} ms",
            "-",
            "",
        ),
        (
            f"search p50 at {result['collection_chunks']} chunks",
            f"{result['search_p50_ms']:.2f} ms = {result['search_vs_floor_p50']:.2f} x the floor",
            f"<= {SEARCH_FLOOR_RATIO_TARGET:.1f} x the floor",
            verdict(result["search_p50_pass"]),
        ),
        (
            f"search p99 at {result['collection_chunks']} chunks",
            f"{result['search_p99_ms']:.2f} ms",
            f"<= {SEARCH_P99_TARGET_MS:.0f} ms",
            verdict(result["search_p99_pass"]),
        ),
    ]
    rows.append(
        (
            f"search throughput, {result['concurrent_searches']} in flight",
            f"{result['concurrent_searches_per_s']:.1f} searches/s, "
            f"{result['concurrent_cpu_ms_per_search']:.2f} ms CPU/search, "
            f"mean query batch {result['mean_query_batch']:.2f}",
            "",
            "",
        )
    )
    rows.append(
        (
            f"lexical index build + calibration at {result['collection_chunks']} chunks",
            f"{result['index_build_seconds']:.1f} s",
            "",
            "",
        )
    )
    rows.append(
        (
            "machine",
            f"{result['cpu_count']} CPUs, load average {result['load_average_1m']:.1f} at the end",
            "",
            "",
        )
    )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.retrieval", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument(
        "--chunks", type=int, default=100_000, help="collection size for the search test (100000)"
    )
    parser.add_argument(
        "--ingest-chunks", type=int, default=2000, help="chunks ingested through the real pipeline (2000)"
    )
    parser.add_argument(
        "--raw-every",
        type=int,
        default=4,
        help="also embed every K-th ingest batch raw, for the raw rate (4)",
    )
    parser.add_argument(
        "--raw-sample", type=int, default=500, help="stop raw-embedding batches after this many chunks (500)"
    )
    parser.add_argument("--queries", type=int, default=500, help="search calls timed (500)")
    parser.add_argument(
        "--batch-size", type=int, default=64, help="documents per IngestDocuments request (64)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="onnxruntime intra-op threads (1, as the service)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=16, help="Search calls in flight for the throughput run (16)"
    )
    parser.add_argument(
        "--concurrent-seconds", type=float, default=10.0, help="length of the throughput run (10 s)"
    )
    parser.add_argument(
        "--query-batch",
        type=int,
        default=DEFAULT_MAX_BATCH,
        help=f"RETRIEVAL_QUERY_BATCH of the server ({DEFAULT_MAX_BATCH}; 1: no batching)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    print(_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", "utf-8")
    return 0 if result["ingest_pass"] and result["search_p50_pass"] and result["search_p99_pass"] else 1


if __name__ == "__main__":
    sys.exit(main())

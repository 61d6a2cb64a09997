"""Retrieval quality on the tuning data: `python -m bench.retrieval_quality [--json PATH]`.

Ingests kb/ into a throwaway embedded Chroma through the real KnowledgeBase and asks:
- every turn of evals/sample_kb.yaml that expects a citation (hit@3 and MRR over distinct documents, as
  support-eval scores them; the turn's message alone, no conversation context);
- the on-topic questions of retrieval_service.calibration (answered = at least one hit survives the threshold)
  and the off-topic ones plus the suite's `abstain: true` turns (refused = no hit survives);
- the best-hit distance separation (worst on-topic vs best off-topic) and ms per query, one thread.
Tuning data only: the held-out suites are never read here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from retrieval_service.calibration import OFF_TOPIC, ON_TOPIC, load_markdown
from retrieval_service.config import Config
from retrieval_service.knowledge_base import KnowledgeBase
from retrieval_service.server import build_knowledge_base

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "evals" / "sample_kb.yaml"
K = 3


def suite_questions(path: Path) -> tuple[list[tuple[str, tuple[str, ...]]], list[str]]:
    """(message, cited doc ids) for turns that expect a citation; messages of turns that expect abstention."""
    data = yaml.safe_load(path.read_text("utf-8"))
    cite: list[tuple[str, tuple[str, ...]]] = []
    abstain: list[str] = []
    for conversation in data["conversations"]:
        for turn in conversation["turns"]:
            expect = turn.get("expect") or {}
            if expect.get("cite"):
                cite.append((turn["message"], tuple(expect["cite"])))
            elif expect.get("abstain") is True:
                abstain.append(turn["message"])
    return cite, abstain


async def evaluate(kb: KnowledgeBase, kb_dir: Path) -> dict[str, Any]:
    await kb.ingest(load_markdown(kb_dir), prune_changed_sections=True)
    cite, abstain = suite_questions(SUITE)
    timings: list[float] = []

    async def ranked(question: str) -> tuple[list[str], float]:
        begin = time.perf_counter()
        result = await kb.search(question, top_k=8, max_distance=2.0)
        timings.append((time.perf_counter() - begin) * 1000)
        docs = list(dict.fromkeys(hit.doc_id for hit in result.hits))
        return docs, min((hit.distance for hit in result.hits), default=2.0)

    hits = 0
    reciprocal = 0.0
    misses = []
    for question, expected in cite:
        docs, _ = await ranked(question)
        rank = next((i + 1 for i, doc in enumerate(docs) if doc in expected), 0)
        hits += 0 < rank <= K
        reciprocal += 1.0 / rank if rank else 0.0
        if not 0 < rank <= K:
            misses.append(f"{question!r} -> {docs[:3]} (want {list(expected)})")
    answered = 0
    on_best = []
    for question in ON_TOPIC:
        result = await kb.search(question)
        answered += not result.nothing_relevant
        on_best.append((await ranked(question))[1])
    refused = 0
    off_best = []
    off_questions = list(OFF_TOPIC) + abstain
    for question in off_questions:
        result = await kb.search(question)
        refused += result.nothing_relevant
        off_best.append((await ranked(question))[1])
    threshold = (await kb.search("how do I return an item")).max_distance_applied
    return {
        "cite_questions": len(cite),
        "hit_at_3": round(hits / len(cite), 3),
        "mrr": round(reciprocal / len(cite), 3),
        "misses": misses,
        "threshold": round(threshold, 3),
        "on_topic_answered": f"{answered}/{len(ON_TOPIC)}",
        "off_topic_refused": f"{refused}/{len(off_questions)}",
        "worst_on_topic": round(max(on_best), 3),
        "best_off_topic": round(min(off_best), 3),
        "separation": round(min(off_best) - max(on_best), 3),
        "ms_per_query_p50": round(statistics.median(timings), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.retrieval_quality", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--kb", type=Path, default=ROOT / "kb")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        kb = build_knowledge_base(Config(data_dir=Path(tmp), collection="quality"))
        result = asyncio.run(evaluate(kb, args.kb))
    for key, value in result.items():
        if key == "misses":
            for miss in value:
                print(f"  miss: {miss}")
        else:
            print(f"{key:20} {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

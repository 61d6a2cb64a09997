"""pytest plugin: every log record of the whole test run, formatted the way the services format them (JSON with
redaction), goes to one file; at the end of the session that file is scanned for e-mails and card numbers.

Enable it for the whole run from the root `tests/conftest.py` (owned by the lead):

    pytest_plugins = ["tests.security.pii_plugin"]

Findings fail the session (exit status 1) and are listed masked. `PII_LOG_FILE` sets where the log goes
(default: a temp file, removed after a clean scan). Subprocess services write their own stdout; tests that start them scan those files
(see test_pii.py).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import pytest

from service_kit.jsonlog import JsonFormatter
from tests.security.pii import scan_files

_STATE: dict[str, object] = {}


def pytest_configure(config: pytest.Config) -> None:
    chosen = os.environ.get("PII_LOG_FILE")
    if chosen:
        path = Path(chosen)
    else:
        handle, name = tempfile.mkstemp(prefix="pytest-logs-", suffix=".jsonl")
        os.close(handle)
        path = Path(name)
    _STATE["temporary"] = not chosen
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(JsonFormatter("pytest"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    _STATE["handler"] = handler
    _STATE["path"] = path


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    handler = _STATE.get("handler")
    path = _STATE.get("path")
    if not isinstance(handler, logging.Handler) or not isinstance(path, Path):
        return
    logging.getLogger().removeHandler(handler)
    handler.close()
    findings = scan_files([path])
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = sum(1 for _ in path.open(encoding="utf-8", errors="replace"))
    message = f"PII scan of {lines} log lines ({path}): {len(findings)} finding(s)"
    if reporter is not None:
        reporter.write_line("")
        reporter.write_sep("-", "PII scan of the run's logs")
        reporter.write_line(message)
        for finding in findings[:50]:
            reporter.write_line(f"  {finding.masked()}")
    if findings and session.exitstatus == 0:
        session.exitstatus = 1
    if not findings and _STATE.get("temporary"):
        path.unlink(missing_ok=True)  # keep the file only when it holds findings or PII_LOG_FILE named it

"""Which semantic injection detector the input check and the untrusted-data scan consult.

By default the process-wide :func:`agent_service.injection_detector.default_detector`, built on first use
(the agent starts without loading the embedding model; :func:`warm_up` loads it ahead of the first turn).
Tests that do not need it, or need another one, call :func:`use_injection_detector`.
"""

from __future__ import annotations

import logging
import threading
from typing import Final

from agent_service.injection_detector import Detection, InjectionDetector, default_detector

_log = logging.getLogger(__name__)

_DEFAULT: Final[str] = "default"
_lock = threading.Lock()
_choice: InjectionDetector | str | None = _DEFAULT
_unavailable_logged = False


def use_injection_detector(detector: InjectionDetector | str | None = _DEFAULT) -> None:
    """Sets the detector: an instance, None (regex guardrail only) or "default" (the shipped one)."""
    global _choice
    if isinstance(detector, str) and detector != _DEFAULT:
        raise ValueError(f"unknown detector {detector!r}")
    with _lock:
        _choice = detector


def current_detector() -> InjectionDetector | None:
    """The detector in use, building the default one on first use; None when disabled or unavailable."""
    global _unavailable_logged
    choice = _choice
    if choice is None or isinstance(choice, InjectionDetector):
        return choice
    try:
        return default_detector()
    except Exception as exc:  # a missing model package must not take the agent down
        if not _unavailable_logged:
            _unavailable_logged = True
            _log.error("semantic injection detector unavailable, regex guardrail only: %s", exc)
        return None


def warm_up() -> bool:
    """Builds the detector now (call from a background thread at start-up); True when one is in use."""
    return current_detector() is not None


def detect(text: str) -> Detection | None:
    detector = current_detector()
    return detector.detect(text) if detector is not None else None

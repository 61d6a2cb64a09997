"""JSON log lines on stdout: one object per line with time, severity, logger and message.

Every string is redacted (service_kit.redact). Identifiers a caller chooses and that can carry personal data
(conversation ids, request ids, turn ids: someone will use an e-mail address as one) are logged as
`log_id(value)`, a short SHA-256 digest: the same id always gives the same digest, so an operator can still
follow one conversation through the logs (`python -m service_kit.jsonlog <id>` prints the digest to grep for),
but the id itself is never written.
"""

from __future__ import annotations

import base64
import contextvars
import hashlib
import json
import logging
import sys
import time
from typing import Any

from service_kit.redact import redact

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
conversation_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("conversation_id", default="")

# Fields logged as their digest, wherever they come from (the bound context or `extra=`).
HASHED_FIELDS = frozenset({"conversation_id", "request_id", "turn_id"})
LOG_ID_PREFIX = "h:"


def log_id(value: str) -> str:
    """The digest an identifier is logged as: ``h:`` and 16 base32 characters (a-z, 2-7) of its SHA-256.

    Not hex: a hex digest is all digits now and then, and 16 digits can pass the Luhn check, so a log scanner
    would rightly report it as a card number."""
    digest = hashlib.sha256(value.encode("utf-8")).digest()
    return LOG_ID_PREFIX + base64.b32encode(digest[:10]).decode("ascii").lower()


def _hashed(value: Any) -> Any:
    if isinstance(value, str):
        return log_id(value) if value else value
    if isinstance(value, list | tuple | set | frozenset):
        return [_hashed(item) for item in value]
    return _redacted(value)


# LogRecord attributes that are not user-supplied `extra=` fields.
_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _redacted(value: Any) -> Any:
    """`value` with every string inside it (nested lists, tuples, dicts) redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: _redacted(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redacted(item) for item in value]
    return value


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "severity": record.levelname,
            "service": self._service,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        if request_id := request_id_var.get():
            entry["request_id"] = log_id(request_id)
        if conversation_id := conversation_id_var.get():
            entry["conversation_id"] = log_id(conversation_id)
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = _hashed(value) if key in HASHED_FIELDS else _redacted(value)
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(service: str, level: str = "INFO") -> None:
    """Called once from a service's main(); replaces any handlers on the root logger."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


if __name__ == "__main__":
    for identifier in sys.argv[1:]:
        print(f"{identifier}\t{log_id(identifier)}")

"""Encoded payloads: base64, hex, percent-encoding, Unicode tag characters, rot13 and reversed text that decode
to an injection, a system-prompt request or role play."""

from __future__ import annotations

import base64
import binascii
import codecs
import re
from collections.abc import Iterator
from typing import Final
from urllib.parse import unquote

from agent_service.guardrails.normalise import fold
from agent_service.guardrails.patterns import STRONG_INJECTION, suspicious

_TAG_BASE: Final[int] = 0xE0000
_BASE64_CANDIDATE: Final[re.Pattern[str]] = re.compile(r"(?<![\w+/=-])[A-Za-z0-9+/_-]{16,}={0,2}(?![\w+/=-])")
_HEX_CANDIDATE: Final[re.Pattern[str]] = re.compile(
    r"(?:\\x[0-9a-fA-F]{2}){6,}|(?<![0-9a-fA-F])(?:0x)?(?:[0-9a-fA-F]{2}[\s:,-]?){8,}(?![0-9a-fA-F])"
)
_PERCENT_CANDIDATE: Final[re.Pattern[str]] = re.compile(r"(?:%[0-9a-fA-F]{2}){4,}")
_MAX_DECODE_CANDIDATES: Final[int] = 20


def _printable_ratio(text: str) -> float:
    if not text:
        return 0.0
    return sum(1 for char in text if char.isprintable() or char in "\n\t") / len(text)


def _decode_base64(blob: str) -> str | None:
    padded = blob + "=" * (-len(blob) % 4)
    try:
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
        text = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    return text if len(text) >= 8 and _printable_ratio(text) > 0.9 else None


def _decode_hex(blob: str) -> str | None:
    digits = re.sub(r"\\x|0x|[\s:,-]", "", blob)
    if len(digits) % 2:
        digits = digits[:-1]
    try:
        text = bytes.fromhex(digits).decode("utf-8")
    except ValueError:
        return None
    return text if len(text) >= 6 and _printable_ratio(text) > 0.9 else None


def _decoded_payloads(normalised: str, original: str) -> Iterator[tuple[str, str]]:
    """(encoding, decoded text) for every blob that decodes to readable text."""
    seen = 0
    for match in _BASE64_CANDIDATE.finditer(normalised):
        if seen >= _MAX_DECODE_CANDIDATES:
            break
        seen += 1
        decoded = _decode_base64(match.group(0))
        if decoded is not None:
            yield "base64", decoded
    for match in _HEX_CANDIDATE.finditer(normalised):
        if seen >= _MAX_DECODE_CANDIDATES:
            break
        seen += 1
        decoded = _decode_hex(match.group(0))
        if decoded is not None:
            yield "hex", decoded
    if _PERCENT_CANDIDATE.search(normalised):
        yield "percent-encoding", unquote(normalised)
    tags = "".join(chr(ord(char) - _TAG_BASE) for char in original if 0xE0020 <= ord(char) <= 0xE007E)
    if tags:
        yield "unicode tag characters", tags


def encoded_hits(normalised: str, original: str, folded: str) -> list[str]:
    """Encodings whose decoded content looks like an injection, a system-prompt request or role play."""
    hits: list[str] = []
    for encoding, decoded in _decoded_payloads(normalised, original):
        if suspicious(fold(decoded)) and encoding not in hits:
            hits.append(encoding)
    rot13 = codecs.encode(folded, "rot13")
    if suspicious(rot13):
        hits.append("rot13")
    reversed_text = folded[::-1]
    if any(pattern.search(reversed_text) for _, pattern in STRONG_INJECTION):
        hits.append("reversed text")
    return hits

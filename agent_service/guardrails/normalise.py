"""What the guardrails match on: the shared :mod:`service_kit.text_normalise`, so look-alike, invisible and
obfuscated characters do not hide a phrase from the patterns (one normalisation for the regex patterns,
the semantic detector and the escalation triggers)."""

from __future__ import annotations

import re
from typing import Final

from service_kit.text_normalise import (
    fold_characters,
    normalise_for_matching,
    strip_invisible,
    visible_nfkc,
)
from service_kit.text_normalise import is_invisible as _invisible

# Curly quotes become straight ones, so a curly-apostrophe "don\u2019t" matches the patterns' "don't".
_QUOTES: Final[dict[int, int]] = str.maketrans("\u2018\u2019\u02bc\u201c\u201d", "'''\"\"")
SPACED_LETTERS: Final[re.Pattern[str]] = re.compile(r"\b(?:\w[ .\-_*]){3,}\w\b")
_HORIZONTAL_SPACE: Final[re.Pattern[str]] = re.compile(r"[^\S\n]+")


def is_invisible(char: str) -> bool:
    """Control, format (zero-width, bidi, tag) and variation-selector characters, except the emoji ZWJ."""
    return char != "\u200d" and _invisible(char)


def strip_control_characters(text: str) -> str:
    """Removes control, format (zero-width, bidi), tag characters and variation selectors; keeps tabs,
    newlines and the zero-width joiner emoji sequences use."""
    return strip_invisible(text, keep_zwj=True)


def fold(text: str) -> str:
    """What the input patterns see: NFKC, invisible characters and combining marks removed, look-alikes
    mapped, casefolded, horizontal space collapsed (line breaks kept)."""
    text = fold_characters(text.translate(_QUOTES) if not text.isascii() else text)
    lines = (_HORIZONTAL_SPACE.sub(" ", line).strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


def undisguise(text: str) -> str:
    """`fold` plus spelled-out, hyphenated, split and leetspeak words rejoined ("1gn0r3 a l l" -> "ignore
    all"): the shared matching form, for the patterns' second look."""
    return normalise_for_matching(text.translate(_QUOTES) if not text.isascii() else text)


def strong_normalise(text: str) -> str:
    """NFKC without invisible characters (case preserved, so encoded blobs still decode)."""
    return visible_nfkc(text)

"""What the guardrails match on: text folded so look-alike, invisible and obfuscated characters do not hide
a phrase from the patterns."""

from __future__ import annotations

import re
import unicodedata
from typing import Final

# Latin look-alikes from Cyrillic, Greek and Armenian (the usual homoglyph substitutions), mapped after
# casefold; curly quotes become straight ones.
_HOMOGLYPHS: Final[str] = (
    "\u0430\u0432\u0435\u0451\u043a\u043c\u043d\u043e\u0440\u0441\u0442\u0443\u0445\u0456\u0457\u0458"
    "\u0455\u0501\u0261\u04bb\u0578\u057d\u03b1\u03b2\u03b5\u03b7\u03b9\u03ba\u03bd\u03bf\u03c1\u03c4"
    "\u03c5\u03c7\u03c9"
)
_LATIN: Final[str] = "abeekmhopctyxiijsdghnuabenikvoptuxw"
_CONFUSABLES: Final[dict[int, int]] = str.maketrans(
    _HOMOGLYPHS + "\u2018\u2019\u02bc\u201c\u201d", _LATIN + "'''\"\""
)
_LEET: Final[dict[int, str]] = str.maketrans(
    {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "i", "|": "l"}
)
# Emoji sequences legitimately use the zero-width joiner; do not count it as a control character.
_ALLOWED_FORMAT: Final[frozenset[str]] = frozenset({"\u200d"})
SPACED_LETTERS: Final[re.Pattern[str]] = re.compile(r"\b(?:\w[ .\-_*]){3,}\w\b")
_HORIZONTAL_SPACE: Final[re.Pattern[str]] = re.compile(r"[^\S\n]+")


def is_invisible(char: str) -> bool:
    category = unicodedata.category(char)
    if category == "Cc":
        return char not in "\t\n\r"
    return category == "Cf" and char not in _ALLOWED_FORMAT


# ASCII has no format characters: only C0 controls and DEL are invisible there (tab, newline, CR kept).
_ASCII_INVISIBLE = {code: None for code in (*range(32), 127) if chr(code) not in "\t\n\r"}


def strip_control_characters(text: str) -> str:
    """Removes control, format (zero-width, bidi) and tag characters; keeps tabs, newlines and the ZWJ."""
    if text.isascii():
        return text.translate(_ASCII_INVISIBLE)
    return "".join(char for char in text if not is_invisible(char))


def fold(text: str) -> str:
    """What the input patterns see: NFKC, invisible characters removed, homoglyphs mapped, casefolded."""
    text = strip_control_characters(unicodedata.normalize("NFKC", text))
    text = text.casefold().translate(_CONFUSABLES)
    lines = (_HORIZONTAL_SPACE.sub(" ", line).strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


def unleet(text: str) -> str:
    """'1gn0r3 4ll' -> 'ignore all': only words mixing letters with digits/symbols ("$50" stays)."""

    def word(match: re.Match[str]) -> str:
        token = match.group(0)
        if re.search(r"[^\W\d_]", token) and re.search(r"[0-9@$!|]", token):
            return token.translate(_LEET)
        return token

    return re.sub(r"\S+", word, text)


def despace(text: str) -> str:
    """'i g n o r e' -> 'ignore' (letters spelled out with separators)."""
    return SPACED_LETTERS.sub(lambda match: re.sub(r"[ .\-_*]", "", match.group(0)), text)


def strong_normalise(text: str) -> str:
    """NFKC without invisible characters (case preserved, so encoded blobs still decode)."""
    return strip_control_characters(unicodedata.normalize("NFKC", text))

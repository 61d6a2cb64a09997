"""One normalisation for matching text against patterns and examples, whatever disguise it wears.

:func:`normalise_for_matching` undoes, in order:

1. compatibility forms (NFKC: full-width letters, ligatures, mathematical alphabets, superscripts);
2. invisible characters (zero-width spaces and joiners, bidi controls, soft hyphens, tag characters,
   variation selectors, C0/C1 controls);
3. combining marks (accents and overlays such as U+0336 strike-through; "é" matches "e");
4. look-alike letters from other scripts (Cyrillic a, Greek omicron, the dotless i ...), from the
   generated table in :mod:`service_kit.confusables_table` (Unicode UTS #39 data);
5. case (casefold, so "ß" compares as "ss");
6. words spelled out letter by letter ("i g n o r e", "i.g.n.o.r.e") and hyphenated inside a word
   ("ig-nore"), which are rejoined; a spelled-out run that covers several words ("i g n o r e a l l") is
   split again into dictionary words;
7. leetspeak inside words ("1gn0r3" → "ignore", "p@$$w0rd" → "password"; "$50", "3pm", "ORD-12345" stay);
8. words split by a space ("ign ore" → "ignore") when the joined word is one of the caller's ``keywords``
   or a dictionary word that neither half is.

The result is for matching only (never shown, never stored): lower case, single spaces, one line per
input line. :func:`translate_words` optionally maps words of other languages to English on top (a caller's
small lexicon, for an English-centric embedding model). The dictionary is the embedding model's word-piece vocabulary (whole English words), loaded
once; without the model package installed, steps 6-8 fall back to what needs no dictionary.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from collections.abc import Collection, Mapping
from typing import Final

from service_kit.confusables_table import CONFUSABLE_LATIN

_CONFUSABLES: Final[dict[int, str]] = {ord(char): letter for char, letter in CONFUSABLE_LATIN.items()}
_LEET: Final[dict[str, str]] = {
    "0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "i", "|": "l",
}  # fmt: skip
_LEET_CHARS: Final[str] = "".join(_LEET)
_VOWELS: Final[str] = "aeiouy"
_TAGS: Final[range] = range(0xE0000, 0xE0080)
_VARIATION_SELECTORS: Final[tuple[range, ...]] = (range(0xFE00, 0xFE10), range(0xE0100, 0xE01F0))
_KEEP_CONTROLS: Final[str] = "\t\n\r"

# A run of at least three single characters each followed by one separator: "i g n o r e", "i.g.n.o.r.e".
_SPELLED_OUT: Final[re.Pattern[str]] = re.compile(r"(?<!\w)(?:[\w@$!|][ .\-_*/+~]){2,}[\w@$!|](?!\w)")
_SPELLED_SEPARATORS: Final[re.Pattern[str]] = re.compile(r"[ .\-_*/+~]")
# A hyphen (any dash, optionally followed by a line break) between two letters inside a word.
_INNER_HYPHEN: Final[re.Pattern[str]] = re.compile(r"(?<=[^\W\d_])[-\u2010-\u2015\u2212_]\n?(?=[^\W\d_])")
_LEET_WORD: Final[re.Pattern[str]] = re.compile(r"[\w@$!|]+")
_HORIZONTAL_SPACE: Final[re.Pattern[str]] = re.compile(r"[^\S\n]+")
_MIN_JOINED_KEYWORD: Final[int] = 5
_MAX_SEGMENT_WORD: Final[int] = 24


def is_invisible(char: str) -> bool:
    """Controls (except tab, newline, CR), format characters (zero-width, bidi, soft hyphen, tags) and
    variation selectors."""
    category = unicodedata.category(char)
    if category == "Cc":
        return char not in _KEEP_CONTROLS
    if category == "Cf":
        return True
    code = ord(char)
    return code in _TAGS or any(code in selectors for selectors in _VARIATION_SELECTORS)


def count_invisible(text: str, keep_zwj: bool = True) -> int:
    """How many invisible characters `text` holds (the emoji zero-width joiner not counted by default)."""
    return sum(1 for char in text if is_invisible(char) and not (keep_zwj and char == "\u200d"))


def strip_invisible(text: str, keep_zwj: bool = False) -> str:
    """`text` without invisible characters; ``keep_zwj`` keeps the zero-width joiner emoji sequences use."""
    if text.isascii():
        return "".join(char for char in text if char.isprintable() or char in _KEEP_CONTROLS)
    return "".join(char for char in text if not is_invisible(char) or (keep_zwj and char == "\u200d"))


def visible_nfkc(text: str) -> str:
    """NFKC without invisible characters, case and marks preserved (for text that is still shown or
    decoded, e.g. base64 payloads; emoji sequences stay intact)."""
    return strip_invisible(unicodedata.normalize("NFKC", text), keep_zwj=True)


def fold_characters(text: str) -> str:
    """Steps 1-5 only: NFKC, invisible characters removed, marks stripped, look-alikes mapped, casefolded."""
    text = strip_invisible(unicodedata.normalize("NFKC", text))
    if not text.isascii():
        decomposed = unicodedata.normalize("NFD", text)
        text = "".join(char for char in decomposed if not unicodedata.combining(char))
        text = unicodedata.normalize("NFC", text.translate(_CONFUSABLES).casefold())
        # Casefolding can bring marks back ("İ" -> "i" + dot above).
        text = "".join(char for char in text if not unicodedata.combining(char))
    return text.casefold()


@functools.cache
def dictionary() -> frozenset[str]:
    """Whole English words of the embedding model's vocabulary (empty if the package is not installed)."""
    try:
        from service_kit.embedding import EmbeddingModelError, default_tokenizer_path

        path = default_tokenizer_path()
    except (ImportError, EmbeddingModelError):
        return frozenset()
    try:
        vocab = json.loads(path.read_text("utf-8"))["model"]["vocab"]
    except (OSError, ValueError, KeyError, TypeError):
        return frozenset()
    return frozenset(word for word in vocab if len(word) >= 2 and word.isascii() and word.isalpha())


def _segment(run: str, words: Collection[str]) -> str:
    """'ignoreall' -> 'ignore all' when the run splits into known words (fewest pieces); else unchanged."""
    if run in words or not run.isalpha():
        return run
    best: list[list[str] | None] = [[]] + [None] * len(run)
    for end in range(1, len(run) + 1):
        for start in range(max(0, end - _MAX_SEGMENT_WORD), end):
            head = best[start]
            piece = run[start:end]
            if head is not None and (piece in words or (len(piece) == 1 and piece in "ai")):
                candidate = [*head, piece]
                current = best[end]
                if current is None or len(candidate) < len(current):
                    best[end] = candidate
    pieces = best[-1]
    if pieces is None or len(pieces) == 1 or sum(map(len, pieces)) / len(pieces) < 3:
        return run
    return " ".join(pieces)


def _join_spelled_out(text: str, words: Collection[str]) -> str:
    def join(match: re.Match[str]) -> str:
        return _segment(_SPELLED_SEPARATORS.sub("", match.group(0)), words)

    return _SPELLED_OUT.sub(join, text)


def _unleet_word(token: str, words: Collection[str]) -> str:
    core = token.strip("!|")
    if not core or not any(char.isalpha() for char in core) or not any(c in _LEET_CHARS for c in core):
        return token
    if not all(char.isalpha() or char in _LEET_CHARS for char in core):
        return token  # "ord12345", "1z999aa": other digits, so an identifier, not a disguised word
    letters: list[str] = []
    for char in core:
        if char == "1":
            # "a11", "ru1es" (after a vowel or an l) read as l; "1gn0re", "pr1or" as i.
            letters.append("l" if letters and letters[-1] in _VOWELS + "l" else "i")
        else:
            letters.append(_LEET.get(char, char))
    folded = "".join(letters)
    if folded not in words and "1" in core:
        # "1" is ambiguous (i or l): prefer the reading that is a word ("gu1d3l1n35" -> "guidelines").
        folded = _word_reading(letters, [i for i, char in enumerate(core) if char == "1"], words) or folded
    interior = any(
        char in _LEET_CHARS and core[index - 1].isalpha() and core[index + 1].isalpha()
        for index, char in enumerate(core[1:-1], start=1)
    )
    if interior or folded in words:
        return token.replace(core, folded, 1)
    return token


def _word_reading(letters: list[str], ones: list[int], words: Collection[str]) -> str | None:
    """The first i/l reading of the "1"s at `ones` that is a dictionary word (at most 16 tried)."""
    if len(ones) > 4:
        return None
    for mask in range(1 << len(ones)):
        candidate = list(letters)
        for bit, index in enumerate(ones):
            candidate[index] = "l" if mask >> bit & 1 else "i"
        word = "".join(candidate)
        if word in words:
            return word
    return None


def _unleet(text: str, words: Collection[str]) -> str:
    return _LEET_WORD.sub(lambda match: _unleet_word(match.group(0), words), text)


def _join_split_words(line: str, words: Collection[str], keywords: Collection[str]) -> str:
    tokens = line.split(" ")
    out: list[str] = []
    index = 0
    while index < len(tokens):
        joined = False
        for width in (3, 2):
            parts = tokens[index : index + width]
            if len(parts) < width or not all(part.isalpha() for part in parts):
                continue
            word = "".join(parts)
            # Into a keyword only from pieces that are not keywords themselves ("system prompt" stays).
            keyword = (
                word in keywords
                and len(word) >= _MIN_JOINED_KEYWORD
                and not any(part in keywords for part in parts)
            )
            # "a" and "i" are words too (the dictionary keeps 2+ letters): "do i" is not "doi".
            if keyword or (word in words and any(part not in words and part not in "ai" for part in parts)):
                out.append(word)
                index += width
                joined = True
                break
        if not joined:
            out.append(tokens[index])
            index += 1
    return " ".join(out)


@functools.lru_cache(maxsize=16)
def _with_keywords(keywords: frozenset[str]) -> frozenset[str]:
    """The dictionary plus a caller's keywords, built once per keyword set (not per message)."""
    return dictionary() | keywords if keywords else dictionary()


def normalise_for_matching(text: str, keywords: Collection[str] = ()) -> str:
    """The canonical form patterns and examples are matched on (see the module docstring).

    ``keywords``: words the caller matches on (e.g. every word of its example phrases); a word split by a
    space is rejoined when the joined form is one of them, even if both halves are words themselves.
    """
    words = dictionary()
    vocabulary = _with_keywords(keywords if isinstance(keywords, frozenset) else frozenset(keywords))
    text = fold_characters(text)
    lines: list[str] = []
    for raw in text.splitlines():
        line = _HORIZONTAL_SPACE.sub(" ", raw).strip()
        if not line:
            continue
        line = _join_spelled_out(line, vocabulary)
        line = _INNER_HYPHEN.sub("", line)
        line = _unleet(line, vocabulary)
        lines.append(_join_split_words(line, words, keywords))
    return "\n".join(lines)


_LEXICON_TOKEN: Final[re.Pattern[str]] = re.compile(r"[^\W_]+|[^\w\s]+|_+|\s+")
_LEXICON_WORD: Final[re.Pattern[str]] = re.compile(r"[^\W_]+")
_MAX_LEXICON_WORDS: Final[int] = 3
_first_words_cache: dict[int, tuple[Mapping[str, str], frozenset[str]]] = {}


def _first_words(lexicon: Mapping[str, str]) -> frozenset[str]:
    """The first word of every lexicon key (cached per lexicon object)."""
    cached = _first_words_cache.get(id(lexicon))
    if cached is None or cached[0] is not lexicon:
        cached = (lexicon, frozenset(key.split(" ", 1)[0] for key in lexicon))
        if len(_first_words_cache) > 64:
            _first_words_cache.clear()
        _first_words_cache[id(lexicon)] = cached
    return cached[1]


def translate_words(normalised: str, lexicon: Mapping[str, str]) -> str:
    """Words (or runs of up to three words) of a normalised text replaced by their `lexicon` entry.

    Keys and values are in normalised form (:func:`fold_characters`: no accents, casefolded, single
    spaces). Apostrophes split words, so French elisions ("l'appareil", "m'a") look up "appareil", "a".
    The longest run wins; a word glued to the one before by "." "/" "@" (a domain, path or address:
    "example.com") is left alone; text without a lexicon word comes back unchanged (the same string).
    """
    if not lexicon:
        return normalised
    firsts = _first_words(lexicon)
    if not any(word in firsts for word in _LEXICON_WORD.findall(normalised)):
        return normalised  # the common case (an English message): no token list built
    tokens = _LEXICON_TOKEN.findall(normalised)
    words = [index for index, token in enumerate(tokens) if token[0].isalnum()]
    out = list(tokens)
    changed = False
    position = 0
    while position < len(words):
        for width in range(min(_MAX_LEXICON_WORDS, len(words) - position), 0, -1):
            run = words[position : position + width]
            # Only words separated by single spaces form a run ("card. stolen" does not).
            if any(tokens[index + 1] != " " for index in run[:-1]):
                continue
            if run[0] > 0 and tokens[run[0] - 1][-1] in "./@":
                continue
            key = " ".join(tokens[index] for index in run)
            replacement = lexicon.get(key)
            if replacement is not None:
                out[run[0]] = replacement
                for index in range(run[0] + 1, run[-1] + 1):
                    out[index] = ""
                changed = True
                position += width
                break
        else:
            position += 1
    return "".join(out) if changed else normalised


def squash(normalised: str) -> str:
    """Letters only, no spaces: 'ignore  all-previous' -> 'ignoreallprevious' (for spacing-proof lookups)."""
    return re.sub(r"[\W\d_]+", "", normalised)

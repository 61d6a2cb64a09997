"""Token-aware chunking of Markdown, plain text and HTML documents. Pure: no I/O, no gRPC, no model.

A document becomes sections (split at headings), sections become sentence-sized units, and units are packed
into chunks of `min_tokens`..`max_tokens` word pieces counted with the embedding model's own tokenizer:
- a chunk ends at a heading once it holds at least `min_tokens` (chunks follow headings where they can);
- a chunk never exceeds `max_tokens`; a section longer than that is split between sentences, and the next
  chunk repeats the last sentences of the previous one (up to `overlap_tokens`) and the section heading;
- a document shorter than `min_tokens` is a single chunk.

Every chunk carries its article's title: a chunk that does not contain the title is embedded (and indexed
lexically) as `title + chunk`, so a chunk deep in an article still matches a question about the article's
topic ("sign out of everything" → the chunk of "Password reset and account recovery" that explains
sessions). The stored text, the one the agent reads, stays the chunk alone. Only chunks without the title
get it, and those are continuation chunks; where the title pushes a full one past the model's window, the
model reads all but its last few word pieces, which the next chunk repeats (the overlap) and the lexical
index still holds. Reserving the title's pieces in every chunk's budget instead would move the chunk
boundaries (and ids) of documents that need no title at all.

Chunk ids derive from the document id and the hash of the embedded text, so unchanged text under an unchanged
title keeps its id; a new title re-embeds the chunks that carry it (re-ingest with pruning removes the old ones).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import PurePosixPath

TokenCounter = Callable[[Sequence[str]], list[int]]

DEFAULT_MIN_TOKENS = 200
# The model reads at most 256 word pieces including [CLS] and [SEP]; longer chunks would be embedded
# truncated, so the default upper bound keeps every token of every chunk inside the model's window.
DEFAULT_MAX_TOKENS = 254
DEFAULT_OVERLAP_TOKENS = 40

CONTENT_TYPES = ("markdown", "text", "html")
_EXTENSIONS = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".text": "text",
    ".html": "html",
    ".htm": "html",
}

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FRONT_MATTER_KEY = re.compile(r"^([A-Za-z_][\w-]*)\s*:\s*(.*)$")
# Sentence ends: . ! ? followed by whitespace and an uppercase letter, digit, quote or list marker.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9*-])")


@dataclass(frozen=True)
class ChunkingOptions:
    min_tokens: int = DEFAULT_MIN_TOKENS
    max_tokens: int = DEFAULT_MAX_TOKENS
    overlap_tokens: int = DEFAULT_OVERLAP_TOKENS

    def __post_init__(self) -> None:
        if not 0 < self.min_tokens <= self.max_tokens:
            raise ValueError("need 0 < min_tokens <= max_tokens")
        if not 0 <= self.overlap_tokens < self.min_tokens:
            raise ValueError("need 0 <= overlap_tokens < min_tokens")


@dataclass(frozen=True)
class ParsedDocument:
    """A document reduced to Markdown-like text plus what its header said about it."""

    body: str
    front_matter: dict[str, str]
    title: str


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    text: str
    index: int
    section: str
    token_count: int
    # sha256 of `embedded_text`.
    content_hash: str
    # What is embedded: the text, preceded by the document title when the text does not contain it.
    embedded_text: str = ""


@dataclass
class _Unit:
    text: str
    tokens: int
    section: str
    starts_section: bool
    heading: str = ""  # the heading line a continuation chunk repeats


@dataclass
class _Draft:
    units: list[_Unit] = field(default_factory=list)
    tokens: int = 0


def content_type_for(doc_id: str, declared: str = "") -> str:
    """ "markdown", "text" or "html": the declared type, else from the id's extension, else markdown."""
    if declared:
        return declared
    return _EXTENSIONS.get(PurePosixPath(doc_id).suffix.lower(), "markdown")


def supported_extension(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in _EXTENSIONS


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def with_title(title: str, text: str) -> str:
    """`text` preceded by `title` (a heading line) unless the text already contains it; used for both the
    embedded and the lexically indexed text of a chunk, so the two retrievers see the same thing."""
    title = title.strip()
    if not title or title.casefold() in text.casefold():
        return text
    return f"# {title}\n\n{text}"


def split_front_matter(text: str) -> tuple[dict[str, str], str]:
    """YAML-ish `key: value` front matter between `---` lines at the very top; returns (fields, body)."""
    stripped = text.lstrip("\ufeff")
    lines = stripped.splitlines()
    if not lines or lines[0].strip() != "---":
        return {}, stripped
    for end in range(1, len(lines)):
        if lines[end].strip() in ("---", "..."):
            fields: dict[str, str] = {}
            for line in lines[1:end]:
                match = _FRONT_MATTER_KEY.match(line.strip())
                if match:
                    value = match.group(2).strip()
                    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                        value = value[1:-1]
                    fields[match.group(1).lower()] = value
            return fields, "\n".join(lines[end + 1 :])
    return {}, stripped


# Inline styles that hide an element's text from a reader (display:none, visibility:hidden/collapse, zero
# font size, zero opacity, clipped to nothing).
_HIDING_STYLE = re.compile(
    r"display\s*:\s*none|visibility\s*:\s*(?:hidden|collapse)|font-size\s*:\s*0(?:\.0*)?(?:px|em|rem|pt|%)?\s*(?:;|!|$)"
    r"|opacity\s*:\s*0(?:\.0*)?\s*(?:;|!|$)|clip-path\s*:\s*inset\(\s*50%",
    re.IGNORECASE,
)
# Elements without an end tag: they never open a hidden region.
_VOID_TAGS = frozenset(
    {
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "param",
        "source",
        "track",
        "wbr",
    }
)


def _hides(tag: str, attrs: list[tuple[str, str | None]]) -> bool:
    """Whether the element's text is invisible to a reader: `hidden`, `aria-hidden="true"`, a hiding inline
    style. (Text no reader sees must not reach the knowledge base: it is where injected instructions hide.)"""
    for name, value in attrs:
        name = name.lower()
        if name == "hidden":
            return True
        if name == "aria-hidden" and (value or "").strip().lower() == "true":
            return True
        if name == "style" and value and _HIDING_STYLE.search(value):
            return True
    return False


class _HtmlToText(HTMLParser):
    """HTML → Markdown-ish text: h1-h6 become # headings, blocks become paragraphs. Only text a reader sees is
    kept: scripts, styles, templates, comments, SVG/MathML (their <title>/<desc> tooltips included), and elements
    hidden by `hidden`, `aria-hidden="true"` or an inline style are dropped with everything inside them."""

    _BLOCKS = frozenset(
        {"p", "div", "section", "article", "ul", "ol", "table", "tr", "br", "blockquote", "pre", "hr"}
    )
    _SKIP = frozenset({"script", "style", "noscript", "template", "head"})
    # Dropped whole, <title> included (an <svg><title> is a tooltip, not the page title).
    _FOREIGN = frozenset({"svg", "math", "iframe", "object"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self._skip_depth = 0
        self._in_title = False
        self._heading_level = 0
        # The element that opened a hidden region, and how deeply it is nested inside itself.
        self._hidden_tag = ""
        self._hidden_nesting = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._hidden_tag:
            if tag == self._hidden_tag and tag not in _VOID_TAGS:
                self._hidden_nesting += 1
            return
        if tag not in _VOID_TAGS and (tag in self._FOREIGN or _hides(tag, attrs)):
            self._hidden_tag, self._hidden_nesting = tag, 1
            return
        if tag == "title":
            self._in_title = True
        elif tag in self._SKIP:
            self._skip_depth += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self._heading_level = int(tag[1])
            self.parts.append("\n\n" + "#" * self._heading_level + " ")
        elif tag == "li":
            self.parts.append("\n- ")
        elif tag in self._BLOCKS:
            self.parts.append("\n\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        # <div hidden/> opens and closes at once: nothing inside it to hide.
        if self._hidden_tag or tag in self._FOREIGN or _hides(tag, attrs):
            return
        self.handle_starttag(tag, attrs)
        self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if self._hidden_tag:
            if tag == self._hidden_tag:
                self._hidden_nesting -= 1
                if self._hidden_nesting == 0:
                    self._hidden_tag = ""
            return
        if tag == "title":
            self._in_title = False
        elif tag in self._SKIP:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif re.fullmatch(r"h[1-6]", tag):
            self._heading_level = 0
            self.parts.append("\n\n")
        elif tag in self._BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._hidden_tag:
            return
        if self._in_title:
            self.title += data
        elif self._skip_depth == 0:
            text = re.sub(r"\s+", " ", data)
            if self._heading_level:
                text = text.strip()
            self.parts.append(text)

    def handle_comment(self, data: str) -> None:
        """Comments are never text (explicit: a subclass of HTMLParser could otherwise keep them)."""


def html_to_text(html: str) -> tuple[str, str]:
    """(Markdown-ish body, <title>) of an HTML document."""
    parser = _HtmlToText()
    parser.feed(html)
    parser.close()
    body = "".join(parser.parts)
    body = re.sub(r"[ \t]+\n", "\n", body)
    body = re.sub(r"\n{3,}", "\n\n", body)
    return body.strip(), parser.title.strip()


def parse_document(doc_id: str, content: str, content_type: str = "") -> ParsedDocument:
    """Front matter, body and title of a document; the title falls back to the first H1, then the file name."""
    kind = content_type_for(doc_id, content_type)
    front_matter: dict[str, str] = {}
    html_title = ""
    if kind == "html":
        body, html_title = html_to_text(content)
    elif kind == "markdown":
        front_matter, body = split_front_matter(content)
    else:
        body = content.lstrip("\ufeff")
    title = front_matter.get("title", "") or html_title
    if not title and kind != "text":
        for line in body.splitlines():
            match = _HEADING.match(line.strip())
            if match and len(match.group(1)) == 1:
                title = match.group(2).strip()
                break
    if not title:
        stem = PurePosixPath(doc_id).stem
        title = re.sub(r"[-_]+", " ", stem).strip().capitalize() or doc_id
    return ParsedDocument(body=body.strip(), front_matter=front_matter, title=title)


def _sections(body: str, kind: str) -> list[tuple[str, str, str]]:
    """(section path, heading line, text) per heading-delimited section; text includes its heading line."""
    sections: list[tuple[str, str, str]] = []
    path: list[str] = []
    heading_line = ""
    current: list[str] = []
    in_fence = False

    def flush() -> None:
        text = "\n".join(current).strip()
        if text:
            sections.append((" > ".join(path), heading_line, text))

    for line in body.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
        match = None if in_fence or kind == "text" else _HEADING.match(line.strip())
        if match:
            flush()
            current = []
            level = len(match.group(1))
            path = [*path[: level - 1], match.group(2).strip()]
            heading_line = line.strip()
        current.append(line)
    flush()
    return sections


def _paragraphs(text: str) -> list[str]:
    return [part.strip() for part in re.split(r"\n\s*\n", text) if part.strip()]


def _split_long(text: str, tokens: int, max_tokens: int, count: TokenCounter) -> list[tuple[str, int]]:
    """Pieces of one over-long sentence, cut between words, each at most about a quarter chunk."""
    words = text.split()
    if len(words) <= 1:
        # One enormous "word": cut by characters.
        step = max(1, len(text) * max_tokens // (4 * max(tokens, 1)))
        pieces = [text[start : start + step] for start in range(0, len(text), step)]
    else:
        target = max(1, max_tokens // 4)
        size = max(1, len(words) * target // max(tokens, 1))
        pieces = [" ".join(words[start : start + size]) for start in range(0, len(words), size)]
    result: list[tuple[str, int]] = []
    for piece, piece_tokens in zip(pieces, count(pieces), strict=True):
        if piece_tokens > max_tokens and len(piece) > 1:
            result.extend(_split_long(piece, piece_tokens, max_tokens, count))
        else:
            result.append((piece, piece_tokens))
    return result


def _units(body: str, kind: str, count: TokenCounter, max_tokens: int) -> list[_Unit]:
    raw: list[tuple[str, str, bool, str]] = []  # (text, section, starts_section, heading)
    for section, heading, text in _sections(body, kind):
        first = True
        for paragraph in _paragraphs(text):
            lines = paragraph.splitlines()
            if kind != "text" and _HEADING.match(lines[0].strip()):
                raw.append(("\n\n" + lines[0].strip(), section, first, heading))
                first = False
                lines = lines[1:]
                if not lines:
                    continue
            # Lists and tables keep their line breaks; prose is split into sentences.
            if len(lines) > 1 and all(re.match(r"\s*([-*+]|\d+[.)]|\|)", ln) for ln in lines[1:]):
                pieces = lines
            else:
                pieces = _SENTENCE_END.split(" ".join(ln.strip() for ln in lines))
            for index, piece in enumerate(pieces):
                sep = "\n\n" if index == 0 else ("\n" if pieces is lines else " ")
                raw.append((sep + piece.strip(), section, first, heading))
                first = False
    counts = count([text for text, *_ in raw]) if raw else []
    units: list[_Unit] = []
    for (text, section, starts, heading), tokens in zip(raw, counts, strict=True):
        if tokens <= max_tokens:
            units.append(_Unit(text, tokens, section, starts, heading))
            continue
        sep = text[: len(text) - len(text.lstrip())]
        for index, (part, part_tokens) in enumerate(_split_long(text.strip(), tokens, max_tokens, count)):
            units.append(
                _Unit(
                    (sep if index == 0 else " ") + part, part_tokens, section, starts and index == 0, heading
                )
            )
    return units


def _render(units: Sequence[_Unit]) -> str:
    parts: list[str] = []
    after_heading = False
    for unit in units:
        text = unit.text
        parts.append("\n\n" + text.lstrip() if after_heading else text)
        after_heading = text.lstrip().startswith("#")
    return "".join(parts).strip()


def _overlap(units: Sequence[_Unit], budget: int) -> list[_Unit]:
    tail: list[_Unit] = []
    total = 0
    for unit in reversed(units):
        if unit.starts_section and unit.text.strip().startswith("#"):
            break
        if total + unit.tokens > budget:
            break
        tail.insert(0, unit)
        total += unit.tokens
    return tail


def chunk_document(
    doc_id: str,
    parsed: ParsedDocument,
    count: TokenCounter,
    options: ChunkingOptions | None = None,
    content_type: str = "",
    title: str | None = None,
) -> list[Chunk]:
    """Chunks of a parsed document, in order. `count` returns word-piece counts for a batch of strings.
    `title` (default: the parsed title) is what chunks that lack it are embedded with."""
    opts = options or ChunkingOptions()
    doc_title = (parsed.title if title is None else title).strip()
    kind = content_type_for(doc_id, content_type)
    units = _units(parsed.body, kind, count, opts.max_tokens)
    drafts: list[_Draft] = []
    current = _Draft()
    for unit in units:
        at_heading = unit.starts_section and current.tokens >= opts.min_tokens
        too_big = current.tokens + unit.tokens > opts.max_tokens
        if current.units and (at_heading or too_big):
            drafts.append(current)
            carry: list[_Unit] = []
            if too_big and not unit.starts_section:
                carry = _overlap(current.units, opts.overlap_tokens)
                if unit.heading and unit.heading not in _render(carry):
                    heading = _Unit("\n\n" + unit.heading, count([unit.heading])[0], unit.section, False)
                    carry = [heading, *carry]
                while carry and sum(u.tokens for u in carry) + unit.tokens > opts.max_tokens:
                    carry.pop(0)
            current = _Draft(units=list(carry), tokens=sum(u.tokens for u in carry))
        current.units.append(unit)
        current.tokens += unit.tokens
    if current.units:
        drafts.append(current)
    # A short trailing chunk is merged into its predecessor when both fit together.
    if len(drafts) > 1 and drafts[-1].tokens < opts.min_tokens:
        last, previous = drafts[-1], drafts[-2]
        fresh = [u for u in last.units if u not in previous.units]
        if previous.tokens + sum(u.tokens for u in fresh) <= opts.max_tokens:
            previous.units.extend(fresh)
            previous.tokens += sum(u.tokens for u in fresh)
            drafts.pop()

    # Word-piece counts are not exactly additive across joins; re-count and push overflow forward.
    texts: list[str] = []
    token_counts: list[int] = []
    position = 0
    while position < len(drafts):
        draft = drafts[position]
        text = _render(draft.units)
        tokens = count([text])[0]
        if tokens > opts.max_tokens and len(draft.units) > 1:
            unit = draft.units.pop()
            draft.tokens -= unit.tokens
            if position + 1 == len(drafts):
                drafts.append(_Draft())
            drafts[position + 1].units.insert(0, unit)
            drafts[position + 1].tokens += unit.tokens
            continue
        texts.append(text)
        token_counts.append(tokens)
        position += 1
    chunks: list[Chunk] = []
    seen: dict[str, int] = {}
    for index, (draft, text, tokens) in enumerate(zip(drafts, texts, token_counts, strict=True)):
        if not text:
            continue
        embedded = with_title(doc_title, text)
        digest = content_hash(embedded)
        short = digest[:16]
        seen[short] = seen.get(short, 0) + 1
        suffix = "" if seen[short] == 1 else f"-{seen[short]}"
        section = next((u.section for u in draft.units if u.section), "")
        chunks.append(
            Chunk(
                chunk_id=f"{doc_id}#{short}{suffix}",
                text=text,
                index=index,
                section=section,
                token_count=tokens,
                content_hash=digest,
                embedded_text=embedded,
            )
        )
    return chunks

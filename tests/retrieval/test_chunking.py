"""Chunking: token bounds, overlap, headings, front matter, HTML, content-derived ids."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retrieval_service.adapters.embedding import MiniLMEmbedding
from retrieval_service.chunking import (
    ChunkingOptions,
    chunk_document,
    parse_document,
    split_front_matter,
)

OPTIONS = ChunkingOptions(min_tokens=200, max_tokens=254, overlap_tokens=40)


def _section(name: str, sentences: int) -> str:
    body = " ".join(
        f"{name} policy detail number {i} explains how customers get help with their orders."
        for i in range(sentences)
    )
    return f"## {name}\n\n{body}\n"


def _long_markdown() -> str:
    return (
        "---\ntitle: Long guide\ncategory: guides\nlast_updated: 2026-01-01\n---\n# Long guide\n\nIntro.\n\n"
        + _section("Alpha", 60)
        + "\n"
        + _section("Beta", 30)
        + "\n"
        + _section("Gamma", 5)
    )


def test_short_document_is_one_chunk(embedding: MiniLMEmbedding) -> None:
    parsed = parse_document("faq.md", "# FAQ\n\nShort answer. Another sentence.\n\n## More\n\nA bit more.")
    chunks = chunk_document("faq.md", parsed, embedding.count_tokens_batch, OPTIONS)
    assert len(chunks) == 1
    assert chunks[0].text.startswith("# FAQ")
    assert "A bit more." in chunks[0].text
    assert parsed.title == "FAQ"


def test_long_document_chunks_stay_within_token_bounds(embedding: MiniLMEmbedding) -> None:
    parsed = parse_document("guide.md", _long_markdown())
    chunks = chunk_document("guide.md", parsed, embedding.count_tokens_batch, OPTIONS)
    assert len(chunks) >= 4
    for chunk in chunks:
        assert chunk.token_count == embedding.count_tokens(chunk.text)
        assert chunk.token_count <= OPTIONS.max_tokens
    # Every chunk but the last of a section reaches the minimum (text allows it here).
    full = [c for c in chunks if c.section.endswith("Alpha")][:-1]
    assert full and all(c.token_count >= OPTIONS.min_tokens for c in full)
    assert [c.index for c in chunks] == list(range(len(chunks)))


def test_consecutive_chunks_of_a_long_section_overlap(embedding: MiniLMEmbedding) -> None:
    parsed = parse_document("guide.md", _long_markdown())
    chunks = [
        c
        for c in chunk_document("guide.md", parsed, embedding.count_tokens_batch, OPTIONS)
        if "Alpha" in c.section
    ]
    assert len(chunks) >= 2
    for first, second in itertools.pairwise(chunks):
        last_sentence = first.text.rsplit(". ", 1)[-1]
        assert last_sentence in second.text, "the next chunk repeats the previous chunk's tail"
        assert second.text.startswith("## Alpha"), "a continuation chunk repeats its section heading"


def test_chunks_follow_headings(embedding: MiniLMEmbedding) -> None:
    parsed = parse_document("guide.md", _long_markdown())
    chunks = chunk_document("guide.md", parsed, embedding.count_tokens_batch, OPTIONS)
    beta = [c for c in chunks if c.section == "Long guide > Beta"]
    assert beta, "Beta starts its own chunk"
    assert beta[0].text.startswith("## Beta")
    assert all("Alpha policy" not in c.text for c in beta)


def test_front_matter_is_parsed_and_not_chunked() -> None:
    fields, body = split_front_matter(
        '---\ntitle: "Refunds"\ncategory: refunds\nlast_updated: 2026-01-05\n---\nBody'
    )
    assert fields == {"title": "Refunds", "category": "refunds", "last_updated": "2026-01-05"}
    assert body.strip() == "Body"
    assert split_front_matter("no front matter") == ({}, "no front matter")


def test_html_headings_become_sections(embedding: MiniLMEmbedding) -> None:
    html = (
        "<html><head><title>Help page</title><style>p{color:red}</style><script>var x=1;</script></head>"
        "<body><h1>Returns</h1><p>Return &amp; refund within 30 days.</p><ul><li>Unused</li><li>Boxed</li></ul>"
        "<h2>Labels</h2><p>Print the label.</p></body></html>"
    )
    parsed = parse_document("help/returns.html", html)
    assert parsed.title == "Help page"
    assert "var x" not in parsed.body and "color" not in parsed.body
    assert "# Returns" in parsed.body and "## Labels" in parsed.body
    assert "Return & refund within 30 days." in parsed.body
    chunks = chunk_document("help/returns.html", parsed, embedding.count_tokens_batch, OPTIONS)
    assert len(chunks) == 1 and "- Unused" in chunks[0].text


def test_plain_text_ignores_hash_lines_and_titles_from_file_name(embedding: MiniLMEmbedding) -> None:
    parsed = parse_document("notes/store-hours.txt", "# not a heading in text\n\nOpen 9 to 5.")
    assert parsed.title == "Store hours"
    chunks = chunk_document("notes/store-hours.txt", parsed, embedding.count_tokens_batch, OPTIONS)
    assert chunks[0].section == ""


def test_chunk_ids_derive_from_content(embedding: MiniLMEmbedding) -> None:
    text = _long_markdown()
    first = chunk_document("g.md", parse_document("g.md", text), embedding.count_tokens_batch, OPTIONS)
    again = chunk_document("g.md", parse_document("g.md", text), embedding.count_tokens_batch, OPTIONS)
    assert [c.chunk_id for c in first] == [c.chunk_id for c in again]
    assert all(c.chunk_id.startswith("g.md#") for c in first)
    changed = text.replace("Gamma policy detail number 3", "Gamma policy detail number three")
    second = chunk_document("g.md", parse_document("g.md", changed), embedding.count_tokens_batch, OPTIONS)
    before, after = {c.chunk_id for c in first}, {c.chunk_id for c in second}
    assert len(before - after) == 1, "only the chunk holding the edited sentence changes"
    assert len(after - before) == 1


def test_repeated_identical_chunks_get_distinct_ids(embedding: MiniLMEmbedding) -> None:
    section = _section("Same", 25)
    text = "# Twice\n\n" + section + "\n# Twice\n\n" + section
    chunks = chunk_document("t.md", parse_document("t.md", text), embedding.count_tokens_batch, OPTIONS)
    ids = [c.chunk_id for c in chunks]
    assert len(ids) == len(set(ids))


def test_sentence_longer_than_a_chunk_is_split(embedding: MiniLMEmbedding) -> None:
    text = "# Wall\n\n" + " ".join(f"word{i}" for i in range(1500))
    chunks = chunk_document("w.md", parse_document("w.md", text), embedding.count_tokens_batch, OPTIONS)
    assert len(chunks) > 1
    assert all(c.token_count <= OPTIONS.max_tokens for c in chunks)
    assert "word1499" in chunks[-1].text


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.one_of(
            st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=400),
            st.sampled_from(
                ["# Head", "## Sub head", "- item", "```", "\n\n", "Sentence one. Sentence two!"]
            ),
        ),
        max_size=30,
    )
)
def test_any_text_gives_bounded_chunks(embedding: MiniLMEmbedding, parts: list[str]) -> None:
    text = "\n".join(parts)
    chunks = chunk_document("x.md", parse_document("x.md", text), embedding.count_tokens_batch, OPTIONS)
    for chunk in chunks:
        assert chunk.text.strip()
        assert chunk.token_count <= OPTIONS.max_tokens

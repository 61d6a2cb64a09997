"""Two retrieval mechanisms for questions the vectors read badly, on real Chroma and the real embedding model:

- *exact terms*: a query term rare in the knowledge base and in the language (a product name, an acronym, an
  error number) that occurs in a chunk makes that chunk relevant and ranks it first, while everyday words that
  happen to occur in one chunk do not, and off-topic questions still find nothing;
- *titled chunks*: a chunk that does not contain its article's title is embedded and indexed with it.

The knowledge base is tests/retrieval/synthetic_kb.py plus one import article written for these tests.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from retrieval_service.adapters.embedding import MiniLMEmbedding
from retrieval_service.chunking import ChunkingOptions, chunk_document, parse_document, with_title
from retrieval_service.config import Config
from retrieval_service.knowledge_base import DocumentIn
from retrieval_service.lexical_index import build_index, tokenize
from retrieval_service.server import build_knowledge_base
from tests.retrieval import synthetic_kb

IMPORT_ARTICLE = """# Importing notes from other apps

Open Settings > Data > Import and pick the app you are leaving. Notes from Evernote come over with their
tags, attachments and creation dates; OneNote sections become notebooks. Large imports keep running in the
background, so you can keep working meanwhile, and we email you when they are done.
"""


def _uncommon(embedding: MiniLMEmbedding) -> Callable[[str], bool]:
    """The knowledge base's test: the model's vocabulary has no single word piece for the term."""
    return lambda term: not embedding.model.is_whole_word(term)


def test_only_rare_uncommon_terms_are_exact(embedding: MiniLMEmbedding) -> None:
    index = build_index(
        [
            ("import#1", IMPORT_ARTICLE, {}),
            *[(f"{doc_id}#1", text, {}) for doc_id, text in synthetic_kb.ARTICLES.items()],
        ],
        [],
    )
    uncommon = _uncommon(embedding)
    hits = index.search("we are leaving evernote", 5, uncommon=uncommon)
    assert hits[0].chunk_id == "import#1" and hits[0].exact_terms == ("evernote",)
    # "meanwhile" is in one chunk too, but an everyday word: it ranks that chunk, it does not make it exact.
    assert index.is_rare("meanwhile")
    everyday = index.search("what happens meanwhile", 5, uncommon=uncommon)
    assert everyday[0].chunk_id == "import#1" and everyday[0].exact_terms == ()
    # A word in many chunks is not rare, however it is spelled.
    assert not index.is_rare("note")
    assert index.search("evernote", 5)[0].exact_terms == (), "without `uncommon` only codes are exact"


def test_plural_numbers_fold_to_the_number() -> None:
    assert tokenize("we keep getting 429s") == ["keep", "getting", "429"]
    assert "ab12s" in tokenize("part AB12S"), "a code keeps its final letter"


async def test_rare_term_makes_its_article_relevant_and_off_topic_still_abstains(
    tmp_path: Path, embedding: MiniLMEmbedding
) -> None:
    kb = build_knowledge_base(Config(data_dir=tmp_path, collection="exact-terms"), embedding)
    try:
        documents = [
            *synthetic_kb.documents(),
            DocumentIn(doc_id="features/import.md", content=IMPORT_ARTICLE),
        ]
        await kb.ingest(documents, prune_changed_sections=True)
        question = "we're leaving evernote, can we bring our old stuff over"
        result = await kb.search(question, top_k=3)
        assert not result.nothing_relevant and result.hits[0].doc_id == "features/import.md"
        assert result.hits[0].lexical_rank == 1
        for off_topic in (*synthetic_kb.OFF_TOPIC, "what should i do meanwhile on a rainy afternoon"):
            refused = await kb.search(off_topic)
            assert refused.nothing_relevant and not refused.hits, off_topic
    finally:
        await kb.close()


def _long_article() -> str:
    filler = " ".join(
        f"Step {n}: open the editor, choose a template and check the preview before you save the page."
        for n in range(1, 16)
    )
    deep = (
        "## Sharing a finished page\n\nSend the link to a colleague; they can comment but not change it. "
        "Revoke the link any time from the Share menu. A colleague who opens an expired link sees a "
        "notice instead of the page, and you can send a fresh link whenever you like. Comments from "
        "colleagues show up next to the paragraph they are about, and you get an email for each one."
    )
    return f"# Publishing a website from your notebook\n\n{filler}\n\n{deep}\n"


def test_chunks_without_the_title_are_embedded_with_it(embedding: MiniLMEmbedding) -> None:
    parsed = parse_document("web/publish.md", _long_article())
    options = ChunkingOptions(min_tokens=60, max_tokens=120, overlap_tokens=20)
    chunks = chunk_document("web/publish.md", parsed, embedding.count_tokens_batch, options)
    assert len(chunks) > 1
    assert chunks[0].embedded_text == chunks[0].text, "the first chunk already holds the title"
    for chunk in chunks:
        assert chunk.embedded_text == with_title(parsed.title, chunk.text)
    deep = chunks[-1]
    assert deep.text.startswith("## Sharing a finished page"), "a later section's chunk lacks the title"
    assert deep.embedded_text == f"# Publishing a website from your notebook\n\n{deep.text}"
    retitled = chunk_document(
        "web/publish.md", parsed, embedding.count_tokens_batch, options, title="Your public website"
    )
    assert [c.text for c in retitled] == [c.text for c in chunks]
    assert retitled[-1].chunk_id != chunks[-1].chunk_id, "a new title re-embeds the chunks that carry it"


async def test_deep_chunk_matches_its_article_topic(tmp_path: Path, embedding: MiniLMEmbedding) -> None:
    kb = build_knowledge_base(
        Config(data_dir=tmp_path, collection="titled", chunk_min_tokens=60, chunk_max_tokens=120),
        embedding,
    )
    try:
        await kb.ingest(
            [*synthetic_kb.documents(), DocumentIn(doc_id="web/publish.md", content=_long_article())],
            prune_changed_sections=True,
        )
        question = "can a colleague see the website I published"
        result = await kb.search(question, top_k=8, max_distance=2.0)
        deep = next(hit for hit in result.hits if hit.text.startswith("## Sharing a finished page"))
        assert deep.doc_id == "web/publish.md" and deep.lexical_rank > 0, "the title's words are indexed"
        untitled = 1.0 - float(np.dot(*embedding.embed([question, deep.text])))
        assert deep.distance < untitled, "the title brings the deep chunk nearer its article's topic"
    finally:
        await kb.close()

"""The relevance threshold calibrated for the sample KB separates its on-topic from its off-topic questions."""

from __future__ import annotations

from pathlib import Path

from retrieval_service.adapters.embedding import MiniLMEmbedding
from retrieval_service.calibration import OFF_TOPIC, ON_TOPIC, calibrate
from retrieval_service.config import DEFAULT_MAX_DISTANCE, Config
from retrieval_service.server import build_knowledge_base
from tests.retrieval.conftest import KB_DIR


async def test_calibrated_threshold_separates_the_calibration_questions(
    tmp_path: Path, embedding: MiniLMEmbedding
) -> None:
    kb = build_knowledge_base(Config(data_dir=tmp_path, collection="calibration"), embedding)
    try:
        result = await calibrate(kb, KB_DIR)
    finally:
        await kb.close()
    assert result.threshold_source == "calibrated"
    assert result.off_topic_refused == len(OFF_TOPIC), "no off-topic question gets an answer from the KB"
    assert result.on_topic_answered >= len(ON_TOPIC) - 1, (
        "at most one on-topic question misses (docs/retrieval.md)"
    )
    # The fallback for KBs too small to calibrate still separates them as a plain cut-off.
    kept, dropped = result.accuracy(DEFAULT_MAX_DISTANCE)
    assert dropped == len(OFF_TOPIC) and kept >= len(ON_TOPIC) - 1

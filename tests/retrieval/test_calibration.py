"""The default relevance threshold still separates on-topic from off-topic questions on the sample KB."""

from __future__ import annotations

from pathlib import Path

from retrieval_service.adapters.embedding import MiniLMEmbedding
from retrieval_service.calibration import OFF_TOPIC, ON_TOPIC, calibrate
from retrieval_service.config import DEFAULT_MAX_DISTANCE, Config
from retrieval_service.server import build_knowledge_base
from tests.retrieval.conftest import KB_DIR


async def test_default_threshold_separates_the_calibration_questions(
    tmp_path: Path, embedding: MiniLMEmbedding
) -> None:
    kb = build_knowledge_base(Config(data_dir=tmp_path, collection="calibration"), embedding)
    result = await calibrate(kb, KB_DIR)
    kept, dropped = result.accuracy(DEFAULT_MAX_DISTANCE)
    assert dropped == len(OFF_TOPIC), "no off-topic question gets an answer from the KB"
    assert kept >= len(ON_TOPIC) - 1, "at most one on-topic question misses (see docs/retrieval.md)"
    assert result.best_off_topic - DEFAULT_MAX_DISTANCE >= 0.05, "a margin on the off-topic side"

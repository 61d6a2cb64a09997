from __future__ import annotations

from typing import get_args

from agent_service.escalation_policy import Priority, ReasonCode
from service_kit.codes import ESCALATION_REASON_CODES, PRIORITY_CODES


def test_codes_follow_the_proto_enums() -> None:
    assert PRIORITY_CODES == ("low", "medium", "high")
    assert "negative_sentiment" in ESCALATION_REASON_CODES
    assert "unspecified" not in ESCALATION_REASON_CODES


def test_the_agents_typed_codes_match_the_contract() -> None:
    assert get_args(ReasonCode) == ESCALATION_REASON_CODES
    assert get_args(Priority) == PRIORITY_CODES

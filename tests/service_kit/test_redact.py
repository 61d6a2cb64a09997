from __future__ import annotations

import pytest

from service_kit.redact import redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to jane.doe+help@example.co.uk please", "write to [email] please"),
        ("card 4111 1111 1111 1111 expired", "card [card] expired"),
        ("card 4111-1111-1111-1111", "card [card]"),
        ("call me on +1 (415) 555-0134", "call me on [phone]"),
    ],
)
def test_personal_data_is_replaced(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "listening on 127.0.0.1:50053",
        "eta 2026-02-18",
        "order ORD-12345 tracking 1Z999AA10123456784",
        "took 12.345678 ms",
        "ticket TKT-01J9Z3",
    ],
)
def test_operational_values_are_kept(text: str) -> None:
    assert redact(text) == text

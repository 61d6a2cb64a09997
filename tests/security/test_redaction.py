"""Logs hold no personal data: every redaction pattern (IBANs, international phone numbers, card numbers with any
separator including no-break spaces, internationalised e-mail addresses), and identifiers that can carry
personal data (conversation, request and turn ids) written only as their digest, in real JSON log lines."""

from __future__ import annotations

import contextvars
import io
import json
import logging
import subprocess
import sys

import pytest

from service_kit.jsonlog import JsonFormatter, conversation_id_var, log_id, request_id_var
from service_kit.redact import redact

NBSP, NNBSP, THIN = "\u00a0", "\u202f", "\u2009"


@pytest.mark.parametrize(
    "iban",
    [
        "DE89 3704 0044 0532 0130 00",
        "DE89370400440532013000",
        "GB82 WEST 1234 5698 7654 32",
        "GB82WEST12345698765432",
        "FR14 2004 1010 0505 0001 3M02 606",
        f"NL91{NBSP}ABNA{NBSP}0417{NBSP}1643{NBSP}00",
        "ES91-2100-0418-4502-0005-1332",
    ],
)
def test_ibans_are_redacted(iban: str) -> None:
    assert redact(f"refund to {iban}, thanks") == "refund to [iban], thanks"


@pytest.mark.parametrize(
    "card",
    [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "4111111111111111",
        f"4111{NBSP}1111{NBSP}1111{NBSP}1111",
        f"4111{NNBSP}1111{NNBSP}1111{NNBSP}1111",
        f"4111{THIN}1111{THIN}1111{THIN}1111",
        "4111.1111.1111.1111",
        "4111/1111/1111/1111",
        "4111 - 1111 - 1111 - 1111",
        "5555\u20135555\u20135555\u20134444",  # en dashes
        "3782 822463 10005",  # Amex grouping
    ],
)
def test_card_numbers_with_any_separator_are_redacted(card: str) -> None:
    assert redact(f"my card {card} was charged") == "my card [card] was charged"


@pytest.mark.parametrize(
    "phone",
    [
        "+44 20 7946 0958",
        "+33 (0)1 23 45 67 89",
        "+1-202-555-0143",
        "+1 (415) 555-0100",
        "0044 20 7946 0958",
        "+49 30 1234567",
        "+7 (495) 123-45-67",
        "+354 551 2345",
        "+81 3-1234-5678",
        f"+44{NBSP}20{NBSP}7946{NBSP}0958",
        f"+33{NNBSP}6{NNBSP}12{NNBSP}34{NNBSP}56{NNBSP}78",
        "+55 11 91234-5678",
        "(415) 555-0100",
    ],
)
def test_international_phone_numbers_are_redacted(phone: str) -> None:
    assert redact(f"call me on {phone} today") == "call me on [phone] today"


@pytest.mark.parametrize(
    "email",
    [
        "jane.doe+orders@example.com",
        "josé.garcía@correo.es",
        "Pelé@exemple.fr",
        "müller@bücher.de",
        "用户@例子.广告",
        "почта@пример.рф",
        "a@xn--bcher-kva.de",
        "user\uff20example.com",  # full-width at sign
    ],
)
def test_internationalised_email_addresses_are_redacted(email: str) -> None:
    assert redact(f"write to {email} please") == "write to [email] please"


@pytest.mark.parametrize(
    "text",
    [
        "order ORD-12345 tracking 1Z999AA10123456784 eta 2026-02-18",
        "at 2026-02-18 10:00 from 192.168.1.10 port 50051 pid 12345",
        "chunk a3f1b2c4d5e6f7081920abcdef ab12cdef0123456789abcdef",
        "price 1234567.89 EUR, version 1.2.3, 10 000 000 items, user@localhost",
    ],
)
def test_things_that_are_not_personal_data_are_kept(text: str) -> None:
    assert redact(text) == text


def test_check_digits_decide_card_and_iban_and_long_numbers_are_still_masked() -> None:
    text = redact("card 4111 1111 1111 1112 (not Luhn); IBAN DE00 3704 0044 0532 0130 00 (bad check digits)")
    assert "[card]" not in text and "[iban]" not in text
    assert "4111" not in text and "3704" not in text  # still masked, as a phone-like number


def _log_line(**extra: object) -> dict[str, object]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("agent_service"))
    logger = logging.getLogger("test.redaction.hashed_ids")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)

    def emit() -> None:
        request_id_var.set("req-jane.doe@example.com")
        conversation_id_var.set("conv-for-jane.doe@example.com")
        logger.info("turn completed for +44 20 7946 0958", extra=extra)

    contextvars.copy_context().run(emit)
    return dict(json.loads(stream.getvalue()))


def test_conversation_request_and_turn_ids_are_logged_only_as_their_digest() -> None:
    line = _log_line(turn_id="turn-4111 1111 1111 1111", tool="lookup_order_status", ticket_id="TKT-1")
    text = json.dumps(line, ensure_ascii=False)
    assert line["conversation_id"] == log_id("conv-for-jane.doe@example.com")
    assert line["request_id"] == log_id("req-jane.doe@example.com")
    assert line["turn_id"] == log_id("turn-4111 1111 1111 1111")
    assert "jane.doe" not in text and "4111" not in text and "7946" not in text
    assert line["message"] == "turn completed for [phone]" and line["tool"] == "lookup_order_status"
    assert str(line["conversation_id"]).startswith("h:") and len(str(line["conversation_id"])) == 18
    # The same id always gives the same digest, so one conversation can still be followed through the logs.
    assert log_id("conv-1") == log_id("conv-1") != log_id("conv-2")


def test_the_digest_of_an_id_can_be_computed_from_the_command_line() -> None:
    output = subprocess.run(
        [sys.executable, "-m", "service_kit.jsonlog", "conv-42"], capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == f"conv-42\t{log_id('conv-42')}"


def test_a_real_service_log_line_on_stdout_carries_hashed_ids() -> None:
    """A separate interpreter with the services' own logging setup, writing to its real stdout."""
    script = (
        "import logging\n"
        "from service_kit.jsonlog import configure_logging, conversation_id_var, request_id_var\n"
        "configure_logging('agent_service')\n"
        "request_id_var.set('req-77')\n"
        "conversation_id_var.set('jane@example.com')\n"
        "logging.getLogger('agent_service.audit').info('turn', extra={'event': 'turn', 'turn_id': 't-1'})\n"
    )
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    line = json.loads(output.strip().splitlines()[-1])
    assert line["conversation_id"] == log_id("jane@example.com") and "jane" not in output
    assert line["request_id"] == log_id("req-77") and line["turn_id"] == log_id("t-1")

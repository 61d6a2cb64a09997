"""Redaction of personal data (emails, phone numbers, card numbers) before anything is logged."""

from __future__ import annotations

import re

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
# 13-19 digits, optionally separated by spaces or dashes: candidate card numbers.
_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
_PHONE = re.compile(r"(?<![\w-])\+?\d[\d ().-]{7,}\d(?![\w-])")


def _luhn_ok(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return "[card]" if _luhn_ok(digits) else match.group(0)


# Things that look like phone numbers but are not: IPv4 addresses, ISO dates and times, decimals.
_NOT_PHONE = re.compile(r"^(\d{1,3}(\.\d{1,3}){3}|\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}.*)?|\d+\.\d+)$")


def _phone(match: re.Match[str]) -> str:
    candidate = match.group(0)
    if _NOT_PHONE.match(candidate) or sum(char.isdigit() for char in candidate) < 9:
        return candidate
    return "[phone]"


def redact(text: str) -> str:
    """Replaces emails, Luhn-valid card numbers and phone-like numbers with placeholders."""
    text = _EMAIL.sub("[email]", text)
    text = _CARD.sub(_card, text)
    return _PHONE.sub(_phone, text)

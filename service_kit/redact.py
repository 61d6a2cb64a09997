"""Redaction of personal data before anything is logged: e-mail addresses (internationalised ones too), IBANs,
card numbers (any separator, non-breaking spaces included) and phone numbers (international formats).

Order matters: e-mails first (their digits are not a phone number), then IBANs (a long run of digits inside one
could pass as a card), then cards (Luhn-checked), then phone numbers.
"""

from __future__ import annotations

import re

# Characters that separate digit groups in numbers people type or paste: space, tab, the no-break and thin
# spaces (U+00A0, U+2007, U+2009, U+202F), hyphens and dashes, dots and slashes.
_SEP = r"[ \t\u00a0\u2007\u2009\u202f\u2010-\u2015\u2212./_-]"

# Local part: letters of any script, digits and the RFC 5322 specials; domain: labels of any script (IDN) or
# punycode; the at sign may be the full-width one.
_EMAIL = re.compile(
    r"(?<![\w.!#$%&'*+/=?^`{|}~-])[\w.!#$%&'*+/=?^`{|}~-]{1,64}[@\uff20](?:[^\W_](?:[\w-]{0,61}[^\W_])?\.){1,8}"
    r"(?:[^\W\d_]{2,63}|xn--[a-z0-9-]{1,59})(?![\w-])",
    re.IGNORECASE,
)
# Country code, check digits, then 11-30 letters/digits, optionally grouped (usually by fours).
# The country code must be upper case (hex ids and words are not IBANs); the match may run on into a following
# word or number, so the longest valid prefix is what gets redacted.
_IBAN = re.compile(rf"(?<![\w])[A-Z]{{2}}\d{{2}}(?:{_SEP}{{0,2}}[A-Za-z0-9]){{11,30}}")
# 13-19 digits, each group separated by up to three separator characters: candidate card numbers.
_CARD = re.compile(rf"(?<!\d)(?:\d{_SEP}{{0,3}}){{12,18}}\d(?!\d)")
# An optional + or 00 prefix, digits with separators and parentheses: candidate phone numbers.
_PHONE = re.compile(rf"(?<![\w-])(?:\+|\b00)?\(?\d(?:(?:{_SEP}|[()]){{0,3}}\d){{6,}}(?![\w-])")


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


def _iban_ok(candidate: str) -> bool:
    compact = re.sub(r"[^0-9A-Za-z]", "", candidate).upper()
    if not 15 <= len(compact) <= 34 or not compact.isascii():
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def _group_ends(text: str) -> list[int]:
    """Offsets just after each group of letters/digits in `text`, longest first."""
    return [found.end() for found in re.finditer(r"[0-9A-Za-z]+", text)][::-1]


def _iban(match: re.Match[str]) -> str:
    text = match.group(0)
    for end in _group_ends(text):
        if end < len(text) and text[end].isalnum():
            continue
        if _iban_ok(text[:end]):
            return "[iban]" + text[end:]
    return text


def _card(match: re.Match[str]) -> str:
    text = match.group(0)
    for end in _group_ends(text):
        digits = re.sub(r"\D", "", text[:end])
        if len(digits) < 13:
            break
        if len(digits) <= 19 and _luhn_ok(digits):
            return "[card]" + text[end:]
    return text


# Things that look like phone numbers but are not: IPv4 addresses, ISO dates and times, decimals.
_NOT_PHONE = re.compile(
    r"^(\d{1,3}(\.\d{1,3}){3}|\d{4}[-/.]\d{2}[-/.]\d{2}([ T]\d{2}(:\d{2}.*)?)?|\d+\.\d+)$"
)


def _phone(match: re.Match[str]) -> str:
    candidate = match.group(0)
    digits = sum(char.isdigit() for char in candidate)
    international = candidate.startswith(("+", "00"))
    if _NOT_PHONE.match(candidate) or digits < (8 if international else 9):
        return candidate
    return "[phone]"


def redact(text: str) -> str:
    """Replaces e-mails, IBANs, Luhn-valid card numbers and phone-like numbers with placeholders."""
    text = _EMAIL.sub("[email]", text)
    text = _IBAN.sub(_iban, text)
    text = _CARD.sub(_card, text)
    return _PHONE.sub(_phone, text)

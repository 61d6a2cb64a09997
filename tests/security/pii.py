"""A PII scanner for log output: e-mail addresses and Luhn-valid card numbers that survived redaction.

Deliberately independent of service_kit.redact (a checker must not share the code it checks). Card numbers:
13-19 digits, optionally grouped by single spaces or dashes, not part of a longer digit/letter run, passing
the Luhn check. Redaction placeholders (`[email]`, `[card]`, `[REDACTED...]`) are not findings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")


@dataclass(frozen=True)
class Finding:
    kind: str  # "email" | "card"
    value: str
    line_number: int
    source: str

    def masked(self) -> str:
        """The finding without repeating the PII in full (reports and assertion messages)."""
        keep = 4
        return f"{self.kind} {self.value[:2]}…{self.value[-keep:]} at {self.source}:{self.line_number}"


def luhn_valid(digits: str) -> bool:
    if not digits.isdigit() or not 13 <= len(digits) <= 19:
        return False
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def scan_log_text(text: str, source: str = "<text>") -> list[Finding]:
    """Every e-mail address and Luhn-valid card number in `text`, with its line number."""
    findings: list[Finding] = []
    for number, line in enumerate(text.splitlines(), start=1):
        for match in EMAIL.finditer(line):
            findings.append(Finding("email", match.group(), number, source))
        for match in CARD.finditer(line):
            digits = re.sub(r"[ -]", "", match.group())
            if luhn_valid(digits):
                findings.append(Finding("card", match.group(), number, source))
    return findings


def scan_files(paths: Iterable[Path]) -> list[Finding]:
    findings: list[Finding] = []
    for path in paths:
        if path.is_file():
            findings.extend(scan_log_text(path.read_text(encoding="utf-8", errors="replace"), str(path)))
    return findings

"""Checks on free text that reaches a tool: length caps, control characters, prompt-injection strings."""

from __future__ import annotations

import re
import unicodedata

from tools_service.errors import InvalidArgumentError

# Bidirectional overrides/isolates and zero-width characters hide text from a human reader.
_INVISIBLE = frozenset("\u200b\u200c\u200d\u2060\ufeff\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

# Text that tries to talk to a model or a tool parser rather than describe a customer's problem.
_INJECTION = re.compile(
    r"|".join(
        (
            r"\b(ignore|disregard|forget|override)\b.{0,40}\b(previous|prior|above|earlier|all|system)\b"
            r".{0,20}\b(instructions?|prompts?|rules|messages?)\b",
            r"\bsystem\s*prompt\b",
            r"\byou\s+are\s+now\b",
            r"\bdeveloper\s+mode\b",
            r"\bjailbreak\b",
            r"<\|[a-z_]+\|>",  # chat-template tokens such as <|im_start|>
            r"</?\s*(system|assistant|tool|function_call|instructions?)\s*>",
            r"\[/?(INST|SYS)\]",
            r"\bBEGIN\s+(SYSTEM|INSTRUCTIONS)\b",
        )
    ),
    re.IGNORECASE | re.DOTALL,
)


def check_text(
    field: str, value: str, max_length: int, *, required: bool, multiline: bool, injection: bool = False
) -> str:
    """Returns `value` stripped, or raises InvalidArgumentError naming `field`.

    `multiline` allows newlines, carriage returns and tabs; `injection` also rejects prompt-injection strings
    (used for text a model wrote, not for text a trusted caller or a human agent wrote).
    """
    value = value.strip()
    if not value:
        if required:
            raise InvalidArgumentError(field, f"{field} is required.")
        return value
    if len(value) > max_length:
        raise InvalidArgumentError(field, f"{field} is longer than {max_length} characters.")
    for char in value:
        if multiline and char in "\n\r\t":
            continue
        if char in _INVISIBLE or unicodedata.category(char) == "Cc":
            raise InvalidArgumentError(field, f"{field} contains control or invisible characters.")
    if injection and _INJECTION.search(value):
        raise InvalidArgumentError(
            field, f"{field} contains text that looks like instructions to an AI; rephrase it."
        )
    return value


def clean_message(text: str) -> str:
    """Customer or agent chat text as stored on a ticket: CRLF → LF, other control and invisible characters
    dropped (so nothing can rewrite a helpdesk terminal), surrounding whitespace stripped."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "".join(
        char
        for char in text
        if char in "\n\t" or (char not in _INVISIBLE and unicodedata.category(char) != "Cc")
    ).strip()

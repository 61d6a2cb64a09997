"""Screening what goes out: the model's reply, for internal markup (tool-call JSON, the untrusted-data fences,
a tool schema block), system-prompt leakage and links off the allow-list."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from agent_service.domain import Flag
from agent_service.guardrails.links import remove_unknown_links
from agent_service.guardrails.normalise import fold
from agent_service.texts import DONT_KNOW, SAFE_REPLY_LEAK

LEAK_MIN_WORDS: Final[int] = 8


@dataclass(frozen=True)
class OutputVerdict:
    reply: str  # the reply to send (sanitised: unknown links removed; leakage replaced by a safe answer)
    flags: tuple[Flag, ...]


_WORD: Final[re.Pattern[str]] = re.compile(r"\w+")
# Blocks whose whole content is internal: a tool schema, a chat template's tool-call wrapper.
_INTERNAL_BLOCK: Final[re.Pattern[str]] = re.compile(
    r"<\s*(tools|tool_call|tool_calls|function_calls?)\b[^<>]*>.*?(?:<\s*/\s*\1\s*>|\Z)",
    re.IGNORECASE | re.DOTALL,
)
# A context block the model echoed, fence and all (to its closing fence or the end of the reply): a dump of the
# prompt's KB context with its header lines, not an answer. Text quoted without the fences is left alone.
_ECHOED_CONTEXT: Final[re.Pattern[str]] = re.compile(
    r"<\s*untrusted[\s_-]*data\b[^<>]{0,300}>.*?(?:<\s*/\s*untrusted[\s_-]*data\b[^<>]{0,300}>|\Z)",
    re.IGNORECASE | re.DOTALL,
)
# The fences around untrusted data, wherever one is left on its own.
_INTERNAL_TAG: Final[re.Pattern[str]] = re.compile(
    r"<\s*/?\s*(?:untrusted[\s_-]*data|tools|tool_calls?|function_calls?)\b[^<>]{0,300}>?", re.IGNORECASE
)
_DECODER: Final[json.JSONDecoder] = json.JSONDecoder()


def _words(text: str) -> list[str]:
    return _WORD.findall(fold(text))


@functools.lru_cache(maxsize=8)
def _prompt_grams(system_prompt: str, min_words: int) -> tuple[int, frozenset[tuple[str, ...]]]:
    """(n, the prompt's word n-grams): computed once per prompt, not per turn."""
    prompt_words = _words(system_prompt)
    size = min(min_words, len(prompt_words))
    return size, frozenset(tuple(prompt_words[i : i + size]) for i in range(len(prompt_words) - size + 1))


def _leak_detail(reply: str, system_prompt: str, min_words: int) -> str | None:
    size, prompt_grams = _prompt_grams(system_prompt, min_words)
    if size < 4:
        return None
    reply_words = _words(reply)
    for i in range(len(reply_words) - size + 1):
        if tuple(reply_words[i : i + size]) in prompt_grams:
            return f"{size}+ consecutive words of the system prompt"
    return None


def _is_tool_call(value: object) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("name"), str)
        and ("arguments" in value or "parameters" in value)
    ) or (
        isinstance(value, dict)
        and isinstance(value.get("function"), dict)
        and _is_tool_call(value["function"])
    )


def _remove_tool_call_json(reply: str) -> tuple[str, int]:
    """The reply without JSON objects shaped like a tool call ({"name": ..., "arguments"|"parameters": ...}),
    and how many were removed."""
    kept: list[str] = []
    removed = 0
    position = 0
    while (start := reply.find("{", position)) != -1:
        try:
            value, end = _DECODER.raw_decode(reply, start)
        except ValueError:
            kept.append(reply[position : start + 1])
            position = start + 1
            continue
        kept.append(reply[position:start])
        if _is_tool_call(value):
            removed += 1
        else:
            kept.append(reply[start:end])
        position = end
    kept.append(reply[position:])
    return "".join(kept), removed


def remove_internal_markup(reply: str) -> tuple[str, str | None]:
    """(the reply without internal markup, a description of what was removed or None)."""
    found: list[str] = []
    text, count = _INTERNAL_BLOCK.subn("", reply)
    if count:
        found.append("tool schema/call block")
    text, count = _remove_tool_call_json(text)
    if count:
        found.append("tool-call JSON")
    text, count = _ECHOED_CONTEXT.subn("", text)
    if count:
        found.append("echoed context block")
    text, count = _INTERNAL_TAG.subn("", text)
    if count:
        found.append("untrusted-data markup")
    if not found:
        return reply, None
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return text, "removed " + ", ".join(found)


def check_output(
    reply: str,
    system_prompt: str,
    known_links: Iterable[str],
    allowed_domains: Iterable[str],
    min_leak_words: int = LEAK_MIN_WORDS,
) -> OutputVerdict:
    """Screens the model's reply before it reaches the customer.

    A leak of the system prompt (``min_leak_words`` consecutive words, compared case- and
    punctuation-insensitively) replaces the whole reply with a safe answer. A link is kept only when its
    host is an allow-listed domain or a subdomain of one (http/https only); any other link is replaced by
    "[link removed]". A link that also appears in the retrieved KB text (``known_links``: links, or whole
    chunks to extract them from) is removed all the same (a KB article is not a trust anchor) and its flag
    says so, so the operator can allow-list the domain. Pass only the behavioural system prompt, not the
    KB context message. Internal markup — tool-call JSON, the ``<untrusted_data ...>`` fences, a ``<tools>``
    block — is removed first (flag ``internal_markup``); a reply that was nothing else becomes the don't-know
    answer.
    """
    flags: list[Flag] = []
    reply, removed = remove_internal_markup(reply)
    if removed is not None:
        flags.append(Flag("output", "internal_markup", removed))
        if not reply:
            reply = DONT_KNOW
    leak = _leak_detail(reply, system_prompt, min_leak_words) if system_prompt.strip() else None
    if leak is not None:
        flags.append(Flag("output", "system_prompt_leak", leak))
        return OutputVerdict(SAFE_REPLY_LEAK, tuple(flags))
    sanitised, removed_hosts = remove_unknown_links(reply, known_links, allowed_domains)
    for host in dict.fromkeys(removed_hosts):
        flags.append(Flag("output", "unknown_link", f"removed link to {host[:80]}"))
    return OutputVerdict(sanitised, tuple(flags))

"""Screening what comes in: the customer's message (`check_input`) and untrusted data (`scan_untrusted`)."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Final

from agent_service.domain import Flag
from agent_service.guardrails import semantic
from agent_service.guardrails.encoded import encoded_hits
from agent_service.guardrails.normalise import fold, is_invisible, strong_normalise, undisguise
from agent_service.guardrails.patterns import injection_hits, squash_hits
from agent_service.injection_detector import (
    ROLE_PLAY_LABEL,
    SYSTEM_PROMPT_LABEL,
    Detection,
    InjectionDetector,
)
from agent_service.texts import SAFE_REPLY_INJECTION, SAFE_REPLY_OVERSIZE, SAFE_REPLY_SYSTEM_PROMPT

DEFAULT_MAX_INPUT_CHARS: Final[int] = 4000


@dataclass(frozen=True)
class InputVerdict:
    blocked: bool  # True -> do not call the model with this message
    flags: tuple[Flag, ...]
    safe_reply: str  # what to tell the customer when blocked ("" if not blocked)


def check_input(message: str, max_chars: int = DEFAULT_MAX_INPUT_CHARS) -> InputVerdict:
    """Screens a customer message before the model sees it. Blocked -> answer with ``safe_reply`` instead.

    Blocks: oversize input, instruction overrides (one strong signal or two different weak ones), requests
    for the system prompt, role play as the system / forged role markers, and encoded payloads that decode
    to any of those. Only flags: a single weak injection signal, invisible/control characters.
    """
    if len(message) > max_chars:
        flag = Flag("input", "oversize_input", f"{len(message)} characters, limit {max_chars}")
        return InputVerdict(True, (flag,), SAFE_REPLY_OVERSIZE.format(max_chars=max_chars))

    flags: list[Flag] = []
    invisible = sum(1 for char in message if is_invisible(char))
    if invisible:
        flags.append(Flag("input", "control_characters", f"{invisible} invisible or control characters"))

    normalised = strong_normalise(message)
    folded = fold(message)
    variants = (folded, undisguise(message))
    strong: list[str] = ["spelled_out"] if squash_hits(folded) else []
    weak: set[str] = set()
    prompt_request = role_play = False
    for variant in dict.fromkeys(variants):
        v_strong, v_weak, v_prompt, v_role = injection_hits(variant)
        strong.extend(name for name in v_strong if name not in strong)
        weak.update(v_weak)
        prompt_request = prompt_request or v_prompt
        role_play = role_play or v_role

    blocked_reply = ""
    if strong or len(weak) >= 2:
        kinds = strong + sorted(weak)
        flags.append(Flag("input", "prompt_injection", "signals: " + ", ".join(kinds)))
        blocked_reply = SAFE_REPLY_INJECTION
    elif weak:
        flags.append(Flag("input", "prompt_injection", f"weak signal, not blocked: {next(iter(weak))}"))
    if role_play:
        flags.append(Flag("input", "role_play_system", "role play as the system or a forged role marker"))
        blocked_reply = blocked_reply or SAFE_REPLY_INJECTION
    if prompt_request:
        flags.append(Flag("input", "system_prompt_request", "asks for the system prompt or instructions"))
        blocked_reply = blocked_reply or SAFE_REPLY_SYSTEM_PROMPT
    encoded = encoded_hits(normalised, message, folded)
    if encoded:
        flags.append(Flag("input", "encoded_payload", "decodes to an instruction: " + ", ".join(encoded)))
        blocked_reply = blocked_reply or SAFE_REPLY_INJECTION
    if not blocked_reply:
        # The patterns missed it: paraphrase, another language, a disguise. Ask the semantic detector.
        detection = semantic.detect(message)
        if detection is not None:
            kind, blocked_reply = _SEMANTIC_KINDS.get(
                detection.label, ("prompt_injection", SAFE_REPLY_INJECTION)
            )
            flags.append(Flag("input", kind, "semantic: " + detection.describe()))
    return InputVerdict(bool(blocked_reply), tuple(flags), blocked_reply)


# Detector label -> (flag kind, safe reply); other labels block as prompt_injection.
_SEMANTIC_KINDS: Final[dict[str, tuple[str, str]]] = {
    SYSTEM_PROMPT_LABEL: ("system_prompt_request", SAFE_REPLY_SYSTEM_PROMPT),
    ROLE_PLAY_LABEL: ("role_play_system", SAFE_REPLY_INJECTION),
}


def scan_untrusted(label: str, text: str) -> tuple[Flag, ...]:
    """Flags instruction-like text inside untrusted data. The turn replaces a flagged tool result by an error
    result; KB chunks go through :func:`screen_kb_chunk`, which decides how much of a chunk to withhold.

    The patterns (on the folded and the undisguised text) first; the semantic detector only when they
    find nothing. Cached per text and detector: the same KB chunks come back turn after turn."""
    kinds, _ = _untrusted_kinds(text, semantic.current_detector())
    return _untrusted_flag(label, "instruction-like text in {source} data: ", kinds)


@dataclass(frozen=True)
class KbScreen:
    """What of a KB chunk may reach the model: ``text`` None means the whole chunk is quarantined."""

    title: str
    text: str | None
    flags: tuple[Flag, ...]


def screen_kb_chunk(doc_id: str, title: str, text: str) -> KbScreen:
    """Screens a KB chunk of document `doc_id` (its title and text) before the model sees it.

    A pattern hit (an override, a forged role marker, an encoded payload: wording that has no business in a
    help article) quarantines the whole chunk. A hit of the semantic detector alone withholds only the
    paragraphs it flags, each screened on its own, and keeps the rest of the chunk: the detector scores
    meaning, and a help center's own paragraphs about admins, data export or its assistant come near attack
    examples ("Exporting your data" near "export the customer database"), so quarantining the chunk hid
    correct articles from everyone who asked. A planted instruction is withheld with its paragraph. When no
    single paragraph explains the hit, or what is left still reads as an instruction, the whole chunk is
    quarantined. A flagged title alone is replaced by the document id."""
    label = f"kb:{doc_id}"
    detector = semantic.current_detector()
    kinds, semantic_only = _untrusted_kinds(f"{title}\n{text}", detector)
    if not kinds:
        return KbScreen(title, text, ())
    whole = _untrusted_flag(label, "instruction-like text in {source} data: ", kinds)
    if not semantic_only:
        return KbScreen(title, None, whole)
    paragraphs = [part for part in _PARAGRAPH_BREAK.split(text) if part.strip()]
    kept = [part for part in paragraphs if not _untrusted_kinds(part, detector)[0]]
    withheld = len(paragraphs) - len(kept)
    kept_title = doc_id if _untrusted_kinds(title, detector)[0] else title
    kept_text = "\n\n".join(kept)
    if (not withheld and kept_title == title) or not kept:
        return KbScreen(title, None, whole)
    if _untrusted_kinds(f"{kept_title}\n{kept_text}", detector)[0]:
        return KbScreen(title, None, whole)
    what = " and ".join(
        part
        for part in (
            f"{withheld} paragraph(s)" if withheld else "",
            "the title" if kept_title != title else "",
        )
        if part
    )
    return KbScreen(
        kept_title, kept_text, _untrusted_flag(label, f"withheld {what} of {{source}} data: ", kinds)
    )


# A blank line: where one paragraph ends and the next begins.
_PARAGRAPH_BREAK: Final[re.Pattern[str]] = re.compile(r"\n\s*\n")


def _untrusted_flag(label: str, prefix: str, kinds: list[str]) -> tuple[Flag, ...]:
    if not kinds:
        return ()
    source = re.sub(r"[^\w-]", "", label.split(":", 1)[0])[:20] or "untrusted"
    return (Flag("input", "prompt_injection", prefix.format(source=source) + ", ".join(kinds)),)


def _untrusted_kinds(text: str, detector: InjectionDetector | None) -> tuple[list[str], bool]:
    """What the patterns, else the semantic detector, find in untrusted text, and whether only the
    detector found it."""
    kinds = list(_pattern_kinds(text))
    if kinds or detector is None:
        return kinds, False
    detection = _semantic_detection(text, detector)
    return (["semantic: " + detection.describe()], True) if detection is not None else ([], False)


@functools.lru_cache(maxsize=4096)
def _pattern_kinds(text: str) -> tuple[str, ...]:
    folded = fold(text)
    strong, weak, prompt_request, role_play = injection_hits(folded)
    if not (strong or weak or prompt_request or role_play):
        strong, weak, prompt_request, role_play = injection_hits(undisguise(text))
    encoded = encoded_hits(strong_normalise(text), text, folded)
    kinds = strong + weak + (["system_prompt_request"] if prompt_request else [])
    kinds += (["role_marker"] if role_play else []) + [f"encoded:{name}" for name in encoded]
    return tuple(kinds)


@functools.lru_cache(maxsize=8192)
def _semantic_detection(text: str, detector: InjectionDetector) -> Detection | None:
    return detector.detect(text, untrusted=True)

"""Input and output guardrails for the agent: pure functions, no I/O, no model calls except the semantic
detector's sentence embeddings (offline, in-process, loaded on first use).

Input (`check_input`): instruction overrides, requests for the system prompt, role-play as the system
(including forged chat-template tokens), encoded payloads that decode to any of those, oversize messages,
invisible/control characters; the patterns see the shared normalisation (look-alikes, zero-width
characters, leetspeak, split words undone), and what they miss (paraphrases, other languages) goes to the
semantic detector. Untrusted data: the same over tool results (`scan_untrusted`), which the turn then
quarantines, and KB chunks (`screen_kb_chunk`: a pattern hit quarantines the chunk, a semantic hit withholds
the paragraphs it flags). Output (`check_output`): system-prompt leakage (a long verbatim span) and links
whose domain is not on the operator's allow-list (a link in a KB chunk is not trusted for being there).
`untrusted_block` wraps KB chunks and tool results as delimited, labelled untrusted data for the prompt.
What blocks and what only flags is documented in docs/policy.md.

These are heuristics: they stop the common attacks and make every trip visible. They are one layer;
the others are the untrusted-data delimiting, tools that enforce ownership server-side, and the output checks.

This package is the one entry point; its modules, one job each:
`normalise` (what the patterns see, from the shared service_kit.text_normalise), `patterns` (the injection
patterns), `encoded` (payloads that decode to an injection), `semantic` (which meaning-based detector,
agent_service.injection_detector, backs the patterns up), `input_check`, `untrusted` (the prompt's data
blocks), `links`, `output_check`.
"""

from agent_service.guardrails.input_check import (
    DEFAULT_MAX_INPUT_CHARS,
    InputVerdict,
    KbScreen,
    check_input,
    scan_untrusted,
    screen_kb_chunk,
)
from agent_service.guardrails.links import DEFAULT_ALLOWED_DOMAINS, LINK_REMOVED, extract_links
from agent_service.guardrails.normalise import strip_control_characters
from agent_service.guardrails.output_check import LEAK_MIN_WORDS, OutputVerdict, check_output
from agent_service.guardrails.semantic import use_injection_detector, warm_up
from agent_service.guardrails.untrusted import UNTRUSTED_DATA_INSTRUCTIONS, untrusted_block
from agent_service.texts import (
    SAFE_REPLY_INJECTION,
    SAFE_REPLY_LEAK,
    SAFE_REPLY_OVERSIZE,
    SAFE_REPLY_SYSTEM_PROMPT,
)

__all__ = [
    "DEFAULT_ALLOWED_DOMAINS",
    "DEFAULT_MAX_INPUT_CHARS",
    "LEAK_MIN_WORDS",
    "LINK_REMOVED",
    "SAFE_REPLY_INJECTION",
    "SAFE_REPLY_LEAK",
    "SAFE_REPLY_OVERSIZE",
    "SAFE_REPLY_SYSTEM_PROMPT",
    "UNTRUSTED_DATA_INSTRUCTIONS",
    "InputVerdict",
    "KbScreen",
    "OutputVerdict",
    "check_input",
    "check_output",
    "extract_links",
    "scan_untrusted",
    "screen_kb_chunk",
    "strip_control_characters",
    "untrusted_block",
    "use_injection_detector",
    "warm_up",
]

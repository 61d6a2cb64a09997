"""The injection patterns, matched on folded text (see `normalise.fold`): instruction overrides (strong and
weak signals), requests for the system prompt and role play as the system."""

from __future__ import annotations

import re
from typing import Final

from agent_service.guardrails.normalise import SPACED_LETTERS

_SQUASHED_INJECTION: Final[re.Pattern[str]] = re.compile(
    r"(?:ignore|disregard|forget|override|bypass)(?:all|any|every|your|the|my|of)*"
    r"(?:previous|prior|above|earlier|system|developer|original)+(?:instructions?|prompts?|rules|directives?)"
    r"|(?:reveal|show|print|repeat|tell)(?:me)?(?:your|the)(?:system|hidden|secret|initial)prompt"
)

_VERB_OVERRIDE = r"(?:ignore|disregard|forget|override|bypass|skip|drop|abandon|discard|neglect|overrule)"
_MOD = r"(?:the|of|these|those|my|me|other|given|following|current|old|earlier|and|to|you)"
_QUAL = (
    r"(?:all|any|every|your|previous|previously|prior|above|earlier|preceding|former|initial|original|"
    r"existing|system|developer|safety|default|built-in)"
)
_OBJ = (
    r"(?:instructions?|prompts?|rules|directives?|guidelines|guardrails|programming|restrictions|"
    r"constraints|policies|commands|orders|context|training|settings|filters?)"
)
_REVEAL_VERB = (
    r"(?:show|reveal|print|repeat|display|output|leak|share|dump|give|tell|send|paste|copy|recite|expose|"
    r"read|list|write|what's|whats|what\s+is|what\s+are|what\s+were|what\s+was)"
)
_PRIVILEGED = r"(?:system|admin|administrator|developer|root|superuser|operator)"
_UNBOUND = r"(?:unrestricted|unfiltered|jailbroken|uncensored|unlimited|evil|dan)"

STRONG_INJECTION: Final[tuple[tuple[str, re.Pattern[str]], ...]] = tuple(
    (name, re.compile(pattern))
    for name, pattern in (
        ("override", rf"\b{_VERB_OVERRIDE}(?:\s+{_MOD})*\s+{_QUAL}(?:\s+(?:{_MOD}|{_QUAL}))*\s+{_OBJ}\b"),
        ("override", r"\b(?:do\s+not|don't|no\s+longer|stop)\s+(?:follow|obey|adhere\s+to|following|obeying)\s+(?:your|the|any|these|those)\s+(?:\w+\s+)?(?:instructions|rules|guidelines|directives|programming)\b"),
        ("new_instructions", r"\b(?:new|updated|real|actual|revised|true)\s+(?:system\s+)?(?:instructions|prompt|directives|rules)\s*:"),
        ("jailbreak", r"\b(?:jailbreak\w*|do\s+anything\s+now|dan\s+mode|unfiltered\s+mode|no[\s-]restrictions?\s+mode)\b"),
        ("unbounded", r"\b(?:act|respond|answer|behave|operate|reply)\b[^.\n]{0,30}\bwithout\s+(?:any\s+)?(?:restrictions|filters|rules|guidelines|limitations|censorship|safety)\b"),
        ("unbounded", r"\bpretend\s+(?:that\s+)?(?:you\s+have|there\s+are)\s+no\s+(?:rules|restrictions|guidelines|filters|limits)\b"),
        ("decode_and_follow", r"\bdecode\b[^.\n]{0,20}\b(?:and|then)\s+(?:follow|execute|obey|run|do|apply)\b"),
        ("secret_exfiltration", r"\b(?:send|post|email|forward|leak|give|tell|print|reveal)\s+(?:me\s+|us\s+)?(?:your|the)\s+(?:api[\s_-]?keys?|secret[\s_-]?keys?|credentials|access[\s_-]?tokens?|environment\s+variables|env\s+vars)\b"),
    )
)  # fmt: skip

_WEAK_INJECTION: Final[tuple[tuple[str, re.Pattern[str]], ...]] = tuple(
    (name, re.compile(pattern))
    for name, pattern in (
        ("ignore_above", rf"\b{_VERB_OVERRIDE}\s+(?:all\s+|everything\s+)?(?:of\s+)?(?:the\s+|that\s+|this\s+)?(?:above|everything\s+above|what\s+came\s+before)\b(?!\s+(?:message|question|order|email|one|address|number))"),
        ("from_now_on", r"\bfrom\s+now\s+on\b[^.\n]{0,40}\b(?:you\s+(?:are|will|must|shall)|always|only|respond|reply|answer|end|start|say)\b"),
        ("forced_output", r"\b(?:reply|respond|answer|output|say|print|write)\s+(?:only\s+)?(?:with\s+|exactly\s+)[^\n]{0,80}?\b(?:and\s+nothing\s+else|nothing\s+else|verbatim|exactly)\b"),
        ("forced_output", r"\b(?:respond|reply|answer)\s+only\s+with\b"),
        ("forced_output", r"\b(?:output|print|say|reply\s+with|respond\s+with)\s+(?:the\s+)?(?:code\s+|word\s+|string\s+|token\s+)?[a-z0-9]+(?:-[a-z0-9]+){2,}\b"),
        ("forced_output", r"\b(?:end|start|begin)\s+(?:every|each|all|your)\s+(?:response|reply|answer|message)s?\s+with\b"),
        ("forced_output", r"\b(?:confirm|acknowledge|prove)\b[^.\n]{0,30}\bby\s+(?:outputting|printing|replying\s+with|saying|responding\s+with)\b"),
        ("forced_output", r"\b(?:expected|required|correct)\s+(?:assistant|model|ai|bot|agent)\s+(?:output|response|reply|answer)\b"),
        ("forced_output", r"\bproduce\s+(?:the\s+|this\s+)?(?:expected|required)\s+(?:output|response|reply|answer)\b"),
        ("sequencing", r"\bbefore\s+(?:replying|you\s+reply|answering|you\s+answer|responding|you\s+respond)\b"),
        ("new_task", r"\b(?:new\s+(?:task|objective|instructions?)\b|(?:prior|previous|original|current)\s+task\s+(?:is|has\s+been)\s+(?:cancelled|canceled|void|over|replaced))"),
        ("authority_claim", r"\b(?:note|message|instructions?)\s+from\s+(?:the\s+|your\s+)?(?:developers?|admin|administrator|openai|anthropic|creators?)\b"),
        ("role_marker_line", r"(?m)^\W{0,4}(?:system|assistant|developer|sys)\s*(?:\]|\)|>)?\s*:"),
        ("authority_claim", r"\bauthori[sz]ed\s+(?:diagnostic|test|override|request|penetration\s+test|red\s+team)\b"),
        ("tool_directive", r"\b(?:call|invoke|run|execute|use)\s+(?:the\s+)?(?:tool\s+|function\s+)?[a-z]+_[a-z_]+\b"),
        ("already_approved", r"\b(?:user|customer|admin)\s+has\s+already\s+(?:approved|authori[sz]ed|confirmed)\b"),
    )
)  # fmt: skip

_SYSTEM_PROMPT_REQUEST: Final[tuple[re.Pattern[str], ...]] = tuple(
    re.compile(pattern)
    for pattern in (
        rf"\b{_REVEAL_VERB}\b(?:\s+\S+){{0,5}}?\s+(?:your|the|ur|its)\s+(?:\w+\s+)?(?:system|hidden|secret|developer|internal|initial|original|full|exact|complete|entire|meta|pre)?[\s-]?(?:system\s+)?prompt\b"
        r"(?=\s*$|\s*[^\w\s]|\s+(?:verbatim|text|word|exactly|in|please|again|that|which|and|so|is|was|were|to|above|here|now|you\s+were)\b)",
        rf"\b{_REVEAL_VERB}\b(?:\s+\S+){{0,5}}?\s+(?:the\s+|your\s+)?(?:system|hidden|secret|developer|internal)[\s-](?:prompt|instructions|directives|rules|configuration|guidelines)\b",
        rf"\b{_REVEAL_VERB}\b(?:\s+\S+){{0,5}}?\s+your\s+(?:\w+\s+)?(?:instructions|directives|programming|configuration)\b(?!\s+(?:for|on|about|regarding|to|when|if|with))",
        r"\b(?:repeat|print|output|recite|copy|echo|write\s+out|show|type)\s+(?:me\s+)?(?:all\s+|everything\s+|the\s+)?(?:text|words|content|messages?|lines|everything)?\s*(?:above|before\s+this|prior\s+to\s+this|that\s+came\s+before)\b(?!\s*\$?\d)",
        r"\bwhat\s+(?:were|are|was)\s+you\s+(?:told|instructed|programmed|prompted|given)\b",
        r"\b(?:your|the)\s+(?:system\s+)?(?:instructions|prompt)\s+(?:verbatim|word\s+for\s+word|in\s+full|exactly\s+as\s+written)\b",
        r"\bhow\s+(?:were|are)\s+you\s+(?:programmed|prompted|instructed|configured)\b",
    )
)  # fmt: skip

_ROLE_PLAY_SYSTEM: Final[tuple[re.Pattern[str], ...]] = tuple(
    re.compile(pattern)
    for pattern in (
        rf"\byou\s+are\s+now\b(?:\s+\w+){{0,3}}?\s+(?:the\s+|an?\s+|in\s+)?(?:{_PRIVILEGED}|{_UNBOUND}|(?:developer|admin|debug|god|sudo)\s+mode)\b",
        rf"\b(?:act|behave|respond|roleplay|role-play|role\s+play)\s+as\s+(?:if\s+you\s+(?:are|were)\s+)?(?:the\s+|an?\s+)?(?:{_PRIVILEGED}|{_UNBOUND})\b",
        rf"\bpretend\s+(?:to\s+be|you\s+are|you're|that\s+you\s+are)\s+(?:the\s+|an?\s+)?(?:{_PRIVILEGED}|{_UNBOUND}|different\s+(?:ai|assistant|model|bot))\b",
        r"\b(?:enter|enable|activate|switch\s+to|turn\s+on|unlock)\s+(?:the\s+)?(?:developer|admin|debug|god|maintenance|sudo|jailbreak|dan)\s+mode\b",
        r"\b(?:developer|admin|debug|god|sudo|dan)\s+mode\s+(?:is\s+)?(?:enabled|activated|on|unlocked)\b",
        r"\b(?:i\s+am|i'm|this\s+is)\s+your\s+(?:developer|admin|administrator|creator|system\s+administrator|programmer|operator|owner|maker)\b",
        r"\bthis\s+is\s+(?:the\s+)?system\s+(?:speaking|message|override|administrator)\b",
        # "system: you must ...", but not "System: iOS 17" (a bare role line is only a weak signal)
        r"(?m)^\W{0,4}(?:system|assistant|developer|sys)\s*(?:\]|\)|>)?\s*:\s*(?:you\b|ignore|disregard|forget|respond|reply|answer|output|print|say|always|never|do\s+not|don't|from\s+now|new\s+|the\s+(?:prior|previous)|act\b|pretend|reveal|override)",
        r"\[(?:system|sys|admin|developer|assistant)\]",
        r"<\|\s*(?:im_start|im_end|system|user|assistant|endoftext|eot_id|start_header_id|end_header_id)\s*\|>",
        r"\[/?inst\]|<</?sys>>",
        r"</?\s*(?:system|assistant|developer|untrusted[\s_-]*data|untrusted|instructions?)\s*>",
    )
)  # fmt: skip


def injection_hits(folded: str) -> tuple[list[str], list[str], bool, bool]:
    """(strong kinds, weak kinds, system-prompt request?, role play?) for one folded text."""
    strong = [name for name, pattern in STRONG_INJECTION if pattern.search(folded)]
    weak = sorted({name for name, pattern in _WEAK_INJECTION if pattern.search(folded)})
    prompt_request = any(pattern.search(folded) for pattern in _SYSTEM_PROMPT_REQUEST)
    role_play = any(pattern.search(folded) for pattern in _ROLE_PLAY_SYSTEM)
    return strong, weak, prompt_request, role_play


def suspicious(folded: str) -> bool:
    strong, weak, prompt_request, role_play = injection_hits(folded)
    return bool(strong or weak or prompt_request or role_play)


def squash_hits(text: str) -> bool:
    """Spelled-out letters ('i g n o r e  a l l ...'): look for the key phrases with all spacing removed."""
    if not SPACED_LETTERS.search(text):
        return False
    return _SQUASHED_INJECTION.search(re.sub(r"[\W_\d]+", "", text)) is not None

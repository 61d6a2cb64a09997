"""Screening of streamed text deltas, so StreamChat never shows what the output check would remove.

The model's text is released to the caller at the end of a sentence or a line, or, once `WORD_RELEASE_CHARS`
are held, at the end of the last whole word, and only once the output check (`check_output`: internal markup,
system-prompt leaks, links off the allow-list) leaves everything released so far unchanged. Whole words are
enough for every construct the check looks at: a link or a tool name has no whitespace in it, and a leak needs
`LEAK_MIN_WORDS` words of the prompt in a row, so a released prefix can hold fewer than that. Releasing by word
rather than by sentence keeps the first delta within a few tokens of the model's first token (a first sentence
can take 20 tokens); the threshold keeps the number of checks per reply proportional to its length over 24. Text that opens a construct the check may remove as a whole (`<...>`, `{...}`, a code fence)
is held until it closes. The first time the check would change the text, streaming stops for the rest of the
turn: nothing more is released and the screened reply reaches the caller in `final.reply`, which is
authoritative.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# A point after which released text cannot change a later check of the same prefix: the end of a line or of a
# sentence followed by a space.
_CUT = re.compile(r"\n|[.!?](?=\s)")
_OPENERS = {"<": ">", "{": "}", "[": "]"}
WORD_RELEASE_CHARS = 24


def _balanced(text: str) -> bool:
    """False while a `<`, `{`, `[` or a ``` fence in `text` is still open."""
    if text.count("```") % 2:
        return False
    depth = dict.fromkeys(_OPENERS, 0)
    closers = {closer: opener for opener, closer in _OPENERS.items()}
    for char in text:
        if char in _OPENERS:
            depth[char] += 1
        elif char in closers and depth[closers[char]] > 0:
            depth[closers[char]] -= 1
    return not any(depth.values())


def _last_space(text: str) -> int:
    """Index of the last whitespace character in `text` (0 when there is none)."""
    return max(text.rfind(" "), text.rfind("\n"), text.rfind("\t"), 0)


class DeltaScreen:
    """`feed` each delta and send what it returns; `flush` at the end of a model call. `screened(text)` is the
    output check: the text as the customer may see it."""

    def __init__(self, screened: Callable[[str], str]) -> None:
        self._screened = screened
        self._released = ""
        self._pending = ""
        self.stopped = False

    def feed(self, delta: str) -> str:
        if self.stopped:
            return ""
        self._pending += delta
        cuts = [match.end() for match in _CUT.finditer(self._pending)]
        if len(self._pending) >= WORD_RELEASE_CHARS:
            cuts.append(len(self._pending[: _last_space(self._pending)].rstrip()))
        for cut in sorted(set(cuts), reverse=True):
            if cut and _balanced(self._released + self._pending[:cut]):
                return self._release(cut)
        return ""

    def flush(self) -> str:
        """Releases what is held if the whole text passes the check (a model call ended)."""
        if self.stopped or not self._pending:
            return ""
        return self._release(len(self._pending))

    def _release(self, cut: int) -> str:
        if cut == 0:
            return ""
        candidate = self._pending[:cut]
        text = self._released + candidate
        if self._screened(text) != text:
            self.stopped = True
            self._pending = ""
            return ""
        self._released = text
        self._pending = self._pending[cut:]
        return candidate

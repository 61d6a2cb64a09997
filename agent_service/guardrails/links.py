"""Links in a reply: finding them (any scheme, protocol-relative, bare domains) and removing every one whose
host is not on the operator's allow-list. A link inside a retrieved KB chunk is not trusted for being
there (anyone who could change an article could plant a phishing link); it only makes the flag say that
the operator may want to allow-list its domain."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import urlsplit

from agent_service.guardrails.normalise import strip_control_characters

DEFAULT_ALLOWED_DOMAINS: Final[tuple[str, ...]] = ("example.com",)
LINK_REMOVED: Final[str] = "[link removed]"

_TLDS: Final[tuple[str, ...]] = (
    "com", "net", "org", "edu", "gov", "mil", "int", "io", "co", "ai", "app", "dev", "info", "biz", "me",
    "us", "uk", "ca", "au", "de", "fr", "es", "it", "nl", "se", "no", "dk", "fi", "pl", "ru", "cn", "jp",
    "kr", "in", "br", "mx", "ch", "at", "be", "ie", "nz", "za", "eu", "tv", "cc", "xyz", "online", "site",
    "store", "shop", "tech", "cloud", "link", "page", "example", "test", "invalid", "ly", "gl", "gg", "tk",
    "ml", "ga", "cf", "top", "club", "live", "email", "ws", "su", "cx",
)  # fmt: skip
_URL_CHARS = r"[^\s<>\"'`\[\](){}|\\^]"
_LINK: Final[re.Pattern[str]] = re.compile(
    rf"\b[a-z][a-z0-9+.-]{{1,15}}://{_URL_CHARS}+"
    rf"|(?<![\w/:])//(?=[^\W_]){_URL_CHARS}+"
    rf"|\b(?:javascript|vbscript):{_URL_CHARS}+"
    rf"|\bdata:[a-z]+/[a-z0-9.+-]+[;,]{_URL_CHARS}*"
    rf"|(?<![\w@.\-/:])(?:[^\W_](?:[\w-]{{0,61}}[^\W_])?\.)+"
    rf"(?:{'|'.join(sorted(_TLDS, key=len, reverse=True))})(?![\w-]|\.[^\W_])(?::\d{{2,5}})?(?:/{_URL_CHARS}*)?"
    rf"|(?<![\w.])(?:\d{{1,3}}\.){{3}}\d{{1,3}}(?::\d{{2,5}}|/){_URL_CHARS}*",
    re.IGNORECASE,
)
_TRAILING: Final[str] = ".,;:!?'\")]}>*_~"
_MARKDOWN_LINK: Final[re.Pattern[str]] = re.compile(
    r"\[([^\]\n]{0,200})\]\(\s*<?([^()\s<>]+)>?(?:\s+\"[^\"\n]*\")?\s*\)"
)
_HTML_LINK: Final[re.Pattern[str]] = re.compile(
    r"<a\b[^>]*\bhref\s*=\s*[\"']?([^\"'\s>]+)[\"']?[^>]*>(.*?)</a\s*>", re.IGNORECASE | re.DOTALL
)


def _clean_link(link: str) -> str:
    return link.rstrip(_TRAILING)


def extract_links(text: str) -> set[str]:
    """URLs (any scheme, protocol-relative, javascript:/data:) and bare domains like account.example.com/returns."""
    return set(_links_of(text))


@functools.lru_cache(maxsize=4096)
def _links_of(text: str) -> frozenset[str]:
    # Cached: the same KB chunks come back turn after turn.
    links = set()
    for match in _LINK.finditer(strip_control_characters(text)):
        link = _clean_link(match.group(0))
        if link:
            links.add(link)
    return frozenset(links)


def _split_link(link: str) -> tuple[str, str, str] | None:
    """(scheme, host, path?query), host lowercased without 'www.' ("" for javascript: and the like)."""
    candidate = link.replace("\\", "/")
    if candidate.startswith("//"):
        candidate = "http:" + candidate
    elif not re.match(r"[a-z][a-z0-9+.-]*:", candidate, re.IGNORECASE) or re.match(r"[^:/]+:\d", candidate):
        candidate = "http://" + candidate
    try:
        parts = urlsplit(candidate)
        host = (parts.hostname or "").rstrip(".")
        host = host if host.isascii() else host.encode("idna").decode("ascii")
    except (ValueError, UnicodeError):
        return None
    host = host.lower().removeprefix("www.")
    rest = parts.path.rstrip("/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme.lower(), host, rest


def _link_key(link: str) -> str | None:
    split = _split_link(_clean_link(link))
    return None if split is None or not split[1] else split[1] + split[2]


def _domain_allowed(host: str, allowed: Iterable[str]) -> bool:
    return any(host == domain or host.endswith("." + domain) for domain in allowed)


class _LinkPolicy:
    def __init__(self, known_links: Iterable[str], allowed_domains: Iterable[str]) -> None:
        # Links seen in the retrieved KB text: never allowed for that, only named in the flag.
        self.known: set[str] = set()
        for entry in known_links:
            for link in extract_links(entry) if any(char.isspace() for char in entry.strip()) else {entry}:
                key = _link_key(link)
                if key:
                    self.known.add(key)
        self.allowed = tuple(
            domain.strip().lower().removeprefix("*.").strip(".")
            for domain in allowed_domains
            if domain.strip().strip("*.")
        )
        self.removed_hosts: list[str] = []

    def allows(self, link: str) -> bool:
        split = _split_link(_clean_link(link))
        if split is None:
            self.removed_hosts.append("an unparseable address")
            return False
        scheme, host, rest = split
        if scheme in {"http", "https"} and host:
            if _domain_allowed(host, self.allowed):
                return True
            in_kb = " (in the knowledge base, not on the allow-list)" if host + rest in self.known else ""
            self.removed_hosts.append(host + in_kb)
        else:
            self.removed_hosts.append(f"a {scheme}: address")
        return False


def _sanitise_links(reply: str, policy: _LinkPolicy) -> str:
    def markdown(match: re.Match[str]) -> str:
        return match.group(0) if policy.allows(match.group(2)) else f"{match.group(1)} {LINK_REMOVED}".strip()

    def html(match: re.Match[str]) -> str:
        return match.group(0) if policy.allows(match.group(1)) else f"{match.group(2)} {LINK_REMOVED}".strip()

    def bare(match: re.Match[str]) -> str:
        link = _clean_link(match.group(0))
        if not link or policy.allows(link):
            return match.group(0)
        return LINK_REMOVED + match.group(0)[len(link) :]

    reply = _MARKDOWN_LINK.sub(markdown, reply)
    reply = _HTML_LINK.sub(html, reply)
    return _LINK.sub(bare, reply)


def remove_unknown_links(
    reply: str, known_links: Iterable[str], allowed_domains: Iterable[str]
) -> tuple[str, list[str]]:
    """(the reply with links off the allow-list replaced by LINK_REMOVED, the hosts removed in order,
    repeats kept). ``known_links`` (links, or KB chunks to extract them from) allow nothing; a removed
    link found among them is reported as such."""
    policy = _LinkPolicy(known_links, allowed_domains)
    return _sanitise_links(reply, policy), policy.removed_hosts

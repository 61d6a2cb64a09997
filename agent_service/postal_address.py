"""A postal address written in a chat message, as the change_delivery_address tool takes it.

The customer writes it on one line, comma-separated, the country last: "12 Rue de Rivoli, 75001 Paris, FR",
"221B Baker Street, London NW1 6XE, GB", "Hauptstraße 5, Apt 3, 10115 Berlin, Germany". The first part is
the street line (it must hold a house number), parts between it and the locality are the second line, the
locality part holds the postal code and the city (in either order; a locality part with only a postal code
takes the city from the part before), and the country is an ISO 3166-1 alpha-2 code or a common name.
What does not read that way is not an address: the caller asks for it in that format (`ADDRESS_FORMAT`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

ADDRESS_FORMAT: Final[str] = "street and number, postal code and city, two-letter country code"
ADDRESS_EXAMPLE: Final[str] = "12 Rue de Rivoli, 75001 Paris, FR"

MAX_PART_CHARS: Final[int] = 100
_COUNTRY_NAMES: Final[dict[str, str]] = {
    "france": "FR",
    "frankreich": "FR",
    "francia": "FR",
    "franca": "FR",
    "united kingdom": "GB",
    "uk": "GB",
    "great britain": "GB",
    "england": "GB",
    "scotland": "GB",
    "wales": "GB",
    "germany": "DE",
    "deutschland": "DE",
    "allemagne": "DE",
    "alemania": "DE",
    "alemanha": "DE",
    "spain": "ES",
    "espana": "ES",
    "espagne": "ES",
    "spanien": "ES",
    "espanha": "ES",
    "portugal": "PT",
    "italy": "IT",
    "italia": "IT",
    "italie": "IT",
    "ireland": "IE",
    "netherlands": "NL",
    "belgium": "BE",
    "belgique": "BE",
    "switzerland": "CH",
    "schweiz": "CH",
    "suisse": "CH",
    "austria": "AT",
    "osterreich": "AT",
    "usa": "US",
    "united states": "US",
    "united states of america": "US",
    "canada": "CA",
    "brazil": "BR",
    "brasil": "BR",
    "mexico": "MX",
}
# Postal codes: British and Canadian shapes, then digits (optionally with a ZIP+4 or Portuguese suffix or a
# Dutch letter pair), "SE-123 45"-style prefixes aside.
_POSTAL_CODES: Final[tuple[re.Pattern[str], ...]] = tuple(
    re.compile(pattern, re.IGNORECASE)
    for pattern in (
        r"\b[A-Z]{1,2}\d[A-Z\d]?\s?\d[A-Z]{2}\b",
        r"\b[A-Z]\d[A-Z]\s?\d[A-Z]\d\b",
        r"\b\d{4}\s?[A-Z]{2}\b",
        r"\b\d{3}\s\d{2}\b",
        r"\b\d{4,6}(?:-\d{3,4})?\b",
    )
)
_US_STATE: Final[re.Pattern[str]] = re.compile(r"^[A-Z]{2}$")
# What may follow the country on its line: politeness, not address.
_TRAILER: Final[re.Pattern[str]] = re.compile(
    r"^(?:(?:instead|please|thanks|thank you|thx|por favor|gracias|en su lugar|merci|s'il vous plait|svp"
    r"|a la place|bitte|danke|stattdessen|obrigad[oa]|em vez disso)\s*)*$",
    re.IGNORECASE,
)
# Where an address starts: after one of these words (or a colon) in the message.
_LEAD_IN: Final[re.Pattern[str]] = re.compile(
    r"(?:\b(?:to|a|à|para|an|auf|nach|pour|chez|is|es|est|ist|é)\b|:)\s*", re.IGNORECASE
)

_SENTENCE_END: Final[re.Pattern[str]] = re.compile(r"[.!?](?=\s|$)")


@dataclass(frozen=True)
class PostalAddress:
    line1: str
    city: str
    postal_code: str
    country: str
    line2: str = ""

    def as_arguments(self) -> dict[str, str]:
        """The `address` argument of change_delivery_address (line2 only when there is one)."""
        value = {
            "line1": self.line1,
            "city": self.city,
            "postal_code": self.postal_code,
            "country": self.country,
        }
        if self.line2:
            value["line2"] = self.line2
        return value


def find_address(message: str, exclude: str = "") -> PostalAddress | None:
    """The address in a message, which may say more before it ("... ORD-67890 to 12 Rue de Rivoli, 75001 Paris,
    FR"). Tried from the whole message, then after each lead-in word, latest first, so the address starts as
    late as possible; a candidate holding `exclude` (the order id) is not an address."""
    for candidate in _candidates(message):
        if exclude and exclude.casefold() in candidate.casefold():
            continue
        address = parse_address(candidate)
        if address is not None:
            return address
    return None


def _candidates(message: str) -> Iterator[str]:
    """The message from each lead-in on (latest first, then the whole message), each also cut at the end of
    every sentence in it ("... 75001 Paris, FR. I moved last week.")."""
    ends = [match.start() for match in _SENTENCE_END.finditer(message)]
    for start in [*reversed([match.end() for match in _LEAD_IN.finditer(message)]), 0]:
        yield message[start:]
        for end in ends:
            if end > start:
                yield message[start:end]


def parse_address(text: str) -> PostalAddress | None:
    """`text` read as one address (see the module docstring), or None."""
    text = " ".join(text.split()).strip(" .!?;")
    parts = [part.strip() for part in text.split(",")]
    while len(parts) > 1 and parts[-1] and _TRAILER.fullmatch(parts[-1].strip(" .!?")):
        parts.pop()  # "..., Madrid, España, gracias"
    if len(parts) < 3 or any(not part or len(part) > MAX_PART_CHARS for part in parts):
        return None
    country = _country(parts[-1])
    if country is None:
        return None
    body = parts[:-1]
    line1 = body[0]
    if not re.search(r"\d", line1) or not re.search(r"[^\W\d_]", line1):
        return None
    locality = _locality(body[1:])
    if locality is None:
        return None
    city, postal_code, used = locality
    line2 = ", ".join(body[1 : len(body) - used])
    return PostalAddress(line1=line1, city=city, postal_code=postal_code, country=country, line2=line2)


def _country(part: str) -> str | None:
    words = part.strip(" .!?").split()
    for size in range(min(4, len(words)), 0, -1):
        head, rest = " ".join(words[:size]), " ".join(words[size:])
        if not _TRAILER.fullmatch(rest.strip(" .!?")):
            continue
        if size == 1 and re.fullmatch(r"[A-Za-z]{2}", head):
            return "GB" if head.upper() == "UK" else head.upper()
        code = _COUNTRY_NAMES.get(_plain(head))
        if code is not None:
            return code
    return None


def _plain(text: str) -> str:
    decomposed = unicodedata.normalize("NFD", text.casefold())
    return " ".join("".join(char for char in decomposed if not unicodedata.combining(char)).split())


def _locality(parts: list[str]) -> tuple[str, str, int] | None:
    """(city, postal code, how many trailing parts they took) from the parts between line 1 and the country."""
    if not parts:
        return None
    last = parts[-1]
    for pattern in _POSTAL_CODES:
        match = pattern.search(last)
        if match is None:
            continue
        postal_code = last[match.start() : match.end()].upper()
        city = " ".join((last[: match.start()] + " " + last[match.end() :]).split()).strip(" -")
        if city and not _US_STATE.fullmatch(city):
            return city, postal_code, 1
        if len(parts) >= 2 and re.search(r"[^\W\d_]", parts[-2]) and not re.search(r"\d", parts[-2]):
            return parts[-2], postal_code, 2
        return None
    return None

"""What a customer message asks to change: cancel an order, return it, or change its delivery address.

Deterministic and literal, for the offline engine (and for any caller that needs to know whether a message
refuses a write: "don't cancel it"). English plus the common Spanish, French, German and Portuguese forms,
matched on the guardrails' folded text (accents, case, look-alikes and curly quotes undone).

Each mention of an action (a verb such as "cancel", "devolver", "stornieren"; a noun such as "refund",
"reembolso") is read in its clause (split at punctuation and at "but", "pero", "mais", "aber", "mas"):

* *refused* when a negation cue ("don't", "no need to", "no", "ne ... pas", "nicht", "não") stands in the few
  words before it, or "nicht"/"pas" in the few words after it ("I don't know how to cancel" is no refusal);
* *asked for* when a request cue precedes it in the clause ("I want to", "can you", "please", "quiero",
  "je voudrais", "ich möchte", "gostaria") or a verb opens the clause ("Cancel ORD-67890");
* refused, too, when a later clause takes it back ("Cancel it. Actually, never mind", "... no, don't.");
* otherwise a mention only: a question about the process ("how do I return an item?", "what is the
  cancellation policy?"), a description ("it was cancelled", "where is my refund"), or a noun used as a
  modifier ("return window").

A message that refuses one action and asks for another ("don't cancel it, I want to return it") asks for the
other; `negates` is true only when every mention of the action is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Final

from agent_service.guardrails.normalise import fold

CANCEL_TOOL: Final[str] = "cancel_order"
RETURN_TOOL: Final[str] = "start_return"
ADDRESS_TOOL: Final[str] = "change_delivery_address"
WRITE_TOOLS: Final[tuple[str, ...]] = (CANCEL_TOOL, RETURN_TOOL, ADDRESS_TOOL)

# Verb forms (folded text: no accents, lower case) that may open a clause as a request ("Cancel ORD-67890").
_CANCEL_VERB: Final[re.Pattern[str]] = re.compile(
    r"\b(?:cancel|canceling|cancelling|cancelar|cancelarlo|cancelarla|cancela|cancelalo|cancelala|cancele|canceles|cancelelo|cancelen|cancelem"
    r"|anular|anularlo|anularla|anula|anulalo|anulala|anule|anules|annuler|annulez|annule|stornieren|storniere|storniert?"
    r"|abbestellen|call\s+off)\b"
)
# Nouns and past participles: they ask for the action only after a request cue ("I want a cancellation",
# "I want it cancelled"), never by opening a clause ("cancellation policy?", "cancelled yesterday").
_CANCEL_OTHER: Final[re.Pattern[str]] = re.compile(
    r"\b(?:cancellation|cancelation|cancelled|canceled|cancelacion|cancelado|cancelada|cancelamento"
    r"|annulation|annulee?s?|stornierung|storniert|storno)\b"
)
_RETURN_VERB: Final[re.Pattern[str]] = re.compile(
    r"\b(?:return|returning|send\s+(?:it|them|this|that|\w+\s+\w+)\s+back|send\s+back|ship\s+(?:it|them)\s+back"
    r"|refund|devolver(?:lo|la|los|las)?|devuelvo|devuelva|devuelvan|devuelvelo|devuelvela|devuelvas|devolva|devolvam|reembolsar"
    r"|retourner|retournez|renvoyer|renvoyez|rembourser|remboursez"
    r"|zuruckschicken|zurucksenden|zuruckgeben|retournieren|erstatten|ruckerstatten)\b"
)
_RETURN_OTHER: Final[re.Pattern[str]] = re.compile(
    r"\b(?:returned|refunded|devolucion|devolucao|reembolso|retour|remboursement"
    r"|rucksendung|retoure|ruckgabe|erstattung|ruckerstattung)\b"
)
_ADDRESS_NOUN: Final[re.Pattern[str]] = re.compile(
    r"\b(?:\w*address\w*|\w*adress\w*|direccion|endereco|anschrift)\b"
)
_ADDRESS_VERB: Final[re.Pattern[str]] = re.compile(
    r"\b(?:change|changing|update|updating|modify|correct|edit|switch"
    r"|cambiar|cambia|cambie|cambien|modificar|modifica|modifique|actualizar|actualiza|actualice|corregir|corrija"
    r"|changer|changez|modifier|modifiez|corriger|corrigez|mettre a jour"
    r"|andern|andere|aktualisieren|korrigieren"
    r"|mudar|mude|alterar|altere|atualizar|atualize|corrigir|corrija)\b"
)
# Adjectives that ask for a change by themselves, in a statement ("my address is wrong", "new address: ...").
_ADDRESS_ADJECTIVE: Final[re.Pattern[str]] = re.compile(
    r"\b(?:new|different|wrong|another|nueva|otra|distinta|incorrecta|nouvelle|autre|mauvaise"
    r"|neue|neuen|falsch|falsche|falschen|novo|nova|outro|outra|errado|errada)\b"
)
_ADJECTIVE_BEFORE_NOUN: Final[re.Pattern[str]] = re.compile(
    r"\s+(?:[a-z]+\s+)?(?:\w*address\w*|\w*adress\w*|direccion|endereco|anschrift)\b"
)
_NOUN_IS_ADJECTIVE: Final[re.Pattern[str]] = re.compile(
    r"\b(?:\w*address\w*|\w*adress\w*|direccion|endereco|anschrift)\s+(?:is|was|'s|es|est|ist|e|esta)\s+$"
)
# A noun right after the mention makes it a modifier: "return policy", "plazo de devolucion".
_MODIFIED_NOUN: Final[re.Pattern[str]] = re.compile(
    r"\s*(?:policy|policies|window|period|label|labels|fee|fees|rules|process|status|deadline|time|times"
    r"|form|politica|plazo|etiqueta|politique|delai|etiquette|frist|richtlinie|etikett|prazo)\b"
)

_CLAUSE_BREAK: Final[re.Pattern[str]] = re.compile(r"[.,;:!?\n]|\b(?:but|pero|mais|aber|mas|then)\b")
_ORDER_ID: Final[re.Pattern[str]] = re.compile(r"\bord[-_ ]?\d{3,10}\b")
_WORD: Final[re.Pattern[str]] = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|'")
NEGATION_WINDOW_WORDS: Final[int] = 4
_NEGATION_BEFORE: Final[re.Pattern[str]] = re.compile(
    r"\b(?:don't|dont|do not|doesn't|does not|didn't|did not|not|never|no need|no longer|won't|will not"
    r"|wouldn't|would not|rather not|without|instead of|rather than|no|nunca|jamas|sin|ne|n|pas|jamais"
    r"|sans|nicht|kein|keine|ohne|nao|sem)\b"
)
_NEGATION_AFTER: Final[re.Pattern[str]] = re.compile(r"\b(?:nicht|pas)\b")
# Cues that do not refuse the verb after them: "I don't know how to cancel", "not sure how to return".
_NOT_A_NEGATION: Final[re.Pattern[str]] = re.compile(
    r"\b(?:don't|dont|do not|didn't|did not) (?:know|understand|see|get)\b|\bnot sure\b|\bno idea\b"
    r"|\bno se\b|\bje ne sais pas\b|\bweiss nicht\b|\bnao sei\b"
)
_REQUEST_CUE: Final[re.Pattern[str]] = re.compile(
    r"\b(?:want|wanna|wanted|like|need|please|help me|let's|go ahead|request|requesting|i wish|kindly"
    r"|quiero|quisiera|necesito|por favor|gustaria|veux|voudrais|aimerais|souhaite|souhaiterais|merci de"
    r"|veuillez|svp|s'il vous plait|mochte|ich will|wurde gern|wurde gerne|bitte|quero|queria|preciso|gostaria)\b"
)
# A request put to the agent as a question: "can you cancel it?", "how soon could you cancel it?".
_ASKING_YOU: Final[re.Pattern[str]] = re.compile(
    r"\b(?:can you|could you|would you|will you|(?<!se )puede|puedes|podria|podrias|pouvez|pourriez|peux-tu"
    r"|konnen sie|konnten sie|kannst du|konntest du|pode|poderia)\b"
)
# A question about the process, not a request: "how do I return an item?", "can I cancel?".
_QUESTION_CUE: Final[re.Pattern[str]] = re.compile(
    r"\b(?:how|what|what's|when|where|why|which|whether|if|is it possible|can i|could i|may i|do i|should i"
    r"|am i able|como|cuando|donde|cual|por que|puedo|se puede|comment|quand|quel|quelle|quels|pourquoi"
    r"|puis-je|peut-on|est-ce que je|wie|wann|warum|welche|kann ich|darf ich|quando|onde|qual|posso"
    r"|know|wonder|wondering|saber|savoir|wissen)\b"
    r"|^(?:que|ou|was|wo|is|are|were|has|have|did|does|do)\b"
)
# Taking a request back later in the message: "Cancel it. Actually, never mind", "... no, don't."
_RETRACTION: Final[re.Pattern[str]] = re.compile(
    r"\b(?:never ?mind|forget (?:it|that|about it)|scratch that|on second thought|don't do (?:it|that)"
    r"|no lo hagas|olvidalo|olvidelo|da igual|laisse tomber|laissez tomber|oubliez|vergiss es|vergessen sie es"
    r"|lass es|deixa pra la|esquece|nao faca isso)\b"
    r"|(?:^|[.,;!?]\s*)(?:actually\s*,?\s*)?(?:no\s*,?\s*)?(?:don't|do not|no)\s*[.!]*\s*$"
)
_PAST_DESCRIBES: Final[re.Pattern[str]] = re.compile(r"\b(?:was|were|been|already|is|are|has|had)\b")
# Words that may come before an imperative verb without changing it: "hi, please cancel", "ORD-67890: cancel".
_OPENERS: Final[frozenset[str]] = frozenset(
    [
        "hi",
        "hello",
        "hey",
        "ok",
        "okay",
        "yes",
        "yeah",
        "also",
        "and",
        "so",
        "now",
        "just",
        "kindly",
        "hola",
        "bonjour",
        "salut",
        "hallo",
        "ola",
        "oi",
        "sim",
        "si",
        "oui",
        "ja",
    ]
)


class Reading(Enum):
    ASKED = "asked"
    REFUSED = "refused"
    MENTIONED = "mentioned"


@dataclass(frozen=True)
class WriteIntent:
    """The action a message asks for (`tool`), or refuses (`negated`: "don't cancel it")."""

    tool: str
    negated: bool = False


def detect(message: str) -> WriteIntent | None:
    """The write the message asks for: an address change, else a cancellation, else a return. A refused
    action is returned with `negated` when nothing is asked for; None when neither."""
    text = fold(message)
    refused: list[WriteIntent] = []
    for tool in (ADDRESS_TOOL, CANCEL_TOOL, RETURN_TOOL):
        readings = _readings(text, tool)
        if Reading.ASKED in readings:
            return WriteIntent(tool)
        if Reading.REFUSED in readings:
            refused.append(WriteIntent(tool, negated=True))
    return refused[0] if refused else None


def negates(message: str, tool: str) -> bool:
    """True when the message refuses that action ("don't cancel it", "je ne veux pas le retourner") and
    does not also ask for it in another clause."""
    readings = _readings(fold(message), tool)
    return Reading.REFUSED in readings and Reading.ASKED not in readings


def _readings(text: str, tool: str) -> set[Reading]:
    return {_read(text, start, end, opens) for start, end, opens in _mentions(text, tool)}


def _mentions(text: str, tool: str) -> list[tuple[int, int, bool]]:
    """(start, end, whether the form may open a clause as a request) of every mention of the action."""
    if tool == ADDRESS_TOOL:
        found = [
            (match.start(), match.end(), opens)
            for pattern, opens in ((_ADDRESS_VERB, True), (_ADDRESS_ADJECTIVE, False))
            for match in pattern.finditer(text)
        ]
        return [
            (start, end, opens)
            for start, end, opens in found
            if _ADDRESS_NOUN.search(text, *_clause_bounds(text, start, end))
        ]
    verb, other = (_CANCEL_VERB, _CANCEL_OTHER) if tool == CANCEL_TOOL else (_RETURN_VERB, _RETURN_OTHER)
    mentions = [(match.start(), match.end(), True) for match in verb.finditer(text)]
    mentions += [(match.start(), match.end(), False) for match in other.finditer(text)]
    return [mention for mention in mentions if not _MODIFIED_NOUN.match(text, mention[1])]


def _read(text: str, start: int, end: int, opens: bool) -> Reading:
    left, right = _clause_bounds(text, start, end)
    before_words = _words(_NOT_A_NEGATION.sub(" ", text[left:start]))
    after_words = _words(text[end:right])[:NEGATION_WINDOW_WORDS]
    if _NEGATION_BEFORE.search(" ".join(before_words[-NEGATION_WINDOW_WORDS:])) or _NEGATION_AFTER.search(
        " ".join(after_words)
    ):
        return Reading.REFUSED
    if _RETRACTION.search(text, right):
        return Reading.REFUSED
    before = " ".join(before_words)
    asking_you = _ASKING_YOU.search(before) is not None
    if _QUESTION_CUE.search(before) and not asking_you:
        return Reading.MENTIONED
    if asking_you or _REQUEST_CUE.search(before):
        # A past form after a request cue may still describe: "I'd like to hear why it was cancelled".
        return Reading.MENTIONED if not opens and _PAST_DESCRIBES.search(before) else Reading.ASKED
    if opens and all(word in _OPENERS for word in before_words):
        return Reading.ASKED
    if _ADDRESS_ADJECTIVE.fullmatch(text[start:end]) and _describes_address(text, start, end):
        return Reading.ASKED  # a statement: "my address is wrong", "new address: 12 Rue de Rivoli, ..."
    return Reading.MENTIONED


def _describes_address(text: str, start: int, end: int) -> bool:
    """The adjective qualifies the address ("wrong address", "new delivery address", "address is wrong"),
    not some other word of the clause ("an address in another city")."""
    return bool(_ADJECTIVE_BEFORE_NOUN.match(text, end) or _NOUN_IS_ADJECTIVE.search(text[:start]))


def _words(text: str) -> list[str]:
    """The words of `text`, order ids left out (they say which order, not what to do with it)."""
    return _WORD.findall(_ORDER_ID.sub(" ", text))


def _clause_bounds(text: str, start: int, end: int) -> tuple[int, int]:
    left = 0
    for match in _CLAUSE_BREAK.finditer(text, 0, start):
        left = match.end()
    following = _CLAUSE_BREAK.search(text, end)
    return left, following.start() if following else len(text)

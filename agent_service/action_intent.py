"""Whether a customer's message answers a pending write action: a confirmation, a decline, or something else.

Literal and deterministic (no model decides whether an order is cancelled), on the guardrails' folded text
(accents, case, look-alikes and curly quotes undone), in English, Spanish, French, German and Portuguese.

* a **confirmation** starts with a yes ("yes", "go ahead", "sí", "oui", "ja", "sim", "confirm") and says
  nothing else but courtesy and the action itself ("yes please", "yes, cancel it"), or simply asks again
  for the pending action ("cancel it");
* a **decline** starts with a no ("no", "don't", "leave it", "non", "nein", "não"), or refuses the pending
  action ("no, don't cancel it", "I don't want to return it anymore");
* anything else is **other**: a question, a request for something different, another order id, a yes and a
  no together ("no, cancel it"), or a long message. The safe reading of doubt is "other": the action is
  dropped and the customer is asked again, never run.
"""

from __future__ import annotations

import enum
import json
import re
from typing import Final

from agent_service import write_intents
from agent_service.guardrails.normalise import fold

# Beyond this many words a message says more than yes or no.
MAX_ANSWER_WORDS: Final[int] = 12

_CONFIRM_START: Final[re.Pattern[str]] = re.compile(
    r"^(?:yes|yeah|yep|yup|ya|y|sure|ok|okay|okey|k|alright|all right|fine|of course|absolutely|definitely"
    r"|correct|right|no problem|no worries|go ahead|go for it|do it|please do|please go ahead|confirm"
    r"|confirmed|i confirm|please confirm|proceed|si|claro|adelante|vale|dale|de acuerdo|confirmo|hazlo"
    r"|por supuesto|oui|d'accord|vas-y|allez-y|je confirme|confirme|bien sur|parfait|ja|jawohl|klar|genau"
    r"|bestatige|ich bestatige|bestatigt|mach das|mach es|einverstanden|gerne|sim|pode|pode ser|certo"
    r"|com certeza|faz isso|isso)\b"
)
_DECLINE_START: Final[re.Pattern[str]] = re.compile(
    r"^(?:no|nope|nah|n|don't|dont|do not|leave it|never mind|nevermind|forget it|not now|stop|wait"
    r"|i changed my mind|changed my mind|mejor no|no gracias|dejalo|olvidalo|non|pas maintenant|laisse"
    r"|laissez|laisse tomber|non merci|nein|lass es|lieber nicht|doch nicht|vergiss es|nao|deixa|deixa pra la"
    r"|esquece)\b"
)
# Words a confirmation may carry besides its yes: courtesy, pronouns and the verbs of the three actions.
_CONFIRM_VOCABULARY: Final[str] = """
    yes yeah yep yup ya y sure ok okay okey k alright all right fine of course absolutely definitely correct
    no problem worries go ahead for do it please proceed confirm confirmed i that this is that's thats
    thanks thank you so much now order my the a one and
    cancel return change update address start
    si claro adelante vale dale de acuerdo confirmo hazlo por supuesto favor gracias lo la el pedido
    cancelalo cancelala cancela devuelvelo cambia cambiala cambialo
    oui d'accord vas-y allez-y je confirme confirme bien sur parfait merci s'il te vous plait le commande
    annule annulez retourne retournez change changez
    ja jawohl klar genau bestatige ich bestatigt mach das es einverstanden gerne bitte danke die bestellung
    storniere stornieren storniert
    sim pode ser certo com certeza faz isso obrigado obrigada o pedido cancela cancelar
"""
_CONFIRM_WORDS: Final[frozenset[str]] = frozenset(_CONFIRM_VOCABULARY.split())
_WORD: Final[re.Pattern[str]] = re.compile(r"[a-z0-9]+(?:['-][a-z]+)*")
_ORDER_ID: Final[re.Pattern[str]] = re.compile(r"\bord-?\d+\b")


class ActionIntent(enum.Enum):
    CONFIRM = "confirm"
    DECLINE = "decline"
    OTHER = "other"


def classify(message: str, tool: str = "", arguments_json: str = "{}") -> ActionIntent:
    """How `message` answers the pending action of `tool` with `arguments_json` (its order id, if any, is
    the only one the message may name)."""
    text = fold(message)
    words = _WORD.findall(_ORDER_ID.sub(" ", text))
    if not text or "?" in text or len(words) > MAX_ANSWER_WORDS:
        return ActionIntent.OTHER
    if _names_another_order(text, arguments_json):
        return ActionIntent.OTHER
    if tool in write_intents.WRITE_TOOLS and write_intents.negates(message, tool):
        return ActionIntent.DECLINE
    intent = write_intents.detect(message)
    asks_again = intent is not None and not intent.negated and intent.tool == tool
    if intent is not None and not intent.negated and intent.tool != tool:
        return ActionIntent.OTHER
    confirms = _CONFIRM_START.search(text) is not None
    declines = not confirms and _DECLINE_START.search(text) is not None
    if declines:
        return ActionIntent.OTHER if asks_again else ActionIntent.DECLINE
    if asks_again:
        return ActionIntent.CONFIRM
    if confirms and all(word in _CONFIRM_WORDS for word in words):
        return ActionIntent.CONFIRM
    return ActionIntent.OTHER


def _names_another_order(text: str, arguments_json: str) -> bool:
    mentioned = {order.replace("-", "") for order in _ORDER_ID.findall(text)}
    if not mentioned:
        return False
    try:
        arguments = json.loads(arguments_json or "{}")
    except ValueError:
        return True
    order_id = str(arguments.get("order_id", "")) if isinstance(arguments, dict) else ""
    return mentioned != {order_id.lower().replace("-", "")}

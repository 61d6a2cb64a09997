"""write_intents reads which change a message asks for, in five languages: requests, refusals ("don't cancel
it") and the near misses that only mention an action (questions about the process, descriptions of a state,
nouns used as modifiers), which must not become a write."""

from __future__ import annotations

import pytest

from agent_service.write_intents import (
    ADDRESS_TOOL,
    CANCEL_TOOL,
    RETURN_TOOL,
    WRITE_TOOLS,
    WriteIntent,
    detect,
    negates,
)

ASKS: list[tuple[str, str]] = [
    # English
    ("Please cancel order ORD-67890", CANCEL_TOOL),
    ("cancel ORD-67890", CANCEL_TOOL),
    ("Hi, cancel my order please", CANCEL_TOOL),
    ("I want to cancel my order", CANCEL_TOOL),
    ("Can you cancel ORD-67890?", CANCEL_TOOL),
    ("I want it cancelled", CANCEL_TOOL),
    ("no, cancel it", CANCEL_TOOL),
    ("Please cancel ORD-67890, no rush", CANCEL_TOOL),
    ("I'd like to return ORD-24816", RETURN_TOOL),
    ("I want a refund for ORD-24816", RETURN_TOOL),
    ("I need to send it back, it is too small", RETURN_TOOL),
    ("Please change the delivery address of ORD-67890 to 12 Rue de Rivoli, 75001 Paris, FR", ADDRESS_TOOL),
    ("Can you update the delivery address for ORD-67890?", ADDRESS_TOOL),
    ("my address is wrong", ADDRESS_TOOL),
    ("New delivery address for ORD-67890: 12 Rue de Rivoli, 75001 Paris, FR", ADDRESS_TOOL),
    # Spanish
    ("Quiero cancelar el pedido ORD-67890", CANCEL_TOOL),
    ("¿Puede cancelar mi pedido ORD-67890?", CANCEL_TOOL),
    ("Quiero devolver ORD-24816", RETURN_TOOL),
    ("Sí, cancélalo", CANCEL_TOOL),
    ("Quisiera un reembolso del pedido ORD-24816", RETURN_TOOL),
    ("Quiero cambiar la dirección de entrega de ORD-67890", ADDRESS_TOOL),
    # French
    ("Je veux annuler la commande ORD-67890", CANCEL_TOOL),
    ("Annulez la commande ORD-67890 s'il vous plaît", CANCEL_TOOL),
    ("Je voudrais retourner ORD-24816", RETURN_TOOL),
    ("Je voudrais changer l'adresse de livraison de ORD-67890", ADDRESS_TOOL),
    # German
    ("Bitte stornieren Sie ORD-67890", CANCEL_TOOL),
    ("Bitte Storno für ORD-67890", CANCEL_TOOL),
    ("Ich möchte die Bestellung ORD-67890 stornieren", CANCEL_TOOL),
    ("Ich möchte ORD-24816 zurückschicken", RETURN_TOOL),
    ("Bitte ändern Sie die Lieferadresse von ORD-67890", ADDRESS_TOOL),
    # Portuguese
    ("Quero cancelar o pedido ORD-67890", CANCEL_TOOL),
    ("Gostaria de devolver ORD-24816", RETURN_TOOL),
    ("Quero alterar o endereço de entrega do pedido ORD-67890", ADDRESS_TOOL),
]

REFUSES: list[tuple[str, str]] = [
    ("don't cancel it", CANCEL_TOOL),
    ("Don't cancel ORD-67890", CANCEL_TOOL),
    ("Please don\u2019t cancel ORD-67890", CANCEL_TOOL),  # a curly apostrophe
    ("There's no need to cancel", CANCEL_TOOL),
    ("I don't want to return it", RETURN_TOOL),
    ("Don't change the address", ADDRESS_TOOL),
    ("No quiero cancelar el pedido ORD-67890", CANCEL_TOOL),
    ("No cancele el pedido", CANCEL_TOOL),
    ("No lo canceles", CANCEL_TOOL),
    ("No quiero devolverlo", RETURN_TOOL),
    ("N'annulez pas la commande ORD-67890", CANCEL_TOOL),
    ("Je ne veux pas le retourner", RETURN_TOOL),
    ("Bitte nicht stornieren", CANCEL_TOOL),
    ("Stornieren Sie die Bestellung nicht", CANCEL_TOOL),
    ("Ich möchte meine Bestellung nicht mehr stornieren", CANCEL_TOOL),
    ("Não cancele o pedido ORD-67890", CANCEL_TOOL),
    ("Não quero devolver o pedido", RETURN_TOOL),
    ("Kein Storno bitte", CANCEL_TOOL),
    # taken back in a later clause
    ("Cancel ORD-67890. Actually no, don't.", CANCEL_TOOL),
    ("Please cancel ORD-67890. Never mind, forget it", CANCEL_TOOL),
    ("Quiero cancelar ORD-67890. No, olvídalo.", CANCEL_TOOL),
]

# Mentions that ask for nothing: the offline engine answers them from the knowledge base or the order status.
NEAR_MISSES: list[str] = [
    "It was cancelled",
    "Why was my order canceled?",
    "I have cancelled the order already",
    "where is my refund",
    "how long do refunds take?",
    "I don't know how to cancel",
    "I'd like to know how to cancel an order",
    "How can I cancel something I ordered this morning?",
    "Is it possible to cancel?",
    "What is the cancellation policy?",
    "Can I return it?",
    "how do I return an item?",
    "what is your return policy?",
    "what's the return window",
    "Where do I go online to send an item back?",
    "Can I still get my money back if I send something back three weeks after it arrived?",
    "I returned it last week",
    "I'll return to this later",
    "what is your address?",
    "Can I change the address?",
    "somebody got into my profile and placed orders to an address in another city",
    "Where is my order ORD-12345?",
    "no thanks",
    "¿Cuál es la política de devolución?",
    "¿Se puede cancelar el pedido ORD-67890?",
    "Comment annuler une commande ?",
    "Quelle est votre adresse ?",
    "Wie lange dauert die Rückerstattung?",
    "Was ist eure Adresse?",
    "Como faço para devolver um produto?",
]


@pytest.mark.parametrize(("message", "tool"), ASKS)
def test_a_request_is_read_as_that_write(message: str, tool: str) -> None:
    assert detect(message) == WriteIntent(tool)
    assert not negates(message, tool)


@pytest.mark.parametrize(("message", "tool"), REFUSES)
def test_a_refusal_is_read_as_negated_and_negates_that_tool(message: str, tool: str) -> None:
    assert detect(message) == WriteIntent(tool, negated=True)
    assert negates(message, tool)
    assert not any(negates(message, other) for other in WRITE_TOOLS if other != tool)


@pytest.mark.parametrize("message", NEAR_MISSES)
def test_a_mention_that_asks_for_nothing_is_no_write(message: str) -> None:
    assert detect(message) is None
    assert not any(negates(message, tool) for tool in WRITE_TOOLS)


def test_refusing_one_action_and_asking_for_another_asks_for_the_other() -> None:
    message = "Don't cancel it, I want to return it instead"
    assert detect(message) == WriteIntent(RETURN_TOOL)
    assert negates(message, CANCEL_TOOL)
    assert not negates(message, RETURN_TOOL)


def test_an_action_asked_for_in_another_clause_is_not_negated() -> None:
    message = "No, don't wait. Cancel ORD-67890."
    assert detect(message) == WriteIntent(CANCEL_TOOL)
    assert not negates(message, CANCEL_TOOL)


def test_a_negation_in_an_earlier_clause_does_not_reach_the_verb() -> None:
    assert detect("I have no time for this, but please cancel ORD-67890") == WriteIntent(CANCEL_TOOL)


def test_the_write_tool_names_are_the_contract_s() -> None:
    assert WRITE_TOOLS == ("cancel_order", "start_return", "change_delivery_address")

"""A customer's abbreviation of a name the help center writes out ("amex" → "American Express") is spelled
out before the search (service_kit.abbreviations.spell_out), on real Chroma over gRPC. The articles and
questions are written here, not taken from any suite."""

from __future__ import annotations

from devstack.credentials import role_channel
from retrieval_service.server import StartedServer
from support.v1 import retrieval_pb2, retrieval_pb2_grpc
from tests.retrieval.conftest import ServerFactory
from tests.retrieval.helpers import retrieval_stub

# A long article that says many things; the card brands are one clause of one sentence.
PAYING = """# Paying for your membership

Memberships are billed on the first day of each month and the receipt is emailed to the account holder.
Family memberships cover up to four people living at the same address; add them at the front desk.
We accept Visa, Mastercard and American Express, and direct debit from a bank account in the euro area.
Cash is only accepted at the front desk for day passes and towels, never for monthly memberships.
If a payment fails we try again after 3 days, and after a second failure the membership is paused.
Paused memberships restart as soon as the balance is paid, with no joining fee to pay again.
"""
CLASSES = """# Booking classes

Classes open for booking 7 days ahead at 7 am in the app or at the front desk.
Cancel at least 2 hours before the start, or the class counts as attended.
Personal Training sessions are booked with your trainer directly and paid per session.
"""


async def _search(stub: retrieval_pb2_grpc.RetrievalServiceStub, query: str) -> retrieval_pb2.SearchResponse:
    reply: retrieval_pb2.SearchResponse = await stub.Search(
        retrieval_pb2.SearchRequest(query=query), timeout=30
    )
    return reply


async def test_an_abbreviated_name_finds_the_article_that_writes_it_out(make_server: ServerFactory) -> None:
    server: StartedServer = await make_server()
    async with role_channel(f"127.0.0.1:{server.port}") as channel:
        stub = retrieval_stub(channel)
        await stub.IngestDocuments(
            retrieval_pb2.IngestDocumentsRequest(
                documents=[
                    retrieval_pb2.Document(doc_id="paying.md", content=PAYING),
                    retrieval_pb2.Document(doc_id="classes.md", content=CLASSES),
                ]
            ),
            timeout=120,
        )
        found = await _search(stub, "do u take amex at the desk")
        assert not found.nothing_relevant and found.hits[0].doc_id == "paying.md"
        assert "American Express" in found.hits[0].text
        shouted = await _search(stub, "AMEX OK??")  # at any letter case the customer writes it
        assert not shouted.nothing_relevant and shouted.hits[0].doc_id == "paying.md"
        # an abbreviation that spells no name of the help center changes nothing: still nothing relevant
        assert (await _search(stub, "who won the nba finals")).nothing_relevant
        # lower-case words that happen to spell it are no name ("pls" is not "place labels ...")
        assert (await _search(stub, "pls write me a poem about ducks")).nothing_relevant

"""postal_address reads a one-line address from a chat message into change_delivery_address's `address`
argument, and reads nothing from text that is not an address in that shape."""

from __future__ import annotations

import pytest

from agent_service.postal_address import ADDRESS_EXAMPLE, PostalAddress, find_address, parse_address

PARSED: list[tuple[str, PostalAddress]] = [
    ("12 Rue de Rivoli, 75001 Paris, FR", PostalAddress("12 Rue de Rivoli", "Paris", "75001", "FR")),
    ("221B Baker Street, London NW1 6XE, GB", PostalAddress("221B Baker Street", "London", "NW1 6XE", "GB")),
    (
        "Hauptstraße 5, Apt 3, 10115 Berlin, Germany",
        PostalAddress("Hauptstraße 5", "Berlin", "10115", "DE", line2="Apt 3"),
    ),
    (
        "1600 Amphitheatre Pkwy, Mountain View, CA 94043, US",
        PostalAddress("1600 Amphitheatre Pkwy", "Mountain View", "94043", "US"),
    ),
    ("Rua Augusta 100, 1100-053 Lisboa, PT", PostalAddress("Rua Augusta 100", "Lisboa", "1100-053", "PT")),
    (
        "Calle Mayor 10, 28013 Madrid, España, gracias",
        PostalAddress("Calle Mayor 10", "Madrid", "28013", "ES"),
    ),
    ("Damrak 1, 1012 LG Amsterdam, nl.", PostalAddress("Damrak 1", "Amsterdam", "1012 LG", "NL")),
    (
        "10 Downing Street, London SW1A 2AA, UK",
        PostalAddress("10 Downing Street", "London", "SW1A 2AA", "GB"),
    ),
]

NOT_ADDRESSES: list[str] = [
    "my address is wrong",
    "Paris, France, FR",  # no street line with a number
    "12 Rue de Rivoli, Paris, FR",  # no postal code
    "5 Main St, 12345 Springfield, Narnia",  # no country
    "12 Rue de Rivoli, 75001 Paris",  # no country
    "1, 2, 3",
    "",
]


@pytest.mark.parametrize(("text", "address"), PARSED)
def test_an_address_is_read_into_its_parts(text: str, address: PostalAddress) -> None:
    assert parse_address(text) == address


@pytest.mark.parametrize("text", NOT_ADDRESSES)
def test_text_that_is_not_an_address_reads_as_none(text: str) -> None:
    assert parse_address(text) is None
    assert find_address(text) is None


def test_the_address_is_found_after_what_the_message_says_before_it() -> None:
    message = "Please change the delivery address of ORD-67890 to 12 Rue de Rivoli, 75001 Paris, FR. Thanks!"
    assert find_address(message, exclude="ORD-67890") == parse_address(ADDRESS_EXAMPLE)


def test_a_part_holding_the_order_id_is_not_the_street_line() -> None:
    message = "ORD-67890, 75001 Paris, FR"
    assert parse_address(message) is not None  # "ORD-67890" has a number and letters ...
    assert find_address(message, exclude="ORD-67890") is None  # ... but it is the order, not a street


def test_the_tool_argument_has_line2_only_when_there_is_one() -> None:
    assert PostalAddress("12 Rue de Rivoli", "Paris", "75001", "FR").as_arguments() == {
        "line1": "12 Rue de Rivoli",
        "city": "Paris",
        "postal_code": "75001",
        "country": "FR",
    }
    with_line2 = PostalAddress("Hauptstraße 5", "Berlin", "10115", "DE", line2="Apt 3").as_arguments()
    assert with_line2["line2"] == "Apt 3"


def test_a_part_longer_than_the_limit_is_not_an_address() -> None:
    assert parse_address(f"12 {'x' * 200}, 75001 Paris, FR") is None

"""The PII detector: each type found where it is, and its near-misses left alone."""

from __future__ import annotations

import pytest

from gateway.guards.pii import PiiDetector, is_card

ALL = PiiDetector(["email", "phone", "card", "iban", "national_id"], ["US", "DE"],
                  ["us.ssn", "de.idnr", "fr.nir", "es.dni", "it.codicefiscale", "nl.bsn"])


def found(text: str, detector: PiiDetector = ALL) -> list[tuple[str, str]]:
    return sorted((f.label, text[f.start:f.end]) for f in detector.find(text))


@pytest.mark.parametrize("text,label,match", [
    ("write to bob.smith+x@example.co.uk today", "email", "bob.smith+x@example.co.uk"),
    ("card 4111 1111 1111 1111 expires", "card", "4111 1111 1111 1111"),
    ("card 4111-1111-1111-1111.", "card", "4111-1111-1111-1111"),
    ("amex 378282246310005", "card", "378282246310005"),
    ("mastercard 2223003122003222", "card", "2223003122003222"),
    ("pay to DE89 3704 0044 0532 0130 00 AND more", "iban", "DE89 3704 0044 0532 0130 00"),
    ("iban GB82WEST12345698765432.", "iban", "GB82WEST12345698765432"),
    ("ssn 536-90-4399 on file", "national_id", "536-90-4399"),
    ("dni 54362315K", "national_id", "54362315K"),
    ("cf RCCMNL83S18D969H", "national_id", "RCCMNL83S18D969H"),
    ("call +1 650-253-0000 now", "phone", "+1 650-253-0000"),
    ("ring (415) 555-2671", "phone", "(415) 555-2671"),
    ("Berlin 030 901820", "phone", "030 901820"),
])
def test_finds_each_type(text: str, label: str, match: str) -> None:
    assert (label, match) in found(text)


@pytest.mark.parametrize("text", [
    "order number 4111111111111112 shipped",       # 16 digits, Luhn fails
    "order number 1234567812345670 shipped",       # Luhn passes, no card network starts 1
    "tracking 9999 9999 9999 9995",               # Luhn passes, no network starts 9
    "iban DE89 3704 0044 0532 0130 01",            # one digit off: mod-97 fails
    "meet at 2026-12-01 10:30",                    # a date, not a phone number
    "version 1.2.3 and user@localhost",            # no domain with a dot: not an address
    "the answer is 42, and pi is 3.14159",
])
def test_near_misses_are_not_flagged(text: str) -> None:
    assert found(text) == []


def test_ssn_reserved_numbers_are_not_flagged() -> None:
    ids = PiiDetector(["national_id"], national_ids=["us.ssn"])
    assert found("ssn 536-90-4399", ids) == [("national_id", "536-90-4399")]
    assert found("ssn 078-05-1120", ids) == []  # the Woolworth wallet card's, voided
    assert found("ssn 000-12-3456", ids) == []  # area 000 was never issued
    assert found("ssn 536904399", ids) == []    # without dashes: any 9 digits


def test_only_the_configured_types_are_looked_for() -> None:
    cards_only = PiiDetector(["card"])
    text = "mail a@b.io, card 4111 1111 1111 1111, call +1 650-253-0000"
    assert found(text, cards_only) == [("card", "4111 1111 1111 1111")]


def test_a_card_number_is_not_also_a_phone_number() -> None:
    assert [label for label, _ in found("4111 1111 1111 1111")] == ["card"]


def test_is_card_checks_network_length_and_checksum() -> None:
    assert is_card("4012888888881881")
    assert not is_card("4012888888881882")     # checksum
    assert not is_card("401288888888188")      # Visa is 13, 16 or 19 digits
    assert not is_card("3782822463100050")     # Amex is 15 digits

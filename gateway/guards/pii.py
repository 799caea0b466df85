"""Personal data in text: e-mail addresses, phone numbers, payment cards, IBANs, national ids.

A cheap pattern finds candidates; a library checks each one, so near-misses are not flagged:
- phone numbers: `phonenumbers` (Google's libphonenumber metadata: which digits make a valid
  number in each region), through its own matcher;
- payment cards: 13–19 digits with a card-network prefix and a valid Luhn checksum
  (`stdnum.luhn`) — a 16-digit order number fails the checksum nine times in ten, and the
  prefix check takes most of the rest;
- IBANs: `stdnum.iban` (the country's length and format, and the mod-97 check digits);
- national ids: `python-stdnum`'s validators (check digits, reserved ranges).

Both libraries are pure Python, ship their data in the wheel (nothing fetched at run time)
and are maintained (python-stdnum since 2010, phonenumbers tracks libphonenumber releases).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from importlib import import_module

import phonenumbers
from stdnum import iban as _iban
from stdnum import luhn as _luhn

from gateway.guards.base import Finding

_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])")
# Digits in groups separated by single spaces or dashes, as cards are written.
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d])")
# Something that could be a phone number: libphonenumber's matcher costs ~100 µs per region
# on any text, so it only runs where at least 7 digits stand close together.
_PHONEISH = re.compile(r"\d(?:[\s().\-/]{0,3}\d){6}")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}")

# Card networks by leading digits (inclusive ranges of the first n digits) and lengths; from the
# networks' published IIN ranges (Visa 4; Mastercard 51–55 and 2221–2720; Amex 34, 37; Discover
# 6011, 644–649, 65; JCB 3528–3589; Diners 300–305, 36, 38–39; UnionPay 62; Maestro 50, 56–69).
_NETWORKS: tuple[tuple[int, int, int, frozenset[int]], ...] = (
    (1, 4, 4, frozenset({13, 16, 19})),
    (2, 51, 55, frozenset({16})),
    (4, 2221, 2720, frozenset({16})),
    (2, 34, 34, frozenset({15})),
    (2, 37, 37, frozenset({15})),
    (4, 6011, 6011, frozenset(range(16, 20))),
    (3, 644, 649, frozenset(range(16, 20))),
    (2, 65, 65, frozenset(range(16, 20))),
    (4, 3528, 3589, frozenset(range(16, 20))),
    (3, 300, 305, frozenset(range(14, 20))),
    (2, 36, 36, frozenset(range(14, 20))),
    (2, 38, 39, frozenset(range(14, 20))),
    (2, 62, 62, frozenset(range(16, 20))),
    (2, 50, 50, frozenset(range(12, 20))),
    (2, 56, 69, frozenset(range(12, 20))),
)

# National ids: a candidate pattern per python-stdnum module. Bare digit runs are only used
# where the id has a check digit (de.idnr, fr.nir, nl.bsn); a US SSN is only recognised
# written with its dashes, since any 9 digits outside the reserved ranges are "valid".
_NATIONAL: dict[str, str] = {
    "us.ssn": r"(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])",
    "de.idnr": r"(?<![\d ])\d{2} ?\d{3} ?\d{3} ?\d{3}(?![\d])",
    "fr.nir": r"(?<![\d])[12] ?\d{2} ?\d{2} ?(?:\d{2}|2[AB]) ?\d{3} ?\d{3} ?\d{2}(?![\d])",
    "es.dni": r"(?<![\w])\d{8}-?[A-Z](?![\w])",
    "it.codicefiscale": r"(?<![\w])[A-Z]{6}\d{2}[A-Z]\d{2}[A-Z]\d{3}[A-Z](?![\w])",
    "nl.bsn": r"(?<![\d])\d{9}(?![\d])",
}


def card_network_ok(digits: str) -> bool:
    """The digits start like a card of some network, with that network's length."""
    n = len(digits)
    for width, lo, hi, lengths in _NETWORKS:
        if n in lengths and lo <= int(digits[:width]) <= hi:
            return True
    return False


def is_card(candidate: str) -> bool:
    digits = candidate.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and card_network_ok(digits) and _luhn.is_valid(digits)


class PiiDetector:
    def __init__(self, types: Sequence[str], phone_regions: Sequence[str] = ("US",),
                 national_ids: Sequence[str] = ("us.ssn",)) -> None:
        self.types = frozenset(types)
        self.regions = list(phone_regions) or ["US"]
        self.national: list[tuple[str, re.Pattern[str], Callable[[str], bool]]] = []
        if "national_id" in self.types:
            for name in national_ids:
                module = import_module(f"stdnum.{name}")
                self.national.append((name, re.compile(_NATIONAL[name]), module.is_valid))

    def find(self, text: str) -> list[Finding]:
        out: list[Finding] = []
        t = self.types
        if "email" in t and "@" in text:
            out += [Finding(m.start(), m.end(), "email") for m in _EMAIL.finditer(text)]
        if "card" in t:
            out += [Finding(m.start(), m.end(), "card") for m in _CARD.finditer(text)
                    if is_card(m.group())]
        if "iban" in t:
            out += _ibans(text)
        for _name, pattern, valid in self.national:
            out += [Finding(m.start(), m.end(), "national_id") for m in pattern.finditer(text)
                    if valid(m.group())]
        if "phone" in t and _PHONEISH.search(text):
            out += self._phones(text, out)
        return out

    def _phones(self, text: str, found: list[Finding]) -> list[Finding]:
        out: list[Finding] = []
        for region in self.regions:
            for m in phonenumbers.PhoneNumberMatcher(text, region,
                                                     leniency=phonenumbers.Leniency.VALID):
                # A card or IBAN already found can contain digits that read as a number.
                if not any(f.start <= m.start < f.end for f in (*found, *out)):
                    out.append(Finding(m.start, m.end, "phone"))
        return out


def _ibans(text: str) -> list[Finding]:
    """IBANs, written compact or in groups of four. The candidate pattern may run on into
    following capitals ("… 00 AND"), so the longest valid prefix is taken."""
    out = []
    for m in _IBAN.finditer(text):
        raw = m.group()
        # Offsets of each non-space character, to map a compact prefix back to the text.
        pos = [i for i, ch in enumerate(raw) if ch != " "]
        compact = raw.replace(" ", "")
        for n in range(len(compact), 14, -1):
            if _iban.is_valid(compact[:n]):
                out.append(Finding(m.start(), m.start() + pos[n - 1] + 1, "iban"))
                break
    return out

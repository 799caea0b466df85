"""Signing deliveries (HMAC-SHA256 over timestamp + body) and the retry schedule."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.alerts.signing import backoff_s, sign, signature, verify

SECRET = b"whsec-test"
BODY = b'{"id":"evt_1","type":"budget_threshold"}'


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    # What a receiver computes by hand, in any language (docs/alerts.md).
    expected = hmac.new(SECRET, b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert signature(SECRET, 1700000000, BODY) == expected
    assert sign(SECRET, 1700000000, BODY) == f"t=1700000000,v1={expected}"


def test_verify_accepts_the_signed_body_within_tolerance() -> None:
    header = sign(SECRET, 1000, BODY)
    assert verify(SECRET, header, BODY, now=1000)
    assert verify(SECRET, header, BODY, now=1300)


@pytest.mark.parametrize("why,header,body,secret,now", [
    ("body changed", None, BODY + b" ", SECRET, 1000),
    ("other secret", None, BODY, b"other", 1000),
    ("too old: a replay", None, BODY, SECRET, 1301),
    ("from the future", None, BODY, SECRET, 699),
    ("no timestamp", "v1=abc", BODY, SECRET, 1000),
    ("no signature", "t=1000", BODY, SECRET, 1000),
    ("empty", "", BODY, SECRET, 1000),
])
def test_verify_refuses(why: str, header: str | None, body: bytes, secret: bytes,
                        now: int) -> None:
    h = sign(SECRET, 1000, BODY) if header is None else header
    assert not verify(secret, h, body, now=now), why


def test_timestamp_is_inside_the_mac() -> None:
    # Moving `t` forward (to pass a receiver's freshness check) breaks the signature.
    mac = signature(SECRET, 1000, BODY)
    assert not verify(SECRET, f"t=2000,v1={mac}", BODY, now=2000)


def test_any_v1_may_match_during_secret_rotation() -> None:
    good = signature(SECRET, 1000, BODY)
    assert verify(SECRET, f"t=1000,v1={'0' * 64},v1={good}", BODY, now=1000)


def test_backoff_doubles_up_to_the_cap_at_both_jitter_extremes() -> None:
    low = [backoff_s(n, 1.0, 10.0, rng=lambda: 0.0) for n in range(1, 7)]
    high = [backoff_s(n, 1.0, 10.0, rng=lambda: 1.0) for n in range(1, 7)]
    assert high == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert low == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


@given(retry=st.integers(1, 10_000), initial=st.floats(0.001, 100.0),
       cap=st.floats(0.001, 10_000.0), r=st.floats(0.0, 1.0))
def test_backoff_stays_within_half_step_and_step(retry: int, initial: float, cap: float,
                                                 r: float) -> None:
    step = min(cap, initial * 2.0 ** min(retry - 1, 60))
    wait = backoff_s(retry, initial, cap, rng=lambda: r)
    assert step / 2 <= wait <= step
    assert wait > 0

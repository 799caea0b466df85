"""x-ratelimit-* and Retry-After formatting, and which rule speaks for a header family."""

from __future__ import annotations

import pytest

from gateway.limits.headers import RateState, format_reset, rate_headers, retry_after
from gateway.limits.rules import RateRule, Scope


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (0.0004, "0s"), (0.02, "20ms"), (0.9996, "1s"), (1, "1s"), (8.64, "8.64s"),
    (59.9994, "59.999s"), (60, "1m0s"), (360, "6m0s"), (90.5, "1m30.5s"),
    (3725.5, "1h2m5.5s"), (7200, "2h0m0s"),
])
def test_reset_uses_openai_duration_format(seconds: float, text: str) -> None:
    assert format_reset(seconds) == text


@pytest.mark.parametrize(("seconds", "header"), [(0, 1), (0.2, 1), (1, 1), (1.01, 2), (6.5, 7)])
def test_retry_after_is_whole_seconds_rounded_up_and_at_least_one(seconds: float,
                                                                 header: int) -> None:
    assert retry_after(seconds) == header


def test_the_tightest_rule_of_each_family_fills_the_headers() -> None:
    tenant = Scope("tenant", "acme")
    key = Scope("key", "acme", key_id="k1")
    states = [
        RateState(RateRule(tenant, "rpm", 600), True, 590, 1.0, 0),
        RateState(RateRule(key, "rpm", 60), True, 3, 57.0, 0),
        RateState(RateRule(tenant, "tpm", 10000), True, 9000, 6.0, 0),
    ]
    assert rate_headers(states) == {
        "x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "3",
        "x-ratelimit-reset-requests": "57s",
        "x-ratelimit-limit-tokens": "10000", "x-ratelimit-remaining-tokens": "9000",
        "x-ratelimit-reset-tokens": "6s",
    }


def test_no_rule_no_header() -> None:
    assert rate_headers([]) == {}

"""The burn-down forecast and the period parsing of the finance pages."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from gateway.console.finance import forecast, period
from gateway.errors import InvalidRequest


def test_forecast_carries_the_months_daily_average_to_month_end() -> None:
    daily = {date(2026, 4, 1): Decimal("1.00"), date(2026, 4, 3): Decimal("2.00")}
    actual, projected, at_end = forecast(daily, date(2026, 4, 10))
    assert [v for _, v in actual[:3]] == [Decimal("1.00"), Decimal("1.00"), Decimal("3.00")]
    assert actual[-1] == (date(2026, 4, 10), Decimal("3.00"))
    # $3 over 10 days is $0.30 a day; 20 days remain in April.
    assert projected[0] == (date(2026, 4, 10), Decimal("3.000000"))
    assert projected[-1][0] == date(2026, 4, 30)
    assert at_end == Decimal("9.000000")


def test_forecast_on_the_first_and_last_day() -> None:
    _, projected, at_end = forecast({date(2026, 2, 1): Decimal("2")}, date(2026, 2, 1))
    assert len(projected) == 28 and at_end == Decimal("56.000000")
    actual, projected, at_end = forecast({}, date(2026, 2, 28))
    assert len(actual) == 28 and projected == [(date(2026, 2, 28), Decimal("0.000000"))]


def test_period_defaults_to_month_to_date() -> None:
    assert period({}, date(2026, 3, 17)) == (date(2026, 3, 1), date(2026, 3, 17))
    assert period({"from": "2026-01-05", "to": "2026-01-06"}) == (date(2026, 1, 5),
                                                                   date(2026, 1, 6))
    for bad in ({"from": "yesterday"}, {"from": "2026-02-02", "to": "2026-02-01"},
                {"from": "2000-01-01", "to": "2026-01-01"}):
        with pytest.raises(InvalidRequest):
            period(bad, date(2026, 3, 17))

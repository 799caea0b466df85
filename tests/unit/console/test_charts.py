"""The figure specs handed to plotly.js: what is drawn, not how."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from gateway.console.charts import burn_down, stacked_bars


def test_stacked_bars_have_one_trace_per_series_and_a_value_per_day() -> None:
    days = [date(2026, 5, 1), date(2026, 5, 2), date(2026, 5, 3)]
    fig = stacked_bars("t", days, {"acme": {days[0]: 1.5}, "globex": {days[2]: 2.0}}, "USD")
    assert fig["layout"]["barmode"] == "stack"
    assert [(t["name"], t["y"]) for t in fig["data"]] == [("acme", [1.5, 0.0, 0.0]),
                                                         ("globex", [0.0, 0.0, 2.0])]
    assert fig["data"][0]["x"] == ["2026-05-01", "2026-05-02", "2026-05-03"]


def test_burn_down_draws_the_budget_and_each_alert_below_it() -> None:
    actual = [(date(2026, 5, 1), Decimal("1")), (date(2026, 5, 2), Decimal("3"))]
    forecast = [(date(2026, 5, 2), Decimal("3")), (date(2026, 5, 31), Decimal("46.5"))]
    fig = burn_down("t", actual, forecast, Decimal("50"), [0.5, 0.9, 1.0])
    assert [s["y0"] for s in fig["layout"]["shapes"]] == [50.0, 25.0, 45.0]
    assert [a["text"] for a in fig["layout"]["annotations"]] == ["budget", "alert 50%",
                                                                 "alert 90%"]
    assert fig["data"][1]["line"]["dash"] == "dash" and fig["data"][1]["y"] == [3.0, 46.5]
    assert burn_down("t", actual, forecast, None, [0.5])["layout"]["shapes"] == []

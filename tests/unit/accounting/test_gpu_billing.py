"""GPU-hour billing arithmetic: lifetimes → billed hours per price → tenants' shares."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from gateway.accounting.gpu_billing import (
    UNALLOCATED,
    GpuPeriod,
    allocate,
    charges,
    cost_of,
    hours_of,
    provisioned_before,
    report_window,
    total_hours,
)

DAY = date(2026, 3, 2)
NEXT_DAY = datetime(2026, 3, 3, tzinfo=UTC)


def at(hh: int, mm: int = 0, day: int = 2) -> datetime:
    return datetime(2026, 3, day, hh, mm, tzinfo=UTC) if hh < 24 else \
        datetime(2026, 3, day + 1, hh - 24, mm, tzinfo=UTC)


def period(dep: str, start: datetime, end: datetime, rate: str = "2.10",
           provider: str = "gpu") -> GpuPeriod:
    return GpuPeriod(dep, provider, Decimal(rate), start, end)


def bill(periods: list[GpuPeriod], now: datetime = NEXT_DAY, start: date = DAY,
         end: date = DAY) -> list[tuple[str, str, str]]:
    """(deployment, rate, hours) per charge."""
    return [(c.deployment, str(c.rate_per_hour), str(c.hours))
            for c in charges(periods, *report_window(start, end, now))]


def test_deployment_added_at_1353_and_used_five_minutes_bills_five_minutes() -> None:
    # Added by a reload at 13:53 and removed at 13:58; the day-based rule billed 13 hours
    # for a report at 14:00 (every hour since midnight).
    p = period("gpu-b/llama", at(13, 53), at(13, 58), rate="3")
    [c] = charges([p], *report_window(DAY, DAY, at(14)))
    assert c.hours == Decimal("0.083333")  # 5/60 h, shown to 10⁻⁶ h
    assert c.cost_usd == Decimal("0.25")  # from the exact time, not the rounded hours
    # Still in force: billed to its last heartbeat, never beyond now.
    live = period("gpu-b/llama", at(13, 53), at(15, 59))
    assert bill([live], now=at(15, 30)) == [("gpu-b/llama", "2.10", "1.616667")]


def test_drained_at_noon_bills_only_the_morning() -> None:
    # In force since the day before, drained (weight 0) at noon: the period closed then.
    p = period("gpu-a/llama", at(18, day=1), at(12))
    assert bill([p]) == [("gpu-a/llama", "2.10", "12.000000")]


def test_overlapping_replica_periods_count_each_instant_once() -> None:
    ps = [period("d", at(8), at(12)), period("d", at(10), at(14)),
          period("d", at(13), at(13, 30)), period("d", at(20), at(21))]
    assert bill(ps) == [("d", "2.10", "7.000000")]  # 08–14 and 20–21


def test_a_price_change_bills_each_price_for_its_own_hours() -> None:
    ps = [
        period("d", at(0), at(12), rate="2"),        # replica 1, old policy
        period("d", at(12), at(24), rate="3"),       # replica 1 reloaded at noon
        period("d", at(0), at(12, 5), rate="2"),     # replica 2 reloaded five minutes late
        period("d", at(12, 5), at(24), rate="3"),
    ]
    # 12:00–12:05 is covered by both prices: the period opened last (the new policy) wins.
    assert bill(ps) == [("d", "2", "12.000000"), ("d", "3", "12.000000")]
    rows = allocate(charges(ps, *report_window(DAY, DAY, NEXT_DAY)), {("d", "acme"): 10})
    assert [(g.tenant, g.hours, g.cost_usd) for g in rows] == [
        ("acme", Decimal("12.000000000"), Decimal("24.000000000")),
        ("acme", Decimal("12.000000000"), Decimal("36.000000000"))]


def test_window_clips_periods_and_stops_at_now() -> None:
    p = period("d", at(20, day=1), at(6, day=4))
    assert bill([p], now=at(9, 30)) == [("d", "2.10", "9.500000")]
    assert bill([p], now=datetime(2026, 3, 1, tzinfo=UTC)) == []  # window not begun
    assert bill([p], start=date(2026, 3, 1), end=date(2026, 3, 3), now=datetime(
        2027, 1, 1, tzinfo=UTC)) == [("d", "2.10", "52.000000")]  # Mar 1 20:00 – Mar 4 00:00


def test_two_deployments_every_total_adds_up() -> None:
    ps = [period("gpu-a/llama", at(0), at(24), rate="2.10"),
          period("gpu-b/llama", at(9), at(17), rate="0.7")]
    tokens = {("gpu-a/llama", "acme"): 13000, ("gpu-a/llama", "globex"): 5200,
              ("gpu-b/llama", "acme"): 1, ("other", "acme"): 99}
    billed = charges(ps, *report_window(DAY, DAY, NEXT_DAY))
    rows = allocate(billed, tokens)
    # Total hours are the sum over deployments (24 + 8), not one deployment's hours.
    assert total_hours(rows) == sum((c.hours for c in billed), Decimal(0)) == Decimal(32)
    for c in billed:
        mine = [g for g in rows if g.deployment == c.deployment]
        assert sum((g.hours for g in mine), Decimal(0)) == c.hours
        assert sum((g.cost_usd for g in mine), Decimal(0)) == c.cost_usd
        # hours and cost are split separately, each exactly; they agree to the quanta
        assert all(abs(g.cost_usd - g.hours * g.rate_per_hour) <= Decimal("4E-9") for g in mine)
    a = {g.tenant: g for g in rows if g.deployment == "gpu-a/llama"}
    assert abs(a["acme"].hours - Decimal(24) * 13000 / 18200) <= Decimal("1E-9")
    assert a["acme"].tokens == 13000 and set(a) == {"acme", "globex"}
    assert sum((g.cost_usd for g in rows), Decimal(0)) == Decimal("50.4") + Decimal("5.6")


def test_a_deployment_nobody_used_is_one_unallocated_row() -> None:
    rows = allocate(charges([period("d", at(0), at(4), rate="1.5")],
                            *report_window(DAY, DAY, NEXT_DAY)), {("d", "acme"): 0})
    assert [(g.tenant, g.hours, g.cost_usd) for g in rows] == [
        (UNALLOCATED, Decimal(4), Decimal(6))]


def test_gpu_since_bills_from_provisioning_to_the_first_recorded_period() -> None:
    first = period("d", at(9), at(17))
    span = provisioned_before(first, datetime(2026, 3, 2, 6, 0))  # naive means UTC
    assert span is not None and (span.started, span.ended) == (at(6), at(9))
    assert bill([first, span]) == [("d", "2.10", "11.000000")]
    assert provisioned_before(first, at(10)) is None  # not earlier: nothing to add
    assert provisioned_before(first, None) is None


def test_hours_round_to_a_millionth_and_costs_to_a_billionth() -> None:
    assert hours_of(3_600_000_000) == Decimal(1)
    assert hours_of(1800) == Decimal(0)  # half a quantum, to even
    assert hours_of(5400) == Decimal("0.000002")
    assert hours_of(5399) == Decimal("0.000001")
    assert cost_of(Decimal("2.75"), 300_000_000) == Decimal("0.229166667")  # 5 min, half-even
    assert cost_of(Decimal("100"), 1) == Decimal("2.8E-8")  # 1 µs: 2.77…·10⁻⁸
    assert cost_of(Decimal("1"), 1) == Decimal(0)  # 2.8·10⁻¹⁰ rounds away
    # An empty span leaves no row at all.
    assert bill([period("d", at(1), at(1))]) == []


def test_billed_hours_equal_a_minute_by_minute_count() -> None:
    rng = random.Random(15)
    for _ in range(200):
        ps = []
        for _ in range(rng.randint(1, 8)):
            s = rng.randint(-300, 1700)
            ps.append(period("d", at(0) + timedelta(minutes=s),
                             at(0) + timedelta(minutes=s + rng.randint(0, 600)),
                             rate=rng.choice(["1", "2.5"])))
        minutes: dict[int, Decimal] = {}
        for m in range(24 * 60):  # the price of each minute: the latest opened period's
            t = at(0) + timedelta(minutes=m)
            cover = [p for p in ps if p.started <= t and t + timedelta(minutes=1) <= p.ended]
            if cover:
                minutes[m] = max(cover, key=lambda p: (p.started, p.rate_per_hour)
                                 ).rate_per_hour
        billed = charges(ps, *report_window(DAY, DAY, NEXT_DAY))
        want = {r: sum(1 for v in minutes.values() if v == r) for r in set(minutes.values())}
        got = {c.rate_per_hour: (c.hours, c.cost_usd) for c in billed}
        assert got == {r: (hours_of(n * 60_000_000), (r * n / 60).quantize(Decimal("1E-9")))
                       for r, n in want.items()}

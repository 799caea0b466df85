from __future__ import annotations

from datetime import date

from gateway.policy.models import Price
from gateway.routing.base import NO_SIGNALS, EndpointLoad
from gateway.routing.strategies.cost import Cheapest, price_on
from tests.unit.routing.targets import chat, ids, signals, target

CALL = chat("be brief", "hello there", max_tokens=100)


def test_cheapest_first_then_by_price() -> None:
    cands = [target("pricey", input_price="10", output_price="30"),
             target("cheap", input_price="0.15", output_price="0.60"),
             target("mid", input_price="2.5", output_price="10")]
    assert ids(Cheapest().order(cands, NO_SIGNALS, CALL)) == ["cheap", "mid", "pricey"]


def test_the_calls_shape_decides_between_input_heavy_and_output_heavy_prices() -> None:
    cheap_in = target("cheap-in", input_price="0.1", output_price="20")
    cheap_out = target("cheap-out", input_price="5", output_price="1")
    long_prompt = chat("x" * 40_000, "summarise", max_tokens=10)
    long_answer = chat("", "write an essay", max_tokens=4000)
    s = Cheapest()
    assert s.order([cheap_in, cheap_out], NO_SIGNALS, long_prompt)[0].id == "cheap-in"
    assert s.order([cheap_in, cheap_out], NO_SIGNALS, long_answer)[0].id == "cheap-out"


def test_self_hosted_is_free_until_saturated_then_spills_to_paid() -> None:
    gpu = target("gpu", gpu_cost="2.5")
    api = target("api", input_price="0.15", output_price="0.6")
    s = Cheapest()
    idle = signals(gpu=EndpointLoad(in_flight=3, waiting=0))
    assert ids(s.order([api, gpu], idle, CALL)) == ["gpu", "api"]
    queued = signals(gpu=EndpointLoad(in_flight=30, waiting=9))
    assert ids(s.order([api, gpu], queued, CALL)) == ["api", "gpu"]
    # No fresh scrape: saturation is judged on in-flight alone.
    assert ids(s.order([api, gpu], signals(gpu=EndpointLoad(in_flight=200)), CALL)) == [
        "api", "gpu"]


def test_equal_prices_prefer_higher_weight_then_less_busy() -> None:
    a = target("a", 1.0, input_price="1", output_price="1")
    b = target("b", 2.0, input_price="1", output_price="1")
    c = target("c", 2.0, input_price="1", output_price="1")
    sig = signals(b=EndpointLoad(in_flight=5), c=EndpointLoad(in_flight=1))
    assert ids(Cheapest().order([a, b, c], sig, CALL)) == ["c", "b", "a"]


def test_full_ties_rotate() -> None:
    cands = [target("x", input_price="1"), target("y", input_price="1")]
    s = Cheapest()
    assert [s.order(cands, NO_SIGNALS, CALL)[0].id for _ in range(4)] == ["x", "y", "x", "y"]


def test_effective_dated_prices_switch_on_their_day() -> None:
    pricing = [Price(input=5, output=5), Price(input=1, output=1, effective_from="2026-03-01")]
    assert price_on(pricing, date(2026, 2, 28)) == pricing[0]
    assert price_on(pricing, date(2026, 3, 1)) == pricing[1]
    assert price_on([Price(input=1, effective_from="2030-01-01")], date(2026, 1, 1)) is None

    day = [date(2026, 2, 28)]
    s = Cheapest(today=lambda: day[0])
    dated = target("dated", pricing=pricing)
    flat = target("flat", input_price="3", output_price="3")
    assert s.order([dated, flat], NO_SIGNALS, CALL)[0].id == "flat"
    day[0] = date(2026, 3, 1)
    assert s.order([dated, flat], NO_SIGNALS, CALL)[0].id == "dated"

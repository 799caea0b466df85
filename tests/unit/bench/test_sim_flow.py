"""The simulator's flow-control hook on a small cluster: without it a flood's backlog sits in
the backends and the neighbour waits behind it; with it the flood's excess waits at the
gateway (and is shed) while the neighbour's turns go through. Counts only, no timing."""

from __future__ import annotations

import dataclasses

import pytest

from bench.sim.cluster import Outcome, SimConfig, run
from bench.sim.flow import SimFlow, config
from bench.sim.workload import Session, Turn, reply_text, user_text
from gateway.flow.confine import rendezvous
from gateway.flow.cost import request_cost


def _small(flood_load: float) -> SimConfig:
    return dataclasses.replace(config(7, flood_load, 25.0, 5.0), backends=2)


@pytest.mark.parametrize("weight", [1.0, 3.0])
def test_flow_control_keeps_the_flood_out_of_the_backends_queues(weight: float) -> None:
    cfg = _small(1.5)
    plain = run(cfg, "prefix-load")
    # Equal weights too: shares count work, and the neighbour's turns are the cheaper ones.
    flow = SimFlow(24 * 2, classes={"main": (0, weight)}, queue_timeout_s=5.0, headroom=0.75)
    held = run(cfg, "prefix-load", admission=flow)

    def p99(out: Outcome, tenant: str) -> float:
        xs = sorted(r.first_token - r.arrival for r in out.requests if r.tenant == tenant)
        return xs[int(len(xs) * 0.99)]

    # The neighbour is never shed and never waits at the gateway; the flood is shed there.
    assert not any(t == "main" for t, _ in flow.shed)
    assert sum(n for (t, _), n in flow.shed.items() if t == "flood") > 0
    assert all(r.queued_s == 0 for r in held.requests if r.tenant == "main")
    # Without flow control the flood's queue in the backends delays the neighbour several
    # times over; with it the neighbour's tail is a fraction of that.
    assert p99(held, "main") * 3 < p99(plain, "main")


def test_the_simulator_charges_a_turn_what_the_gateway_would() -> None:
    flow = SimFlow(48, kv_weight=3.0)
    flood = Session(0, 0.0, 0, None, [Turn(500, 200, 1.0)], tenant="flood")
    flood.messages.append({"role": "system", "content": "s" * 8000})
    plain = request_cost({"messages": [{"role": "user", "content": user_text(flood, 0)}],
                          "max_tokens": 200}, 256)
    assert plain == pytest.approx(700, abs=2)
    assert flow.cost(flood) == pytest.approx(3 * plain)  # re-reads nothing: 3x
    chat = Session(1, 0.0, 0, None, [Turn(100, 200, 1.0), Turn(100, 200, 1.0)])
    chat.messages += [{"role": "system", "content": "s" * 8000},
                      {"role": "user", "content": user_text(chat, 0)},
                      {"role": "assistant", "content": reply_text(chat, 0)}]
    chat.next_turn = 1
    assert flow.cost(chat) == pytest.approx(  # re-sends 300 tokens for 300 new: plain
        request_cost({"messages": [{"role": "user", "content": user_text(chat, 1)}],
                      "max_tokens": 200}, 256))


def test_the_simulator_confines_the_flood_as_the_gateway_would() -> None:
    # Measured from 25 s: the neighbour, a new tenant, is judged single-use until its later
    # turns have re-read enough of its history (about 20 s here).
    cfg = dataclasses.replace(config(7, 1.5, 55.0, 25.0), backends=4)
    flow = SimFlow(24 * 4, queue_timeout_s=5.0, headroom=0.75, single_use_backends=0.25)
    out = run(cfg, "prefix-load", admission=flow)
    home = rendezvous("flood", [f"gpu-{i}" for i in range(4)], 1)
    # Sent while the neighbour still sends turns (the flood's backlog then gets every backend).
    sent = [r for r in out.requests if r.arrival + r.queued_s < 50.0]
    on = {tenant: sum(f"gpu-{r.backend}" in home for r in sent if r.tenant == tenant)
          for tenant in ("main", "flood")}
    total = {tenant: sum(r.tenant == tenant for r in sent) for tenant in on}
    # Every flood turn goes to its one backend and the neighbour's to the other three.
    assert on["flood"] >= 0.95 * total["flood"] > 0
    assert on["main"] <= 0.05 * total["main"]

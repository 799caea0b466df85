"""Cost-aware spill: self-hosted first while its predicted TTFT is under the threshold, external
beyond when the price allows; each decision over the threshold says why."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.policy.models import CircuitBreaker, Policy
from gateway.policy.spill import Spill as SpillRule
from gateway.routing.base import EndpointLoad
from gateway.routing.health import Health
from gateway.routing.plan import Router
from gateway.routing.spill import Spill, gpu_share_usd, predicted_ttft_s
from gateway.routing.strategies.least_busy import LeastBusy
from tests.unit.routing.targets import chat, ids, signals, target

GPU_A = target("gpu-a", gpu_cost="2")
GPU_B = target("gpu-b", gpu_cost="2")
MINI = target("mini", input_price="0.15", output_price="0.60")
BIG = target("big", input_price="2.50", output_price="10.00")
LOCAL = frozenset({"gpu-a", "gpu-b"})
QUEUED = EndpointLoad(waiting=50, running=8)


def _spill(**rule: object) -> Spill:
    return Spill(SpillRule.model_validate({"ttft_ms": 1000, **rule}), LOCAL, LeastBusy())


def test_a_quiet_pool_keeps_self_hosted_first_and_records_nothing() -> None:
    order, why = _spill().order([MINI, GPU_A, GPU_B], [], signals(), chat())
    assert ids(order)[:2] in (["gpu-a", "gpu-b"], ["gpu-b", "gpu-a"])
    assert ids(order)[2] == "mini" and why is None


def test_a_long_queue_spills_to_the_cheapest_external_and_says_why() -> None:
    sig = signals(**{"gpu-a": QUEUED, "gpu-b": QUEUED})
    order, why = _spill().order([BIG, GPU_A, MINI, GPU_B], [], sig, chat())
    assert ids(order)[:2] == ["mini", "big"]
    assert set(ids(order)[2:]) == LOCAL  # still there as fallbacks
    assert why is not None and why.startswith("spill: predicted TTFT 12500 ms on gpu-")
    assert "> 1000 ms" in why and "mini $" in why and "vs self-hosted $" in why


def test_a_spill_dearer_than_the_ratio_stays_self_hosted_and_says_so() -> None:
    sig = signals(**{"gpu-a": QUEUED})
    order, why = _spill(max_price_ratio=4).order([GPU_A, BIG], [], sig, chat())
    assert ids(order) == ["gpu-a", "big"]
    assert why is not None and why.startswith("held:") and "over 4x" in why
    order, why = _spill(max_price_ratio=4).order([GPU_A, MINI], [], sig, chat())
    assert ids(order) == ["mini", "gpu-a"] and why is not None and why.startswith("spill:")


def test_picks_against_one_snapshot_queue_up_until_the_threshold_spills() -> None:
    s = _spill(request_s=0.5, ttft_ms=2000)
    sig = signals(**{"gpu-a": EndpointLoad(waiting=1, running=1)})
    firsts = [ids(s.order([GPU_A, MINI], [], sig, chat())[0])[0] for _ in range(6)]
    # 1 queued then 0.5 s per own pick ahead: 0.5, 1.0, 1.5, 2.0 s stay; 2.5 s spills.
    assert firsts == ["gpu-a"] * 4 + ["mini"] * 2
    assert ids(s.order([GPU_A, MINI], [], signals(), chat())[0])[0] == "gpu-a"  # new snapshot


def test_nothing_self_hosted_left_goes_external_with_a_reason() -> None:
    order, why = _spill().order([MINI], [], signals(), chat())
    assert ids(order) == ["mini"] and why == "spill: no self-hosted deployment is available"


def test_no_external_the_tenant_may_use_holds_and_names_the_model() -> None:
    sig = signals(**{"gpu-a": QUEUED})
    order, why = _spill(to=["gpt-4o-mini"]).order([GPU_A], [], sig, chat(), ["gpt-4o-mini"])
    assert ids(order) == ["gpu-a"]
    assert why is not None and why.startswith("held:") and "gpt-4o-mini" in why


@pytest.mark.parametrize(("load", "expected"), [
    (EndpointLoad(), 0.0),  # nothing known
    (EndpointLoad(ttft_ewma_s=0.7), 0.7),  # no fresh scrape: the gateway's own measurement
    (EndpointLoad(waiting=0, running=3, ttft_ewma_s=9.0), 0.0),  # no queue: no wait
    (EndpointLoad(waiting=4, running=2, latency_ewma_s=1.0), 2.0),  # 4 × 1 s / 2 slots
    (EndpointLoad(waiting=1, running=8, queue_time_s=3.0), 3.0),  # vLLM's measured wait
    (EndpointLoad(waiting=0, running=4, kv_cache_usage=0.97, latency_ewma_s=2.0), 0.5),
])
def test_predicted_ttft(load: EndpointLoad, expected: float) -> None:
    assert predicted_ttft_s(load, 0, 2.0) == pytest.approx(expected)


def test_the_gpu_share_falls_as_utilisation_rises() -> None:
    d = GPU_A.deployment
    idle = gpu_share_usd(d, EndpointLoad(running=1), 2.0)
    busy = gpu_share_usd(d, EndpointLoad(running=8), 2.0)
    assert idle == pytest.approx(2 / 3600 * 2) and busy == pytest.approx(idle / 8)
    assert gpu_share_usd(MINI.deployment, EndpointLoad(), 2.0) is None


def _policy(**spill: object) -> Policy:
    return Policy.model_validate({
        "providers": {"gpu": {"kind": "vllm", "base_url": "http://gpu:8000/v1"},
                      "oai": {"kind": "openai", "base_url": "http://oai/v1"}},
        "models": {
            "llama": {"deployments": [
                {"provider": "gpu", "model": "llama", "name": "gpu-a", "gpu_cost_per_hour": 2},
                {"provider": "oai", "model": "gpt-4o", "name": "big",
                 "pricing": [{"input": 2.5, "output": 10}]}],
                "spill": {"ttft_ms": 1000, **spill}},
            "mini": {"deployments": [{"provider": "oai", "model": "gpt-4o-mini", "name": "mini",
                                      "pricing": [{"input": 0.15, "output": 0.6}]}]}}})


def test_the_router_spills_to_the_to_models_the_tenant_may_use_and_plans_the_reason() -> None:
    p = _policy(to=["mini"])
    queued = signals(**{"gpu-a": QUEUED})
    router = Router(p, Health(CircuitBreaker()), lambda: queued)
    c = chat()
    c.model = "llama"
    plan = router.plan(c)
    assert ids(list(plan.attempts)) == ["mini", "big", "gpu-a"]
    assert plan.reason is not None and plan.reason.startswith("spill:")
    own = router.plan(c, allowed=frozenset({"llama"}))
    assert ids(list(own.attempts))[0] == "big"  # its own external deployment, not `mini`
    quiet = Router(p, Health(CircuitBreaker()), lambda: signals())
    plan = quiet.plan(c)
    assert ids(list(plan.attempts)) == ["gpu-a", "mini", "big"] and plan.reason is None


def test_the_rule_needs_a_threshold_and_a_model_cannot_spill_to_itself() -> None:
    with pytest.raises(ValidationError, match="ttft_ms"):
        SpillRule.model_validate({})
    from gateway.policy.checks import reference_issues
    data = {"models": {"a": {"deployments": [], "spill": {"ttft_ms": 5, "to": ["a", "zz"]}}}}
    msgs = [i.message for i in reference_issues(data, lines={})]
    assert any("cannot spill to itself" in m for m in msgs)
    assert any("unknown model 'zz'" in m for m in msgs)


class _AsListed:
    """A strategy that keeps the candidates' order (the test decides the first pick)."""

    def order(self, candidates, signals, call):
        return list(candidates)


def test_a_later_self_hosted_deployment_under_the_threshold_goes_first_without_a_spill() -> None:
    s = Spill(SpillRule(ttft_ms=1000), LOCAL, _AsListed())
    sig = signals(**{"gpu-a": QUEUED, "gpu-b": EndpointLoad(waiting=0, running=2)})
    order, why = s.order([GPU_A, GPU_B, MINI], [], sig, chat())
    assert ids(order) == ["gpu-b", "gpu-a", "mini"] and why is None


def test_policy_check_warns_of_a_rule_that_cannot_do_what_it_says() -> None:
    from gateway.policy.load import check_policy

    text = """
providers:
  gpu: {kind: vllm, base_url: http://gpu:8000/v1}
  oai: {kind: openai, base_url: http://oai/v1}
models:
  alone: {spill: {ttft_ms: 500, max_price_ratio: 3}, deployments: [{provider: gpu, model: x}]}
  all-external: {spill: {ttft_ms: 500}, deployments: [{provider: oai, model: y}]}
  fine:
    spill: {ttft_ms: 500, max_price_ratio: 3}
    deployments: [{provider: gpu, model: z, gpu_cost_per_hour: 2}, {provider: oai, model: w}]
"""
    check = check_policy(text, "p.yaml")
    assert check.policy is not None and not check.errors  # warnings never reject
    got = [(w.path, w.message.split(" ")[0]) for w in check.warnings]
    assert got == [("models.alone.spill", "the"), ("models.alone.spill", "max_price_ratio"),
                   ("models.all-external.spill", "no")]


def test_the_gateway_s_own_requests_past_the_batch_are_a_queue_the_scrape_has_not_seen() -> None:
    # Scraped quiet (no queue), but this gateway has sent 20 more than the 48 the deployment
    # was seen running: they wait, 20 x 2 s / 48 slots.
    quiet = EndpointLoad(in_flight=68, waiting=0, running=30, latency_ewma_s=2.0)
    assert predicted_ttft_s(quiet, 0, 2.0) == 0.0  # never seen running more: unknown
    assert predicted_ttft_s(quiet, 0, 2.0, batch=48) == pytest.approx(20 * 2.0 / 48)
    # While it queues, what it runs now is the batch (its KV cache may hold fewer than 48).
    queued = EndpointLoad(in_flight=40, waiting=2, running=30, latency_ewma_s=3.0)
    assert predicted_ttft_s(queued, 0, 2.0, batch=48) == pytest.approx(10 * 3.0 / 30)
    within = EndpointLoad(in_flight=40, waiting=0, running=30, latency_ewma_s=3.0)
    assert predicted_ttft_s(within, 0, 2.0, batch=48) == 0.0


def test_a_stream_of_single_requests_spills_once_the_live_count_passes_the_batch() -> None:
    spill = _spill(ttft_ms=500)
    c = chat()
    # One scrape saw gpu-a run 48 with a short queue (3 x 2 s / 48: under); the next is quiet.
    assert spill.order([GPU_A, MINI], [], signals(**{"gpu-a": EndpointLoad(
        waiting=3, running=48, latency_ewma_s=2.0)}), c)[1] is None
    reasons = []
    for in_flight in (40, 48, 62, 70):  # a new snapshot per request, as the collector makes
        snap = signals(**{"gpu-a": EndpointLoad(in_flight=in_flight, waiting=0, running=20,
                                                latency_ewma_s=2.0)})
        reasons.append(spill.order([GPU_A, MINI], [], snap, c)[1])
    assert reasons[:2] == [None, None]  # within the batch
    assert reasons[2] is not None and reasons[2].startswith("spill:")  # 14 x 2 s / 48
    assert reasons[3] is not None and reasons[3].startswith("spill:")

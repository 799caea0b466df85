"""What makes a routing decision cheap (issue 14) changes nothing it decides: the message cache
gives the fingerprints hashing gives, the fast `EndpointLoad` is the frozen dataclass, and the
router's cached candidate tuple is the list it would build."""

from __future__ import annotations

import random

import pytest

from gateway.call import Call
from gateway.policy.models import CircuitBreaker, Policy
from gateway.routing.base import EndpointLoad, Signals, new_load, new_signals
from gateway.routing.health import Health
from gateway.routing.plan import Router
from gateway.routing.prefix_index import Fingerprints, PrefixIndex, fingerprints

LONG = "Retrieved section on router firmware and its refund policy. " * 90  # ~5.5k chars
NON_ASCII = "Größe und Gewicht des Geräts, naïve Schätzung. " * 120


def _body(*texts: str) -> dict[str, object]:
    roles = ("system", "user", "assistant")
    return {"messages": [{"role": roles[i % 3], "content": t} for i, t in enumerate(texts)]}


@pytest.mark.parametrize("texts", [
    (LONG, "short question"),
    (NON_ASCII, "Frage?", NON_ASCII + "!"),
    (LONG, "q", LONG, "", LONG[:1024], LONG[:1025]),  # one chunk exactly, and one over
])
def test_the_message_cache_gives_the_fingerprints_hashing_gives(texts: tuple[str, ...]) -> None:
    cache = Fingerprints()
    plain = fingerprints(_body(*texts))
    assert fingerprints(_body(*texts), cache=cache) == plain  # filled
    assert fingerprints(_body(*texts), cache=cache) == plain  # read
    # The same text after a different history is another chain: not the cached entry.
    other = fingerprints(_body("another system prompt", *texts[1:]), cache=cache)
    assert other == fingerprints(_body("another system prompt", *texts[1:]))
    assert other.fps[-1] != plain.fps[-1]


def test_the_message_cache_is_bounded_and_keeps_what_is_used() -> None:
    cache = Fingerprints(generation=4)
    bodies = [_body(f"[{i}] " + LONG) for i in range(12)]
    for b in bodies:
        fingerprints(b, cache=cache)
    assert len(cache._new) + len(cache._old) <= 8
    hot = bodies[0]
    for b in bodies:
        assert fingerprints(hot, cache=cache) == fingerprints(hot)
        fingerprints(b, cache=cache)
    assert cache.get(next(iter(cache._new))) is not None


def test_a_fast_load_is_the_named_tuple_its_constructor_makes() -> None:
    fast = new_load(3, 1, 2, 0.5, 4096, 1.5, 0.2, 0.01)
    slow = EndpointLoad(in_flight=3, waiting=1, running=2, kv_cache_usage=0.5,
                        cache_tokens=4096, latency_ewma_s=1.5, ttft_ewma_s=0.2,
                        queue_time_s=0.01)
    assert type(fast) is EndpointLoad and fast == slow and hash(fast) == hash(slow)
    with pytest.raises(AttributeError):
        fast.in_flight = 4  # type: ignore[misc]
    assert fast.kv_cache_usage == 0.5 and fast.queue_time_s == 0.01
    loads = {"a": fast}
    s = new_signals(loads, None, 3, 2, frozenset({"a"}))
    assert type(s) is Signals and s.load("a") is fast
    assert s == Signals(loads=loads, serial=3, since=2, changed=frozenset({"a"}))


def _policy() -> Policy:
    return Policy.model_validate({
        "providers": {"gpu": {"kind": "vllm", "base_url": "http://gpu:8000/v1"}},
        "models": {"m": {"strategy": "prefix-load", "deployments": [
            {"provider": "gpu", "model": "m", "name": f"gpu-{i}", "weight": 0 if i == 2 else 1}
            for i in range(4)]}}})


def test_the_router_hands_the_same_tuple_until_a_deployment_cools_down() -> None:
    clock = [0.0]
    health = Health(CircuitBreaker(failures=1), now=lambda: clock[0])
    router = Router(_policy(), health)
    first = router.candidates("m", frozenset())
    assert type(first) is tuple and router.candidates("m", frozenset()) is first
    assert [t.id for t in first] == ["gpu-0", "gpu-1", "gpu-3"]  # weight 0 is left out
    assert [t.id for t in router.candidates("m", frozenset({"gpu-1"}))] == ["gpu-0", "gpu-3"]
    health.failure("gpu-0", caused_by_backend=True)
    assert [t.id for t in router.candidates("m", frozenset())] == ["gpu-1", "gpu-3"]
    call = Call(endpoint="chat", model="m", body={"messages": [{"role": "user",
                                                                "content": "hi"}]},
                raw=b"", stream=False, request_id="r")
    assert sorted(t.id for t in router.plan(call).attempts) == ["gpu-1", "gpu-3"]
    health.success("gpu-0")
    assert router.candidates("m", frozenset()) is first
    assert sorted(t.id for t in router.plan(call).attempts) == ["gpu-0", "gpu-1", "gpu-3"]


def _groups_by_walking(index: PrefixIndex, fps: list[int], tokens: list[int], candidates: int,
                       replies: frozenset[int]) -> list[tuple[int, int]]:
    """`PrefixIndex.groups` as it was before bisection: one step per chunk."""
    out: list[tuple[int, int]] = []
    alive, acc, started = candidates, 0, False
    for i, fp in enumerate(fps):
        held = index._owners.get(fp, 0) & alive
        if held != alive:
            if not held:
                if started and i in replies:
                    acc += tokens[i]
                    continue
                break
            if started:
                out.append((alive ^ held, acc))
            alive = held
        started = True
        acc += tokens[i]
    if started:
        out.append((alive, acc))
    return out


def test_bisecting_the_index_finds_what_walking_it_finds() -> None:
    rng = random.Random(5)
    index = PrefixIndex(4000)
    ids = [f"d{i}" for i in range(10)]
    heads = [[rng.getrandbits(64) for _ in range(12)] for _ in range(6)]
    for step in range(3000):
        head = rng.choice(heads)
        fps = head[: rng.randint(1, 12)] + [rng.getrandbits(64) for _ in range(rng.randint(0, 3))]
        tokens = [rng.randint(1, 256) for _ in fps]
        replies = frozenset(i for i in range(len(fps)) if rng.random() < 0.2)
        cands = index.mask(rng.sample(ids, rng.randint(1, 10)))
        assert index.groups(fps, tokens, cands, replies) == _groups_by_walking(
            index, fps, tokens, cands, replies), step
        index.record(rng.choice(ids), fps, tokens, rng.choice((None, 1500, 4000)))

"""`prefix-load` makes exactly the decisions it made before its decision time was cut (issue
14): a fixed, seeded workload's full orders hash to the digest recorded with the earlier code.

The workload exercises every input the score reads: a live `SignalCollector` (begins, ends,
scrapes with queues and KV use over the knee, cache sizes small enough to evict), one snapshot
reused by many calls (own picks, `MAX_UNSEEN`), candidate lists that change (a cooldown
drops one, a drained one has weight 0), sessions, assistant turns, shared system prompts and
documents, non-ASCII text, content lists and completions prompts. A change that moves one
decision — a tie broken with a different random draw, a float summed in another order — fails
it; the digest is only re-recorded when a change of choices is meant (and the simulator's
tables in docs/routing.md are re-run with it).
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

from gateway.call import Call
from gateway.policy.models import Deployment
from gateway.providers.base import Target
from gateway.routing.base import EndpointLoad, Signals
from gateway.routing.prefix_heat import HOT_REFRESHES
from gateway.routing.signals import EngineMetrics, SignalCollector
from gateway.routing.strategies.prefix_load import QUEUE_SHARE, PrefixLoad

# sha256 of every decision's order (ids joined), recorded with the code before issue 14,
# with the weight of a request ahead fixed at QUEUE_TOKENS (512) as it then was.
DIGEST_FIXED = "5f880f44b96d770115041760f29350f5b8d7c9d00ab6d5c984ebc8db498df6e4"
# The same with the weight learnt from recent prefills (QUEUE_SHARE, issue 14 part B): meant
# to change decisions; docs/routing.md's simulator tables were re-run with it.
# Both with hot prefixes off (`hot_refreshes=0`), as before they were spread (issue 14).
DIGEST = "35cc37c7bb53c8646bc86844b8d6edd7996397fb236ce11fe79c1cd0bd27c0e9"
# The defaults: a prefix most recent prompts start with counts as held by every candidate
# (`gateway.routing.prefix_heat`): meant to change decisions; docs/routing.md's simulator
# tables were re-run with it.
DIGEST_HOT = "3b51b5e55e913d4fd57fe27ba36e9ff33a6cad46352929fe25b269cda2ae03a1"

_WORDS = ("router", "latency", "invoice", "refund", "kernel", "tensor", "policy", "token",
          "größe", "naïve")


def _text(rng: random.Random, chars: int, ascii_only: bool = True) -> str:
    words = _WORDS[:8] if ascii_only else _WORDS
    out: list[str] = []
    n = 0
    while n < chars:
        w = rng.choice(words)
        out.append(w)
        n += len(w) + 1
    return " ".join(out)


def _workload(rng: random.Random, n: int) -> list[Call]:
    systems = [_text(rng, rng.randint(500, 7000)) for _ in range(6)]
    docs = [_text(rng, rng.randint(9000, 26000), ascii_only=i % 3 != 0) for i in range(12)]
    histories: dict[str, list[dict[str, Any]]] = {}
    calls = []
    for i in range(n):
        kind = rng.random()
        session: str | None = None
        body: dict[str, Any]
        if kind < 0.45:  # multi-turn chat, a session continuing its own history
            session = f"s{rng.randrange(25)}"
            msgs = histories.setdefault(session, [
                {"role": "system", "content": rng.choice(systems)}])
            msgs.append({"role": "user", "content": _text(rng, rng.randint(50, 1500))})
            body = {"model": "m", "messages": list(msgs)}
            msgs.append({"role": "assistant", "content": _text(rng, rng.randint(100, 2500))})
            if len(msgs) > 12:
                del msgs[1:3]
        elif kind < 0.75:  # single-turn RAG over shared documents
            body = {"model": "m", "messages": [
                {"role": "system", "content": rng.choice(docs)},
                {"role": "user", "content": [{"type": "text", "text": _text(rng, 300)}]}]}
        elif kind < 0.9:
            body = {"model": "m", "messages": [
                {"role": "system", "content": rng.choice(systems)},
                {"role": "user", "content": _text(rng, rng.randint(10, 900))}]}
        else:
            body = {"model": "m", "prompt": rng.choice(systems)[: rng.randint(1, 5000)]}
        if rng.random() < 0.1 and session is None:
            session = f"u{rng.randrange(8)}"
        calls.append(Call(endpoint="chat", model="m", body=body, raw=b"", stream=True,
                          request_id=str(i), session=session))
    return calls


def _targets(n: int) -> list[Target]:
    return [Target("m", Deployment(provider="p", model="m", name=f"gpu-{i}",
                                   weight=0.0 if i == 13 else 1.0), "p") for i in range(n)]


def decisions(queue_share: float = QUEUE_SHARE, hot_refreshes: float = 0.0) -> list[str]:
    rng = random.Random(14)
    targets = _targets(16)
    subsets = [targets, targets[:12], [t for t in targets if t.id != "gpu-3"], targets[4:]]
    collector = SignalCollector()
    for i, t in enumerate(targets):
        collector.observe(t.id, EngineMetrics(
            waiting=rng.randint(0, 3), running=4, kv_cache_usage=rng.random(),
            cache_tokens=(6000, 20000, None)[i % 3]))
    fixed = Signals(loads={t.id: EndpointLoad(in_flight=rng.randint(0, 8),
                                              kv_cache_usage=rng.choice((None, 0.95, 0.3)))
                           for t in targets[::2]})
    strategy = PrefixLoad(seed=7, cache_tokens=30000, queue_share=queue_share,
                          hot_refreshes=hot_refreshes)
    in_flight: list[str] = []
    out = []
    for i, call in enumerate(_workload(rng, 900)):
        cands = subsets[(i // 50) % len(subsets)]
        live = (i // 100) % 3 != 2
        sig = collector.snapshot() if live else fixed
        order = strategy.order(cands, sig, call)
        out.append(",".join(t.id for t in order))
        if live:
            collector.begin(order[0].id)
            in_flight.append(order[0].id)
            if len(in_flight) > 40 or rng.random() < 0.3:
                collector.end(in_flight.pop(rng.randrange(len(in_flight))), ok=True)
        if i % 97 == 0:
            t = rng.choice(targets)
            collector.observe(t.id, EngineMetrics(waiting=rng.randint(0, 6), running=2,
                                                  kv_cache_usage=rng.random()))
    return out


def test_decisions_are_the_recorded_ones() -> None:
    orders = decisions()
    assert len(set(o.split(",")[0] for o in orders)) > 8  # the workload spreads
    assert hashlib.sha256("\n".join(orders).encode()).hexdigest() == DIGEST


def test_a_fixed_queue_weight_makes_the_decisions_made_before_it_was_learnt() -> None:
    orders = decisions(queue_share=0.0)
    assert hashlib.sha256("\n".join(orders).encode()).hexdigest() == DIGEST_FIXED


def test_hot_prefixes_make_the_recorded_decisions() -> None:
    orders = decisions(hot_refreshes=HOT_REFRESHES)
    assert hashlib.sha256("\n".join(orders).encode()).hexdigest() == DIGEST_HOT
    assert orders != decisions()  # the workload has hot prefixes: the rule is exercised

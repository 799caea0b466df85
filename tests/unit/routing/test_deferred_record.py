"""`PrefixIndex.record_later`: the routing decision's record applied after it (from an event
loop callback, or before the index's next read), leaving every read exactly what an immediate
`record` would have."""

from __future__ import annotations

import asyncio
import random

from gateway.routing.prefix_index import PrefixIndex
from gateway.routing.strategies.prefix_load import PrefixLoad
from tests.unit.routing.targets import chat, signals, target

FPS_A, TOK_A = [1, 2, 3], [100, 100, 100]
FPS_B, TOK_B = [7, 8], [150, 150]


def state(index: PrefixIndex) -> tuple[object, ...]:
    """Everything a read can see: owners, each LRU in order, tokens, capacities, bits."""
    index.apply()
    return (dict(index._owners), list(index._ids),
            {d: (list(ep.lru.items()), ep.tokens, ep.capacity, ep.bit)
             for d, ep in index._endpoints.items()})


def test_a_read_right_after_a_record_sees_it() -> None:
    index = PrefixIndex(1000)
    index.record_later("a", FPS_A, TOK_A)
    assert index.pending == 1
    assert index.matched(FPS_A, TOK_A, {"a", "b"}) == {"a": 300}
    assert index.pending == 0
    index.record_later("b", FPS_A, TOK_A, 5000)
    assert index.cached_tokens("b") == 300
    index.record_later("b", FPS_B, TOK_B)
    assert index.groups(FPS_B, TOK_B, index.mask(["a", "b"])) == [(index.bit("b"), 300)]


def test_the_shared_view_takes_pending_records_with_the_others() -> None:
    index = PrefixIndex(1000)
    index.outbox = []
    index.record("a", FPS_A, TOK_A)
    index.record_later("b", FPS_B, TOK_B)
    assert index.outbox == [("a", FPS_A, TOK_A), ("b", FPS_B, TOK_B)]
    index.record_later("a", FPS_B, TOK_B)
    index.outbox = None  # replaced: the pending one went to the outbox it belonged to
    assert index.pending == 0 and index.cached_tokens("a") == 600


def test_the_loop_callback_applies_it_and_leaves_nothing_pending() -> None:
    index = PrefixIndex(1000)

    async def main() -> None:
        index.record_later("a", FPS_A, TOK_A)
        assert index.pending == 1  # not inside the decision
        await asyncio.sleep(0)  # one loop turn: the callback ran
        assert index.pending == 0
        assert index._endpoints["a"].tokens == 300  # applied, not by a read

    asyncio.run(main())
    assert index.pending == 0 and index.cached_tokens("a") == 300


def test_two_records_in_one_loop_turn_are_both_applied_in_order() -> None:
    immediate = PrefixIndex(400)  # B evicts what of A does not fit, oldest first
    immediate.record("a", FPS_A, TOK_A)
    immediate.record("a", FPS_B, TOK_B)
    deferred = PrefixIndex(400)
    scheduled = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        call_soon = loop.call_soon

        def counting(*args: object, **kw: object) -> asyncio.Handle:
            if args[0] == deferred._apply_soon:
                scheduled.append(args[0])
            return call_soon(*args, **kw)  # type: ignore[arg-type]

        loop.call_soon = counting  # type: ignore[method-assign]
        deferred.record_later("a", FPS_A, TOK_A)
        deferred.record_later("a", FPS_B, TOK_B)
        assert deferred.pending == 2
        await asyncio.sleep(0)
        assert deferred.pending == 0
        deferred.record_later("a", FPS_A, TOK_A)  # a new batch schedules a new callback
        await asyncio.sleep(0)
        assert deferred.pending == 0

    asyncio.run(main())
    assert len(scheduled) == 2  # once per pending batch, not per record
    immediate.record("a", FPS_A, TOK_A)
    assert state(deferred) == state(immediate)


def test_without_a_loop_the_next_read_applies_them() -> None:
    index = PrefixIndex(1000)
    index.record_later("a", FPS_A, TOK_A)
    index.record_later("b", FPS_A, TOK_A)
    index.record("c", FPS_B, TOK_B)  # after the pending ones, as if they were immediate
    assert index.pending == 0
    assert index.ids(index.mask(["a", "b", "c"])) == ["a", "b", "c"]  # bits as handed out


def test_random_records_and_reads_see_what_immediate_records_leave() -> None:
    rng = random.Random(5)
    immediate, deferred = PrefixIndex(2000), PrefixIndex(2000)
    for _ in range(2000):
        did = f"d{rng.randrange(4)}"
        head = rng.randrange(3)
        fps = [head * 100 + i for i in range(rng.randrange(1, 8))]
        tokens = [rng.randrange(50, 400) for _ in fps]
        if rng.random() < 0.6:
            immediate.record(did, fps, tokens)
            deferred.record_later(did, fps, tokens)
        else:
            cands = {f"d{i}" for i in range(4)}
            assert deferred.matched(fps, tokens, cands) == immediate.matched(fps, tokens, cands)
    assert state(deferred) == state(immediate)


def test_prefix_load_records_after_the_decision_in_a_loop() -> None:
    cands = [target(f"gpu-{i}") for i in range(4)]
    strategy = PrefixLoad(seed=1)
    index = strategy._index
    doc = "a retrieved document, " * 300

    async def main() -> None:
        first = strategy.order(cands, signals(), chat(doc, "q1"))[0].id
        assert index.pending == 1  # the decision left it for the loop
        await asyncio.sleep(0)
        assert index.pending == 0 and index.cached_tokens(first) > 0
        assert strategy.order(cands, signals(), chat(doc, "q2"))[0].id == first

    asyncio.run(main())

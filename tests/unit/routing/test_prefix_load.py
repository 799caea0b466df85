"""`prefix-load`: the estimated cached prefix against load, ties by power of two choices, and
no herding when many requests are planned against one signals snapshot."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from gateway.routing.base import NO_SIGNALS, EndpointLoad, Signals
from gateway.routing.prefix_heat import HEAT_WINDOW, HOT_REFRESHES, PrefixHeat
from gateway.routing.prefix_index import PrefixIndex, fingerprints
from gateway.routing.registry import make_strategy
from gateway.routing.signals import engine_metrics
from gateway.routing.strategies.prefix_load import QUEUE_SHARE, QUEUE_TOKENS, PrefixLoad
from tests.unit.routing.targets import chat, completion, ids, signals, target

CANDS = [target(f"gpu-{i}") for i in range(8)]
DOC = "Retrieved document about ACME router firmware, section {0}. " * 200  # ~12k chars


def _doc(i: int) -> str:
    return f"[doc {i}] " + DOC.format(i)


def fresh(**loads: EndpointLoad) -> Signals:
    """A new snapshot object, as SignalCollector hands out after every begin/end."""
    return signals(**loads)


def test_registered_under_its_policy_name() -> None:
    assert isinstance(make_strategy("prefix-load", 1), PrefixLoad)


def test_a_long_shared_prefix_goes_back_where_it_was_sent() -> None:
    s = PrefixLoad(seed=3)
    homes = {}
    for d in range(20):
        homes[d] = s.order(CANDS, fresh(), chat(_doc(d), "first question"))[0].id
    for d in range(20):
        for q in range(3):
            assert s.order(CANDS, fresh(), chat(_doc(d), f"question {q}"))[0].id == homes[d]
    assert len(set(homes.values())) >= 5  # different documents spread over the pool


def test_load_wins_over_a_cached_prefix_worth_less_than_the_queue_ahead() -> None:
    prefix_tokens = sum(fingerprints(chat(_doc(1), "q").body)[1])
    ahead = prefix_tokens // QUEUE_TOKENS + 2
    for queued, stays in ((ahead, False), (2, True)):
        s = PrefixLoad(seed=1)
        home = s.order(CANDS, fresh(), chat(_doc(1), "q"))[0].id
        loads = fresh(**{home: EndpointLoad(in_flight=queued // 2, waiting=queued - queued // 2)})
        # More requests ahead than the cached prefix is worth: elsewhere; fewer: stay.
        assert (s.order(CANDS, loads, chat(_doc(1), "q2"))[0].id == home) is stays


def _after(strategy: PrefixLoad, questions: int, new_docs: bool) -> str:
    """Route `questions` calls (about one cached document, or each a new document), then
    return where the document asked about next is cached."""
    home = strategy.order(CANDS, fresh(), chat(_doc(1), "q"))[0].id
    for i in range(questions):
        strategy.order(CANDS, fresh(), chat(_doc(100 + i) if new_docs else _doc(1), f"q{i}"))
    return home


def test_a_request_ahead_weighs_what_recent_prompts_had_to_prefill() -> None:
    """Questions about a cached document prefill a few tokens each: one request ahead then
    delays the next one by little, and the document stays where it is cached against a queue
    that a weight of QUEUE_TOKENS a request would move it away from. (Hot prefixes off: one
    document asked 61 times in a row is hot, see the tests of `prefix_heat` below.)"""
    prefix_tokens = sum(fingerprints(chat(_doc(1), "q").body)[1])
    ahead = prefix_tokens // QUEUE_TOKENS + 2
    for share, stays in ((QUEUE_SHARE, True), (0.0, False)):
        s = PrefixLoad(seed=1, queue_share=share, hot_refreshes=0)
        home = _after(s, 60, new_docs=False)
        loads = fresh(**{home: EndpointLoad(in_flight=ahead)})
        assert (s.order(CANDS, loads, chat(_doc(1), "next"))[0].id == home) is stays


def test_long_prefills_keep_a_request_ahead_at_queue_tokens_at_most() -> None:
    prefix_tokens = sum(fingerprints(chat(_doc(1), "q").body)[1])
    s = PrefixLoad(seed=1)
    home = _after(s, 60, new_docs=True)  # ~3k tokens each to prefill: capped at QUEUE_TOKENS
    loads = fresh(**{home: EndpointLoad(in_flight=prefix_tokens // QUEUE_TOKENS + 2)})
    assert s.order(CANDS, loads, chat(_doc(1), "next"))[0].id != home


def test_full_kv_cache_is_avoided_when_nothing_is_cached() -> None:
    s = PrefixLoad(seed=2)
    full = {t.id: EndpointLoad(kv_cache_usage=0.99) for t in CANDS[:7]}
    picks = {s.order(CANDS, fresh(**full), chat("sys", f"u{i}"))[0].id for i in range(10)}
    assert picks == {CANDS[7].id}


def test_a_burst_against_one_snapshot_spreads_evenly() -> None:
    """50 requests planned before any attempt starts see one snapshot with every deployment
    idle and tied: the own picks are counted, so no deployment gets more than its share."""
    s = PrefixLoad(seed=7)
    snap = fresh()
    counts = Counter(s.order(CANDS, snap, chat("same system", "same question"))[0].id
                     for _ in range(50))
    assert set(counts) == {t.id for t in CANDS}
    assert max(counts.values()) - min(counts.values()) <= 1


def test_the_own_count_restarts_with_a_new_snapshot() -> None:
    s = PrefixLoad(seed=7)
    snap = fresh()
    first = s.order(CANDS[:2], snap, chat("x", "y"))[0].id
    # Same snapshot: the pick is counted, the other one is now less loaded.
    assert s.order(CANDS[:2], snap, chat("x", "y"))[0].id != first
    # A new snapshot reports the started attempts itself; the own count is dropped.
    loads = fresh(**{first: EndpointLoad(in_flight=1)})
    assert s.order(CANDS[:2], loads, chat("x", "y"))[0].id != first


def test_ties_are_broken_at_random_not_by_list_position() -> None:
    s = PrefixLoad(seed=11)
    firsts = Counter(s.order(CANDS, fresh(), chat("", f"distinct {i}"))[0].id
                     for i in range(400))
    assert set(firsts) == {t.id for t in CANDS}
    assert min(firsts.values()) >= 25  # 50 each on average


def test_weight_zero_is_never_chosen_and_order_is_a_permutation() -> None:
    drained = target("drained", weight=0)
    s = PrefixLoad(seed=1)
    order = s.order([drained, *CANDS[:3]], NO_SIGNALS, chat("s", "u"))
    assert sorted(ids(order)) == sorted(ids(CANDS[:3]))


def test_completions_and_token_prompts_are_scored_too() -> None:
    s = PrefixLoad(seed=1)
    long_prompt = _doc(5)
    home = s.order(CANDS, fresh(), completion(long_prompt + " end A"))[0].id
    assert s.order(CANDS, fresh(), completion(long_prompt + " end B"))[0].id == home
    tokens = list(range(3000))
    home = s.order(CANDS, fresh(), completion(tokens))[0].id
    assert s.order(CANDS, fresh(), completion(tokens))[0].id == home


@given(st.lists(st.integers(0, 20), min_size=1, max_size=8), st.text(max_size=50))
def test_order_is_always_a_permutation_of_the_candidates(loads: list[int], text: str) -> None:
    cands = CANDS[:len(loads)]
    sig = Signals(loads={t.id: EndpointLoad(in_flight=n) for t, n in zip(cands, loads,
                                                                           strict=True)})
    order = PrefixLoad(seed=0).order(cands, sig, chat(text, text))
    assert sorted(ids(order)) == sorted(ids(cands))


# ---- the index ---------------------------------------------------------------------------


def test_fingerprints_are_shared_exactly_as_far_as_the_prompts_agree() -> None:
    a = fingerprints(chat(_doc(1), "question A").body)[0]
    b = fingerprints(chat(_doc(1), "question B").body)[0]
    c = fingerprints(chat(_doc(2), "question A").body)[0]
    assert a[:-1] == b[:-1] and a[-1] != b[-1]
    assert not set(a) & set(c)  # chained: a different head changes every later fingerprint


def test_index_matches_only_leading_runs_and_forgets_least_recent_first() -> None:
    idx = PrefixIndex(cache_tokens=1000)
    idx.record("a", [1, 2, 3], [100, 100, 100])
    idx.record("b", [1, 9], [100, 100])
    assert idx.matched([1, 2, 3, 4], [100] * 4, {"a", "b"}) == {"a": 300, "b": 100}
    assert idx.matched([1, 9, 3], [100] * 3, {"a", "b"}) == {"a": 100, "b": 200}
    assert idx.matched([1, 2], [100, 100], {"b"}) == {"b": 100}  # candidates only
    # Over capacity: the least recently recorded chunks go, tails before heads.
    idx.record("a", [5, 6, 7, 8, 9, 10, 11, 12], [100] * 8)
    assert idx.cached_tokens("a") <= 1000
    assert idx.matched([1, 2, 3], [100] * 3, {"a"}) == {"a": 200}  # 3 went first
    assert idx.matched([5, 6], [100] * 2, {"a"}) == {"a": 200}


def test_the_cache_size_comes_from_vllm_cache_config_info() -> None:
    text = (
        '# TYPE vllm:cache_config_info gauge\n'
        'vllm:cache_config_info{block_size="16",cache_dtype="auto",num_gpu_blocks="2048",'
        'engine="0"} 1.0\n'
        'vllm:cache_config_info{block_size="16",num_gpu_blocks="1024",engine="1"} 1.0\n'
        'vllm:cache_config_info{block_size="x",num_gpu_blocks="7"} 1.0\n'
        'vllm:num_requests_waiting{model_name="m"} 2\n')
    m = engine_metrics(text, "m")
    assert m.cache_tokens == (2048 + 1024) * 16 and m.waiting == 2
    assert engine_metrics("vllm:num_requests_waiting 1\n").cache_tokens is None


def test_a_small_reported_cache_forgets_prefixes_sooner() -> None:
    """With the backend reporting room for ~one document, the second document evicts the
    first from the estimate, and the first is no longer drawn back to its old endpoint."""
    doc_tokens = sum(fingerprints(chat(_doc(0), "q").body)[1])
    small = {t.id: EndpointLoad(cache_tokens=doc_tokens + 10) for t in CANDS[:2]}
    s = PrefixLoad(seed=5)
    home = s.order(CANDS[:2], fresh(**small), chat(_doc(0), "q"))[0].id
    # The next documents go to the same endpoint while they tie on load (new snapshots)...
    for d in range(1, 4):
        loads = fresh(**{k: EndpointLoad(cache_tokens=v.cache_tokens,
                                         in_flight=0 if k == home else 1)
                         for k, v in small.items()})
        assert s.order(CANDS[:2], loads, chat(_doc(d), "q"))[0].id == home
    assert s._index.cached_tokens(home) <= doc_tokens + 10
    fps, tokens, _ = fingerprints(chat(_doc(0), "q").body)
    assert s._index.matched(fps, tokens, {home}) == {}


def test_a_reply_never_routed_counts_as_cached_where_its_conversation_was() -> None:
    s = PrefixLoad(seed=2)
    turn1 = chat("You are a helpful agent. " * 40, "my router reboots")
    home = s.order(CANDS, fresh(), turn1)[0].id
    turn2 = chat("You are a helpful agent. " * 40, "my router reboots")
    turn2.body["messages"] += [{"role": "assistant", "content": "Try a reset. " * 80},
                               {"role": "user", "content": "still broken"}]
    fps, tokens, replies = fingerprints(turn2.body)
    got = s._index.matched(fps, tokens, {t.id for t in CANDS}, replies)
    reply_tokens = sum(tokens[i] for i in replies)
    assert got[home] == sum(tokens[:-1]) and reply_tokens > 0
    # Without the reply rule the match would stop before the reply.
    assert s._index.matched(fps, tokens, {t.id for t in CANDS})[home] == sum(tokens[:-1]) - \
        reply_tokens


def test_a_prefix_most_prompts_start_with_is_spread_by_load() -> None:
    """A system prompt shared by every request, cached where the first went: held there
    alone, it would keep every request there while the pool is idle; hot (`prefix_heat`),
    it counts as held everywhere and the requests spread."""
    system = "You are the support agent of ACME routers. " * 100  # ~1.1k tokens
    for refreshes, spread in ((HOT_REFRESHES, True), (0.0, False)):
        s = PrefixLoad(seed=4, hot_refreshes=refreshes)
        picks = Counter(s.order(CANDS, fresh(), chat(system, f"question {i}"))[0].id
                        for i in range(64))
        assert (len(picks) == len(CANDS)) is spread
        if not spread:
            assert len(picks) == 1


def test_a_document_among_many_is_not_hot_and_goes_back_where_it_was_sent() -> None:
    s = PrefixLoad(seed=6)
    homes = {d: s.order(CANDS, fresh(), chat(_doc(d), "first"))[0].id for d in range(300)}
    assert all(s.order(CANDS, fresh(), chat(_doc(d), "again"))[0].id == homes[d]
               for d in range(0, 300, 7))


def test_heat_counts_shares_of_recent_decisions() -> None:
    heat = PrefixHeat(refreshes=64)
    # One prefix in every decision, prefills of 100 tokens, caches of 131k: each backend
    # would see it 1,300 times per turn-over; but shares are of a window at least, so the
    # first few decisions alone do not make it hot.
    seen = [heat.hot(1, 1000, 100.0, [131_072], 131_072) for _ in range(100)]
    assert not seen[0] and all(seen[60:])
    # 1 decision in 150 (a RAG corpus): about 9 times per turn-over, not hot.
    rare = PrefixHeat(refreshes=64)
    assert not any(rare.hot(d % 150, 6000, 100.0, [None], 131_072) for d in range(5000))
    # Longer than 64 mean prefills (6,400 tokens here): not hot however popular, since a
    # few such prefixes could not all be held everywhere.
    long = PrefixHeat(refreshes=64)
    assert not any(long.hot(1, 6401, 100.0, [131_072], 131_072) for _ in range(2000))
    assert PrefixHeat(refreshes=64).hot(1, 6400, 100.0, [131_072], 131_072) is False  # 1st
    fits = PrefixHeat(refreshes=64)
    assert [fits.hot(1, 6400, 100.0, [131_072], 131_072) for _ in range(2000)][-1]
    # Nothing is hot before a prefill is learnt, or with the rule off.
    assert not PrefixHeat(refreshes=64).hot(1, 1000, None, [None], 131_072)
    assert not PrefixHeat(refreshes=0).hot(1, 1000, 100.0, [None], 131_072)


def test_heat_forgets_prefixes_seen_once() -> None:
    heat = PrefixHeat()
    for i in range(10 * HEAT_WINDOW):
        heat.hot(i, 500, 100.0, [None], 131_072)  # every prompt a new conversation's head
    assert len(heat._counts) <= HEAT_WINDOW

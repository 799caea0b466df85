"""The shared view's pure parts and what it relies on: fingerprints equal in every process,
the collector adding other replicas' in-flight counts and rebuilding only what changed, the
batching of routing records, and payloads from an unknown replica never raising."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from gateway.routing.prefix_index import PrefixIndex, fingerprints
from gateway.routing.shared_view import (
    batch,
    decode_records,
    encode_loads,
    encode_records,
    remote_loads,
)
from gateway.routing.signals import EXTRAPOLATE, SignalCollector
from gateway.routing.strategies.prefix_load import PrefixLoad
from tests.unit.routing.targets import chat, target

BODY = {"messages": [{"role": "system", "content": "Router manual. " * 300},
                     {"role": "user", "content": "héllo — non-ASCII text too ✓ " * 50},
                     {"role": "assistant", "content": "ok"}]}


def test_fingerprints_are_the_same_in_every_process() -> None:
    """Python's `hash()` is salted per process; the fingerprints must not be, or two replicas
    could never compare what they routed."""
    code = ("import json, sys; from gateway.routing.prefix_index import fingerprints; "
            "print(json.dumps(fingerprints(json.loads(sys.argv[1])).fps))")
    outs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        outs.append(json.loads(subprocess.run(
            [sys.executable, "-c", code, json.dumps(BODY)], env=env, capture_output=True,
            text=True, check=True).stdout))
    assert outs[0] == outs[1] == fingerprints(BODY).fps


def test_non_ascii_text_is_chunked_by_characters() -> None:
    p = fingerprints({"prompt": "é" * 2048 + "x"})
    assert len(p.fps) == 3 and p.tokens == [256, 256, 1]


def test_the_collector_adds_other_replicas_in_flight_and_rebuilds_only_what_changed() -> None:
    c = SignalCollector()
    c.begin("a")
    c.begin("b")
    c.set_remote({"a": 3, "z": 2}, others=3)
    first = c.snapshot()
    assert first.load("a").in_flight == 4 and first.load("z").in_flight == 2
    assert first.prefixes is c.prefixes
    # Between exchanges the others are assumed to follow this replica's own moves, in part.
    c.begin("a")
    second = c.snapshot()
    assert second.load("a").in_flight == 2 + 3 + round(EXTRAPOLATE * 3)
    assert second.load("b") is first.load("b")  # unchanged: the same object
    c.end("a", ok=True)
    c.end("a", ok=True)
    # Requests ending here suggest theirs end too, down to nothing, never below.
    assert c.snapshot().load("a").in_flight == max(0, 3 - round(EXTRAPOLATE * 3))
    c.set_remote({}, 0)  # the view went stale: this replica's own counts alone
    assert c.snapshot().load("a").in_flight == 0 and c.snapshot().load("z").in_flight == 0


def test_prefix_load_sees_a_load_change_through_a_reused_snapshot() -> None:
    """prefix-load reuses its scores for deployments whose EndpointLoad object did not change;
    a begin on one deployment must still move the next pick."""
    c = SignalCollector()
    cands = [target("x"), target("y")]
    s = PrefixLoad(seed=1)
    picks = []
    for i in range(6):
        first = s.order(cands, c.snapshot(), chat("", f"distinct {i}"))[0].id
        c.begin(first)
        picks.append(first)
    assert picks.count("x") == picks.count("y") == 3


def test_records_are_published_once_per_prompt_and_deployment() -> None:
    idx = PrefixIndex(10_000)
    idx.outbox = []
    for d in ("a", "a", "b", "a"):
        idx.record(d, [1, 2], [10, 10])
    idx.record("a", [1, 3], [10, 10])
    got = batch(idx.outbox)
    assert sorted((r[0], tuple(r[1])) for r in got) == [("a", (1, 2)), ("a", (1, 3)),
                                                        ("b", (1, 2))]
    assert decode_records(encode_records(got)) == [(d, list(f), list(t)) for d, f, t in got]
    # Another replica's records are applied without being published again.
    idx.outbox = []
    idx.record("c", [1, 2], [10, 10], publish=False)
    assert idx.outbox == [] and idx.matched([1, 2], [10, 10], {"c"}) == {"c": 20}


def test_remote_loads_sum_the_others_and_skip_their_own() -> None:
    payloads = {"me": encode_loads({"a": 5}), "r1": encode_loads({"a": 1, "b": 2}),
                "r2": encode_loads({"a": 2}), "bad": b"\xc1not msgpack"}
    assert remote_loads("me", payloads) == {"a": 3, "b": 2}


@given(st.dictionaries(st.text(max_size=8), st.binary(max_size=64), max_size=5))
def test_any_payload_from_an_unknown_replica_never_raises(payloads: dict[str, bytes]) -> None:
    got = remote_loads("me", payloads)
    assert all(isinstance(v, int) and v > 0 for v in got.values())

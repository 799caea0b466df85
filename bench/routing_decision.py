"""`python -m bench.routing_decision`: time one routing decision (`Strategy.order`) for 16
endpoints with a warm prefix index, per strategy, and print p50/p99 in µs.

Not a test (no timed assertions in the suite): run it on a quiet machine. Prompts are a
multi-turn chat (1.5k-token system prompt, three turns: ~2.5k tokens) and, separately, a
single-turn RAG prompt of 6k tokens; the characters-per-token ratio is 4. Every timed
decision gets a call object of its own, as a request does, so nothing computed from the body
carries over from the warm-up but what a running gateway keeps too: the prefix index, and
the fingerprints of the long messages it has seen (the 8 system prompts, the 32 documents).

`--instructions` counts instructions per decision under callgrind instead of timing them (a
shared machine cannot move that figure): the process warms up, its counters are zeroed, it
makes `-n` decisions per row and the counters are dumped. `-n` is also the number of chat
sessions and RAG questions: with 5000 a chat session's history has left every backend's
cache (as modelled) before it comes back, so each decision records its turns anew and evicts
as much; with 300 it has not.

The collector runs as `gateway serve` sets it (`SERVER_GC`) and the collections that ran
inside timed decisions are printed. Before the table, `noise` is how often a busy loop on
this core lost 5 µs or more (interrupts, other processes, the hypervisor) and for how long: a
p99 of decisions that each take ~10 µs cannot be read below the machine's own tail. "gap
odds" is the chance that one decision of the row's p50 meets such a gap (rate × p50): near
1 % and above, the p99 is the gaps' length, and the p98 is the decision's own tail.

`prefix-load` records its pick in the prefix index after the decision (`PrefixIndex.
record_later`: from an event-loop callback once the request has gone on). The timed decisions
run in an event loop (uvloop's where installed, as `gateway serve` runs), each followed by one
loop turn (`asyncio.sleep(0)`): the decision pays for scheduling the callback, and the record
is counted apart, as "record, applied after" (timed as `PrefixIndex.apply`, called just
before that loop turn, where the callback would call it: a compiled index takes no wrapper
around its callback; `--instructions`: the row's records replayed, in the same order, on a second
index built by the same steps as the row's). The core does that work all the same: the total is the
sum. The decision's instructions are the row's total minus the replay and minus as many
empty loop turns (counted too), so the loop's own cost of running the callback is counted as
the decision's, not the record's.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from gateway.call import Call
from gateway.compiled import status
from gateway.policy.models import Deployment
from gateway.providers.base import Target
from gateway.routing.base import EndpointLoad, Signals
from gateway.routing.prefix_index import Pending, PrefixIndex
from gateway.routing.registry import make_strategy
from gateway.routing.signals import EngineMetrics, SignalCollector

SERVER_GC = (10_000, 20, 50)
"""`gc.set_threshold` of `gateway serve` (gateway/server.py, `run_policy`), after a collection
and `gc.freeze()` of what start-up made: the bench's setup is frozen the same way."""

_WORDS = ("router", "latency", "invoice", "refund", "kernel", "tensor", "policy", "token")


def _text(rng: random.Random, tokens: int) -> str:
    out: list[str] = []
    n = 0
    while n < tokens * 4:
        w = rng.choice(_WORDS)
        out.append(w)
        n += len(w) + 1
    return " ".join(out)


def _calls(kind: str, n: int, rng: random.Random) -> list[Call]:
    systems = [_text(rng, 1500) for _ in range(8)]
    docs = [_text(rng, 6000) for _ in range(32)]
    calls = []
    for i in range(n):
        if kind == "chat":
            msgs = [{"role": "system", "content": rng.choice(systems)}]
            for t in range(3):
                msgs.append({"role": "user", "content": f"session {i} turn {t} " +
                             _text(rng, 150)})
                msgs.append({"role": "assistant", "content": _text(rng, 200)})
            msgs.append({"role": "user", "content": _text(rng, 150)})
        else:
            msgs = [{"role": "system", "content": rng.choice(docs)},
                    {"role": "user", "content": f"question {i}: " + _text(rng, 200)}]
        calls.append(Call(endpoint="chat", model="m", raw=b"", stream=True,
                          request_id=str(i), body={"model": "m", "messages": msgs}))
    return calls


class _Row:
    """One strategy × prompt kind, warmed up. With `live` signals every decision sees a new
    snapshot, as a busy gateway does (`SignalCollector` rebuilds it after each attempt's
    begin/end): each pick begins an attempt and the oldest of 64 in flight ends."""

    def __init__(self, strategy: str, kind: str, endpoints: int, n: int, live: bool) -> None:
        rng = random.Random(1)
        # A tuple, as `Router.candidates` hands a strategy while no deployment is cooling down.
        self.targets = tuple(Target("m", Deployment(provider="p", model="m", name=f"gpu-{i}"),
                                    "p") for i in range(endpoints))
        self.collector: SignalCollector | None = None
        if live:
            sc = self.collector = SignalCollector()
            for t in self.targets:
                sc.observe(t.id, EngineMetrics(waiting=rng.randint(0, 3), running=4,
                                              kv_cache_usage=rng.random()))
        self.fixed = Signals(loads={t.id: EndpointLoad(
            in_flight=rng.randint(0, 8), waiting=rng.randint(0, 3),
            kv_cache_usage=rng.random()) for t in self.targets})
        self.in_flight: list[str] = []
        calls = _calls(kind, n, rng)
        self.strategy = make_strategy(strategy, 1)
        # The index the strategy records into, if any (prefix-load's own without a collector).
        prefixes = self.signals().prefixes
        self.index: PrefixIndex | None = (prefixes if prefixes is not None
                                          else getattr(self.strategy, "_index", None))
        self.log: list[list[Pending]] = []  # the records each decision left for the loop
        for c in calls:  # warm: the prefix index holds every prompt's chunks (no loop: the
            # next decision's read applies the record)
            self.after(self.strategy.order(self.targets, self.signals(), c))
        # Fresh call objects with fresh message dicts and strings: what a new request brings.
        self.calls = [dataclasses.replace(c, body={"model": "m", "messages": [
            {"role": m["role"], "content": "".join(list(m["content"]))}
            for m in c.body["messages"]]}) for c in calls]

    def signals(self) -> Signals:
        return self.collector.snapshot() if self.collector is not None else self.fixed

    async def decide(self) -> None:
        """Every call decided, each followed by one loop turn, in which the record's callback
        runs; the records are kept in `log` for a replay."""
        index, log, sleep = self.index, self.log, asyncio.sleep
        for c in self.calls:
            order = self.strategy.order(self.targets, self.signals(), c)
            if index is not None and index.pending:
                log.append(index._pending)  # `apply` swaps the list out: it stays whole
            await sleep(0)
            self.after(order)

    async def idle(self) -> None:
        """`decide`'s loop turns alone, with nothing scheduled: subtracted from its count."""
        index, log, sleep = self.index, self.log, asyncio.sleep
        for _ in self.calls:
            if index is not None and index.pending:
                log.append(index._pending)
            await sleep(0)

    def after(self, order: Sequence[Target]) -> None:
        if self.collector is not None:
            self.collector.begin(order[0].id)
            self.in_flight.append(order[0].id)
            if len(self.in_flight) > 64:
                self.collector.end(self.in_flight.pop(0), ok=True)


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop where installed, as `gateway serve` runs; else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _pct(times: list[int], q: float) -> float:
    return times[int(len(times) * q)] / 1000 if times else 0.0


@contextmanager
def server_gc() -> Iterator[list[int]]:
    """The collector as the gateway runs it; yields a list whose one item counts the
    collections started inside the block."""
    count = [0]

    def started(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            count[0] += 1

    old = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*SERVER_GC)
    gc.callbacks.append(started)
    try:
        yield count
    finally:
        gc.callbacks.remove(started)
        gc.set_threshold(*old)
        gc.unfreeze()


def noise(seconds: float = 0.5, gap_ns: int = 5000) -> tuple[float, float]:
    """Gaps of `gap_ns` or more per second in a loop that only reads the clock, and their
    median length in µs."""
    clock = time.perf_counter_ns
    end = clock() + int(seconds * 1e9)
    gaps: list[int] = []
    prev = clock()
    while prev < end:
        now = clock()
        if now - prev >= gap_ns:
            gaps.append(now - prev)
        prev = now
    gaps.sort()
    return len(gaps) / seconds, gaps[len(gaps) // 2] / 1000 if gaps else 0.0


def bench(strategy: str, kind: str, endpoints: int, n: int, live: bool = False,
          cpu: bool = False) -> tuple[float, float, float, int, float, float]:
    """p50, p98 and p99 of the decision in µs, the collections that ran while timing, and p50
    and p99 of the record applied after it (0 for a strategy that records nothing). `cpu`:
    the thread's CPU time rather than the wall clock's, so time other processes held the core
    is left out (each reading is a system call, ~0.5 µs more per decision)."""
    row = _Row(strategy, kind, endpoints, n, live)
    s, targets = row.strategy, row.targets
    clock: Callable[[], int] = time.thread_time_ns if cpu else time.perf_counter_ns
    times: list[int] = []
    applies: list[int] = []
    index = row.index

    async def decide() -> None:
        for c in row.calls:
            t0 = clock()
            order = s.order(targets, row.signals(), c)
            times.append(clock() - t0)
            if index is not None and index.pending:
                # What the loop callback (`_apply_soon`) would do next, timed here: a compiled
                # `PrefixIndex` (gateway/compiled.py) takes no instance attribute to wrap it.
                t0 = clock()
                index.apply()
                applies.append(clock() - t0)
            await asyncio.sleep(0)  # the request goes on
            row.after(order)

    loop = new_loop()
    try:
        with server_gc() as collections:
            loop.run_until_complete(decide())
    finally:
        loop.close()
    times.sort()
    applies.sort()
    return (_pct(times, 0.5), _pct(times, 0.98), _pct(times, 0.99), collections[0],
            _pct(applies, 0.5), _pct(applies, 0.99))


def _child(strategies: list[str], endpoints: int, n: int, live: bool) -> None:
    """Under callgrind: set every row up, say so, wait for the parent to zero the counters,
    then decide each row in turn, with a pause for a dump between rows; after each row, replay
    the records its decisions left for the loop on an index built as the row's was, and then
    as many empty loop turns, each counted apart (`_Row.decide`)."""
    rows = [_Row(name, kind, endpoints, n, live) for name in strategies
            for kind in ("chat", "rag")]
    # Each row's index again, built by the same steps (a copy would compact its dicts, and
    # then resize them at other times than the row's own does): the replay does the work the
    # row's callbacks did, operation for operation.
    shadows = [_Row(name, kind, endpoints, n, live).index if row.index is not None else None
               for row, (name, kind) in zip(rows, [(name, kind) for name in strategies
                                                   for kind in ("chat", "rag")], strict=True)]
    gc.collect()
    gc.freeze()
    gc.set_threshold(*SERVER_GC)
    loop = new_loop()
    for row, shadow in zip(rows, shadows, strict=True):
        print("ready", flush=True)
        sys.stdin.readline()
        loop.run_until_complete(row.decide())
        print("ready", flush=True)
        sys.stdin.readline()
        if shadow is not None:  # the same records, in the same order, from the same state
            for batch in row.log:
                shadow._pending = batch
                shadow._apply_soon()
        print("ready", flush=True)
        sys.stdin.readline()
        loop.run_until_complete(row.idle())
    print("ready", flush=True)
    sys.stdin.readline()
    loop.close()


def _instructions(strategies: list[str], endpoints: int, n: int, live: bool) -> list[float]:
    exe = shutil.which("valgrind")
    if exe is None:
        sys.exit("valgrind is missing: apt-get install -y valgrind")
    out: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [exe, "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.%p", "-q",
               sys.executable, "-m", "bench.routing_decision", "--child", "--endpoints",
               str(endpoints), "-n", str(n), "--strategies", ",".join(strategies),
               *(["--live"] if live else [])]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONHASHSEED": "0"})
        assert proc.stdin is not None and proc.stdout is not None
        rows = len(strategies) * 2 * 3  # each row's decisions, its records, its loop turns
        for row in range(rows + 1):
            assert proc.stdout.readline().strip() == "ready"
            if row:  # the previous row's decisions, since the last zeroing
                before = set(Path(tmp).glob("cg.*"))
                subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True,
                               capture_output=True)
                dump = max(set(Path(tmp).glob("cg.*")) - before, key=lambda p: p.stat().st_mtime)
                out.append(_total(dump) / n)
            subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True,
                           capture_output=True)
            proc.stdin.write("\n")
            proc.stdin.flush()
        proc.wait(timeout=600)
    return out


def _total(dump: Path) -> int:
    for line in dump.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dump}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.routing_decision", description=__doc__)
    ap.add_argument("--endpoints", type=int, default=16)
    ap.add_argument("-n", type=int, default=3000, help="decisions timed per row")
    ap.add_argument("--strategies", default="weighted,least-busy,prefix-affinity,prefix-load")
    ap.add_argument("--instructions", action="store_true",
                    help="instructions per decision under callgrind, not time")
    ap.add_argument("--live", action="store_true",
                    help="a new signals snapshot for every decision (a busy gateway)")
    ap.add_argument("--cpu", action="store_true",
                    help="time by the thread's CPU clock, not the wall clock")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    names = args.strategies.split(",")
    if args.child:
        _child(names, args.endpoints, args.n, args.live)
        return 0
    if args.instructions:
        counts = iter(_instructions(names, args.endpoints, args.n, args.live))
        print(f"{'strategy':<16} {'prompt':<6} {'instr/decision':>15} {'record after':>13} "
              f"{'total':>9}  ({args.endpoints} endpoints, callgrind; \"record after\": the "
              "record, applied after the decision)")
        for name in names:
            for kind in ("chat", "rag"):
                both, applied, turns = next(counts), next(counts), next(counts)
                print(f"{name:<16} {kind:<6} {both - applied - turns:>15,.0f} "
                      f"{applied:>13,.0f} {both - turns:>9,.0f}")
        return 0
    rate, gap = noise()
    # A decision of d µs takes one of the core's gaps with probability ~rate × d: once that
    # passes 1 %, the p99 is the gap's length, not the decision's (the p98 column shows it).
    print(f"noise: {rate:.0f} gaps of 5 µs or more per second, median {gap:.0f} µs")
    compiled = status()
    print("compiled (mypyc, gateway/compiled.py): "
          + ("all" if all(compiled.values()) else
             ", ".join(f"{m.rsplit('.', 1)[1]} {'yes' if c else 'no'}"
                       for m, c in compiled.items())))
    print(f"{'strategy':<16} {'prompt':<6} {'p50 µs':>8} {'p98 µs':>8} {'p99 µs':>8} "
          f"{'gap odds':>8} {'GCs':>4} {'rec p50':>8} {'rec p99':>8}  "
          f"({args.endpoints} endpoints, {'thread CPU' if args.cpu else 'wall'} clock; "
          "rec: the record, applied after the decision)")
    for name in args.strategies.split(","):
        for kind in ("chat", "rag"):
            p50, p98, p99, collections, r50, r99 = bench(name, kind, args.endpoints, args.n,
                                                         args.live, args.cpu)
            print(f"{name:<16} {kind:<6} {p50:>8.1f} {p98:>8.1f} {p99:>8.1f} "
                  f"{rate * p50 / 1e4:>7.2f}% {collections:>4} {r50:>8.1f} {r99:>8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The discrete-event loop: sessions send turns, the gateway's own strategy picks a backend
for each, backends run engine steps, and the gateway's own `SignalCollector` keeps the in-flight
counts and latency averages and takes periodic scrapes of the backends' gauges.

Nothing here decides where a request goes: `gateway.routing.registry.make_strategy` builds the
strategy the policy names, and it orders `Target`s built from policy `Deployment`s for a `Call`
whose body holds the session's messages, exactly as the proxy would ask it.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bench.sim.backend import Backend, BackendConfig, Request
from bench.sim.replicas import Gateways
from bench.sim.workload import (
    Session,
    SystemPrompt,
    WorkloadConfig,
    reply_text,
    request_means,
    segment_id,
    sessions,
    system_prompts,
    user_text,
)
from gateway.call import Call
from gateway.policy.models import Deployment
from gateway.providers.base import Target
from gateway.routing.base import Strategy
from gateway.routing.signals import EngineMetrics

_ARRIVAL, _STEP, _SCRAPE, _EXTERNAL = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class SimConfig:
    backends: int = 8
    load: float = 0.7
    """Offered load as a fraction of the cluster's capacity (see `capacity_rps`)."""
    duration_s: float = 900.0
    """Sessions start in [0, duration_s); turns after it are not sent."""
    warmup_s: float = 150.0
    """Requests arriving before this are simulated but not measured (caches fill up)."""
    scrape_interval_s: float = 5.0
    """How often backend gauges are scraped (the policy's `router.health_check_interval_s`)."""
    seed: int = 1
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    slow_backends: int = 0
    """How many backends (the first ones) are slower: heterogeneous hardware."""
    slow_factor: float = 1.0
    """Their step times are this many times longer (2.0: half the speed)."""
    flood: WorkloadConfig | None = None
    """A second workload mixed in (another tenant's flood), offered at `flood_load`."""
    flood_load: float = 0.0
    replicas: int = 1
    """Gateway replicas, each with its own strategy and signals (bench/sim/replicas.py)."""
    share_s: float | None = None
    """With several replicas: how often they exchange their in-flight counts through the
    shared view (None: never, each routes on its own view)."""
    prefix_share_s: float | None = None
    """How often their prefix records go along (None: with every exchange, `share_s`)."""


def backend_configs(cfg: SimConfig) -> list[BackendConfig]:
    slow = dataclasses.replace(cfg.backend, step_base_s=cfg.backend.step_base_s * cfg.slow_factor,
                               decode_s=cfg.backend.decode_s * cfg.slow_factor,
                               prefill_s=cfg.backend.prefill_s * cfg.slow_factor)
    return [slow if i < cfg.slow_backends else cfg.backend for i in range(cfg.backends)]


@functools.lru_cache(maxsize=64)
def _means(wl: WorkloadConfig, seed: int, cache_tokens: int | None) -> tuple[float, float, float]:
    """`request_means`, once per workload and seed: 20,000 sampled sessions take seconds."""
    return request_means(wl, random.Random(seed + 1), cache_tokens=cache_tokens)


def _capacity(cfg: SimConfig, wl: WorkloadConfig) -> tuple[float, dict[str, float]]:
    b = cfg.backend
    uncached, output, turns = _means(wl, cfg.seed, b.kv_blocks * b.block_tokens)
    full_step = b.step_base_s + b.decode_s * b.max_batch
    work = output * full_step / b.max_batch + uncached * b.prefill_s
    speed = sum(1.0 / (cfg.slow_factor if i < cfg.slow_backends else 1.0)
                for i in range(cfg.backends))
    return speed / work, {"gpu_s_per_request": work, "mean_uncached_prompt": uncached,
                          "mean_output": output, "mean_turns": turns,
                          "backend_speed_sum": speed}


def capacity_rps(cfg: SimConfig) -> tuple[float, dict[str, float]]:
    """Requests/s the cluster sustains with every batch full, when each request prefills what
    a router that ignores prefixes must: its prompt minus the system prompt where one
    backend's cache holds every system prompt (a few chat apps), and all of it but the share a
    backend's cache holds where it cannot (150 long documents). Per request: output × (step at
    full batch ÷ batch) + uncached × prefill cost; slow backends count at their speed."""
    return _capacity(cfg, cfg.workload)


def _keys(segments: list[tuple[int, int]], block: int) -> list[int]:
    """Keys of the full blocks covering `segments`: block i's key hashes every segment up to
    the one holding its last token (a hash chain), and its end position."""
    keys: list[int] = []
    chain = 0
    pos = 0
    for seg, length in segments:
        chain = hash((chain, seg))
        end = pos + length
        e = (pos // block + 1) * block
        while e <= end:
            keys.append(hash((chain, e)))
            e += block
        pos = end
    return keys


class Admission(Protocol):
    """What stands between a turn's arrival and its routing (flow control, bench/sim/flow.py).
    Each method returns the (session, arrival time) pairs to route now."""

    def arrive(self, s: Session, now: float) -> Iterable[tuple[Session, float]]: ...

    def finished(self, r: Request, now: float) -> Iterable[tuple[Session, float]]: ...

    def tick(self, now: float) -> None:
        """Called before every event: queue timeouts are due."""

    def candidates(self, s: Session, targets: Sequence[Target]) -> Sequence[Target]:
        """The backends the session's next turn may be routed to (all of `targets`, or the
        few a single-use tenant is confined to)."""


class External(Protocol):
    """Deployments outside the simulated cluster (an external provider, bench/sim/spill.py):
    a request the strategy sends to a target that is not a backend goes here."""

    def send(self, r: Request, deployment_id: str, now: float) -> float:
        """Serve `r`, sent at `now`: set its `first_token` and `finish`; return `finish`."""


@dataclass(slots=True)
class Outcome:
    strategy: str
    requests: list[Request]
    backends: list[Backend]
    window_s: float


def _workload(cfg: SimConfig, wl: WorkloadConfig, load: float,
              rng: random.Random) -> tuple[list[SystemPrompt], list[Session]]:
    systems = system_prompts(wl, rng)
    rate, _ = _capacity(cfg, wl)
    turns = _means(wl, cfg.seed, None)[2]
    return systems, sessions(wl, load * rate / turns, cfg.duration_s, rng)


def run(cfg: SimConfig, strategy_name: str, strategy: Strategy | None = None,
        admission: Admission | None = None, external: External | None = None) -> Outcome:
    """Simulate `cfg` routed by the policy strategy `strategy_name` (or by `strategy`, an
    instance with non-default constants, when tuning, or one that may pick deployments
    outside the cluster, served by `external`), each turn passing `admission` first when one
    is given."""
    rng = random.Random(cfg.seed)
    systems, all_sessions = _workload(cfg, cfg.workload, cfg.load, rng)
    if cfg.flood is not None and cfg.flood_load > 0:
        flood_systems, flood = _workload(cfg, cfg.flood, cfg.flood_load,
                                         random.Random(cfg.seed + 2))
        # Prompts are looked up by index and sessions by sid: renumber the flood's.
        base = len(systems)
        systems = [*systems, *flood_systems]
        for s in flood:
            s.system += base
        all_sessions = sorted([*all_sessions, *flood], key=lambda s: s.start)
        for i, s in enumerate(all_sessions):
            s.sid = i

    deployments = [Deployment(provider="sim", model="llama", name=f"gpu-{i}")
                   for i in range(cfg.backends)]
    targets = [Target("llama", d, "sim") for d in deployments]
    index = {t.id: i for i, t in enumerate(targets)}
    now = 0.0
    gateways = Gateways(cfg.replicas, cfg.share_s, strategy_name, cfg.seed, strategy,
                        lambda: now, cfg.scrape_interval_s, cfg.prefix_share_s)
    backends = [Backend(i, bc) for i, bc in enumerate(backend_configs(cfg))]
    block = cfg.backend.block_tokens

    events: list[tuple[float, int, int, object]] = []
    seq = 0

    def push(t: float, kind: int, obj: object) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, obj))

    for s in all_sessions:
        push(s.start, _ARRIVAL, s)
    push(0.0, _SCRAPE, None)
    measured: list[Request] = []

    def send(s: Session, t: float, arrived: float | None = None) -> None:
        turn = s.turns[s.next_turn]
        if s.next_turn == 0:
            sp = systems[s.system]
            s.segments.append((sp.seg_id, sp.tokens))
            s.messages.append({"role": "system", "content": sp.text})
        s.segments.append((segment_id(s, s.next_turn, False), turn.user_tokens))
        s.messages.append({"role": "user", "content": user_text(s, s.next_turn)})
        prompt = sum(n for _, n in s.segments)
        keys = _keys([*s.segments, (segment_id(s, s.next_turn, True), turn.output_tokens)],
                     block)
        # A turn held by `admission` is measured from when it arrived, queueing included.
        at = t if arrived is None else arrived
        r = Request(s.sid, s.next_turn, at, prompt, turn.output_tokens, keys,
                    measured=cfg.warmup_s <= at < cfg.duration_s, tenant=s.tenant)
        r.queued_s = t - at
        call = Call(endpoint="chat", model="llama", raw=b"", stream=True,
                    request_id=f"{s.sid}-{s.next_turn}",
                    body={"model": "llama", "messages": list(s.messages), "stream": True,
                          "max_tokens": turn.output_tokens})
        # Flow control may confine a single-use tenant to some backends (gateway/flow/confine.py).
        cands = targets if admission is None else admission.candidates(s, targets)
        chosen = gateways.route(cands, call, (s.sid, s.next_turn))
        if r.measured:
            measured.append(r)
        i = index.get(chosen.id)
        if i is None:  # not one of the backends: an external deployment
            if external is None:
                raise KeyError(f"{chosen.id} is not a simulated backend and no external is set")
            outside[s.sid, r.turn] = chosen.id
            push(external.send(r, chosen.id, t), _EXTERNAL, r)
            return
        be = backends[i]
        r.backend = be.index
        be.waiting.append(r)
        if not be.busy:
            _start(be, t)

    def _start(be: Backend, t: float) -> None:
        d = be.start_step()
        if d is not None:
            push(t + d, _STEP, be)

    by_sid = {s.sid: s for s in all_sessions}
    outside: dict[tuple[int, int], str] = {}  # (session, turn) sent to an external deployment

    def complete(r: Request, deployment_id: str) -> None:
        # The gateway times an attempt from when it is sent: queueing is not in it.
        sent = r.arrival + r.queued_s
        gateways.end((r.session, r.turn), deployment_id, latency_s=r.finish - sent,
                     ttft_s=r.first_token - sent)
        s = by_sid[r.session]
        s.segments.append((segment_id(s, r.turn, True), r.output_tokens))
        s.messages.append({"role": "assistant", "content": reply_text(s, r.turn)})
        s.next_turn += 1
        nxt = now + s.turns[r.turn].think_s
        if s.next_turn < len(s.turns) and nxt < cfg.duration_s:
            push(nxt, _ARRIVAL, s)
        if admission is not None:
            for s2, arrived in admission.finished(r, now):
                send(s2, now, arrived)
    while events:
        now, _, kind, obj = heapq.heappop(events)
        if admission is not None:
            admission.tick(now)
        if kind == _ARRIVAL:
            assert isinstance(obj, Session)
            if admission is None:
                send(obj, now)
            else:
                for s, arrived in admission.arrive(obj, now):
                    send(s, now, arrived)
        elif kind == _STEP:
            assert isinstance(obj, Backend)
            _, done = obj.finish_step(now)
            for r in done:
                complete(r, targets[r.backend].id)
            _start(obj, now)
        elif kind == _EXTERNAL:
            assert isinstance(obj, Request)
            complete(obj, outside.pop((obj.session, obj.turn)))
        else:
            for be in backends:
                gateways.observe(targets[be.index].id, EngineMetrics(
                    waiting=len(be.waiting), running=be.running, kv_cache_usage=be.kv_usage(),
                    cache_tokens=be.cfg.kv_blocks * be.cfg.block_tokens))
            if now < cfg.duration_s:
                push(now + cfg.scrape_interval_s, _SCRAPE, None)
    return Outcome(strategy_name, measured, backends, cfg.duration_s - cfg.warmup_s)

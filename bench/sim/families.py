"""The workload families every routing strategy is judged on, and the seed split.

Constants of a strategy (`QUEUE_TOKENS`, `TIE_TOKENS`… in `gateway/routing/strategies/`) are
chosen on `TUNE_SEEDS` only; the table in docs/routing.md is measured on `HELDOUT_SEEDS`, which
were never looked at while tuning. A seed draws every session, turn, prompt length and think
time of a run (`bench/sim/workload.py`), so the two sets are different workloads of the same
family, not replays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from bench.sim.cluster import SimConfig
from bench.sim.workload import WorkloadConfig

TUNE_SEEDS: tuple[int, ...] = (1, 2)
"""Seeds the strategies' constants were tuned on."""
HELDOUT_SEEDS: tuple[int, ...] = (101, 102)
"""Seeds the reported figures come from; never used for tuning."""

DURATION_S = 240.0
WARMUP_S = 60.0


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    summary: str
    build: Callable[[int], SimConfig]


def _base(seed: int, **kw: object) -> SimConfig:
    cfg = SimConfig(duration_s=DURATION_S, warmup_s=WARMUP_S, seed=seed)
    return dataclasses.replace(cfg, **kw)  # type: ignore[arg-type]


_CHAT = WorkloadConfig()
_SINGLE = WorkloadConfig(mean_turns=1.0, max_turns=1, common_opener_share=0.0)
_RAG = WorkloadConfig(system_prompts=150, system_tokens=(5500, 6500), zipf_s=0.0,
                      mean_turns=1.0, max_turns=1, user_tokens=(100, 300),
                      output_tokens=(50, 250), common_opener_share=0.0)
_FLOOD = WorkloadConfig(system_prompts=1, system_tokens=(2000, 2000), mean_turns=1.0,
                        max_turns=1, user_tokens=(300, 700), output_tokens=(100, 300),
                        common_opener_share=0.0, tenant="flood", prompt_offset=1000)

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("chat-short", "multi-turn chat, 8 system prompts (1-2k tokens, Zipf), mean 4 turns, "
           "15 s mean think time, 70 % load",
           lambda seed: _base(seed, workload=_CHAT)),
    Family("chat-long", "as chat-short with 60 s mean think time: histories age in the caches",
           lambda seed: _base(seed, workload=dataclasses.replace(_CHAT, think_s=60.0))),
    Family("single-turn", "one turn per session over the 8 shared system prompts, 70 % load",
           lambda seed: _base(seed, workload=_SINGLE)),
    Family("rag", "single-turn RAG/agents: 150 distinct 6k-token prefixes (uniform), 900k "
           "tokens = 70 % of the cluster's KV cache and 5.6x one backend's, 70 % load",
           lambda seed: _base(seed, workload=_RAG)),
    Family("bursty", "chat-short arriving on/off: 10 s on at 2x the mean rate, 10 s off; "
           "60 % mean load (120 % while on)",
           lambda seed: _base(seed, load=0.6, workload=dataclasses.replace(
               _CHAT, burst_on_s=10.0, burst_off_s=10.0))),
    Family("hetero", "chat-short on 8 backends, one of them at half speed (every step 2x "
           "longer); 70 % of the reduced capacity",
           lambda seed: _base(seed, workload=_CHAT, slow_backends=1, slow_factor=2.0)),
    Family("flood", "chat-short tenant at 40 % load plus a `flood` tenant at 55 %: single "
           "turns on one 2k-token prompt with 300-700 new tokens each (95 % together)",
           lambda seed: _base(seed, load=0.4, workload=_CHAT, flood=_FLOOD, flood_load=0.55)),
)}

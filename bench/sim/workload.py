"""The simulated workload: chat sessions over a few shared system prompts.

Sessions start as a Poisson process. Each picks one of `system_prompts` system prompts (1-2k
tokens, Zipf popularity: a few apps carry most traffic), runs a number of turns, and each turn's
prompt is the whole conversation so far plus a new user message — what chat clients send.
The next turn is sent a think time after the previous reply ends. Every random draw is made up
front from one seeded generator, so every strategy sees the same sessions, turns and think times.

A prompt is a list of segments (id, tokens): the system prompt, then each user message and
reply. Two prompts share KV-cache blocks exactly as far as they share leading segments, which is
what a prefix cache keyed by a hash chain over token blocks sees.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

_WORDS = ("router", "latency", "invoice", "refund", "kernel", "tensor", "policy", "shipment",
          "account", "cluster", "summary", "contract", "schedule", "backup", "printer", "token")
_OPENERS = ("Hi", "Hello, I need help", "Can you help me with something?")
_OPENER_TOKENS = 8


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    system_prompts: int = 8
    """Distinct system prompts (apps) shared by all sessions."""
    system_tokens: tuple[int, int] = (1000, 2000)
    """Length range of a system prompt, tokens."""
    zipf_s: float = 1.0
    """Popularity skew of system prompts (Zipf exponent)."""
    mean_turns: float = 4.0
    """Mean turns per session (geometric, at least 1)."""
    max_turns: int = 12
    user_tokens: tuple[int, int] = (50, 250)
    """Length range of one user message, tokens."""
    output_tokens: tuple[int, int] = (50, 350)
    """Length range of one reply, tokens."""
    think_s: float = 15.0
    """Mean pause between a reply and the user's next message (exponential)."""
    common_opener_share: float = 0.1
    """Sessions that open with a stock greeting ("Hi") shared by many users."""
    burst_on_s: float = 0.0
    """On/off arrivals: sessions start only during `burst_on_s` out of every `burst_on_s +
    burst_off_s` seconds, at the rate that keeps the mean load. 0: plain Poisson."""
    burst_off_s: float = 0.0
    tenant: str = "main"
    """Tenant the sessions belong to (the flood family mixes two workloads)."""
    prompt_offset: int = 0
    """First system-prompt index, so two mixed workloads do not share prompts."""


@dataclass(slots=True)
class Turn:
    user_tokens: int
    output_tokens: int
    think_s: float  # pause after this turn's reply before the next turn


@dataclass(slots=True)
class Session:
    sid: int
    start: float
    system: int  # index of its system prompt
    opener: int | None  # index into _OPENERS, or None for a session-specific first message
    turns: list[Turn]
    tenant: str = "main"
    # Running state while simulated: segments of the conversation so far and its messages.
    segments: list[tuple[int, int]] = field(default_factory=list)
    messages: list[dict[str, str]] = field(default_factory=list)
    next_turn: int = 0


@dataclass(frozen=True, slots=True)
class SystemPrompt:
    seg_id: int
    tokens: int
    text: str


CHARS_PER_TOKEN = 4
"""Message texts are this many characters per simulated token, so that a router estimating
tokens from characters (as `prefix-load` does) sees the lengths the backend computes on."""
_FILLER = " ".join(_WORDS[(i * 7) % len(_WORDS)] for i in range(20_000))


def _text(head: str, tokens: int) -> str:
    """`head` (what makes the text distinct), padded to `tokens` × CHARS_PER_TOKEN chars."""
    n = max(len(head), tokens * CHARS_PER_TOKEN)
    filler = _FILLER if len(_FILLER) >= n else _FILLER * (n // len(_FILLER) + 1)
    return head + filler[len(head): n]


def system_prompts(cfg: WorkloadConfig, rng: random.Random) -> list[SystemPrompt]:
    out = []
    for j in range(cfg.system_prompts):
        i = j + cfg.prompt_offset
        tokens = rng.randint(*cfg.system_tokens)
        out.append(SystemPrompt(seg_id=-(i + 1), tokens=tokens,
                                text=_text(f"You are assistant #{i} of app {i}. "
                                           f"{rng.random():.12f}", tokens)))
    return out


def _session(cfg: WorkloadConfig, rng: random.Random, sid: int, start: float,
             weights: list[float]) -> Session:
    system = rng.choices(range(cfg.system_prompts), weights)[0]
    opener = rng.randrange(len(_OPENERS)) if rng.random() < cfg.common_opener_share else None
    p_stop = 1.0 / cfg.mean_turns
    n = 1
    while n < cfg.max_turns and rng.random() >= p_stop:
        n += 1
    turns = [Turn(rng.randint(*cfg.user_tokens), rng.randint(*cfg.output_tokens),
                  rng.expovariate(1.0 / cfg.think_s)) for _ in range(n)]
    if opener is not None:  # one stock text, one length: its KV blocks are shared
        turns[0].user_tokens = _OPENER_TOKENS
    return Session(sid, start, system, opener, turns, cfg.tenant)


def _weights(cfg: WorkloadConfig) -> list[float]:
    return [1.0 / (k + 1) ** cfg.zipf_s for k in range(cfg.system_prompts)]


def sessions(cfg: WorkloadConfig, rate_per_s: float, duration_s: float,
             rng: random.Random) -> list[Session]:
    """Sessions starting in [0, duration_s) at `rate_per_s`, with all their draws made."""
    weights = _weights(cfg)
    out: list[Session] = []
    on, off = cfg.burst_on_s, cfg.burst_off_s
    bursty = on > 0 and off > 0
    if bursty:  # the same mean rate, squeezed into the on periods
        rate_per_s *= (on + off) / on
    t = 0.0
    while True:
        t += rng.expovariate(rate_per_s)
        if bursty:  # time counts only while on: map it onto the wall clock
            cycles, into = divmod(t, on)
            start = cycles * (on + off) + into
        else:
            start = t
        if start >= duration_s:
            return out
        out.append(_session(cfg, rng, len(out), start, weights))


def request_means(cfg: WorkloadConfig, rng: random.Random, cache_tokens: int | None = None,
                  samples: int = 20_000) -> tuple[float, float, float]:
    """Per request: mean prompt tokens a router that ignores prefixes must prefill, mean output
    tokens, and mean turns per session. Such a router finds no history cached, and the system
    prompts only as far as one backend's cache (`cache_tokens`) holds all of them: every
    backend caches the few shared prompts of a chat app, but not 150 × 6k-token documents."""
    weights = _weights(cfg)
    all_system = cfg.system_prompts * sum(cfg.system_tokens) / 2
    cached_share = 1.0 if cache_tokens is None else min(1.0, cache_tokens / all_system)
    uncached = output = 0.0
    count = 0
    for i in range(samples):
        history = 0
        s = _session(cfg, rng, i, 0.0, weights)
        first = True
        for turn in s.turns:
            if first:
                uncached += (1.0 - cached_share) * sum(cfg.system_tokens) / 2
                first = False
            uncached += history + turn.user_tokens
            output += turn.output_tokens
            history += turn.user_tokens + turn.output_tokens
            count += 1
    return uncached / count, output / count, count / samples


def user_text(session: Session, turn: int) -> str:
    if turn == 0 and session.opener is not None:
        return _OPENERS[session.opener]
    return _text(f"{session.tenant} session {session.sid}, message {turn}:",
                 session.turns[turn].user_tokens)


def reply_text(session: Session, turn: int) -> str:
    return _text(f"Reply {turn} to {session.tenant} session {session.sid}.",
                 session.turns[turn].output_tokens)


def segment_id(session: Session, turn: int, reply: bool) -> int:
    """Unique per (session, turn, role); stock openers share one id per opener text so that
    their KV blocks are shared too."""
    if turn == 0 and not reply and session.opener is not None:
        return 1_000_000_000 + session.opener
    return (session.sid * 64 + turn) * 2 + (1 if reply else 0)

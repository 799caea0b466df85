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
    # Running state while simulated: segments of the conversation so far and its messages.
    segments: list[tuple[int, int]] = field(default_factory=list)
    messages: list[dict[str, str]] = field(default_factory=list)
    next_turn: int = 0


@dataclass(frozen=True, slots=True)
class SystemPrompt:
    seg_id: int
    tokens: int
    text: str


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def system_prompts(cfg: WorkloadConfig, rng: random.Random) -> list[SystemPrompt]:
    out = []
    for i in range(cfg.system_prompts):
        tokens = rng.randint(*cfg.system_tokens)
        # The text is a stand-in: distinct per app and long enough for a prefix hash.
        out.append(SystemPrompt(seg_id=-(i + 1), tokens=tokens,
                                text=f"You are assistant #{i} of app {i}. " + _text(rng, 200)))
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
    return Session(sid, start, system, opener, turns)


def _weights(cfg: WorkloadConfig) -> list[float]:
    return [1.0 / (k + 1) ** cfg.zipf_s for k in range(cfg.system_prompts)]


def sessions(cfg: WorkloadConfig, rate_per_s: float, duration_s: float,
             rng: random.Random) -> list[Session]:
    """Sessions starting in [0, duration_s) at `rate_per_s`, with all their draws made."""
    weights = _weights(cfg)
    out: list[Session] = []
    t = 0.0
    while True:
        t += rng.expovariate(rate_per_s)
        if t >= duration_s:
            return out
        out.append(_session(cfg, rng, len(out), t, weights))


def request_means(cfg: WorkloadConfig, rng: random.Random,
                  samples: int = 20_000) -> tuple[float, float, float]:
    """Per request: mean prompt tokens beyond the system prompt (what a router that ignores
    prefixes must prefill: every backend caches the few system prompts, not the histories),
    mean output tokens, and mean turns per session."""
    weights = _weights(cfg)
    uncached = output = 0.0
    count = 0
    for i in range(samples):
        history = 0
        s = _session(cfg, rng, i, 0.0, weights)
        for turn in s.turns:
            uncached += history + turn.user_tokens
            output += turn.output_tokens
            history += turn.user_tokens + turn.output_tokens
            count += 1
    return uncached / count, output / count, count / samples


def user_text(session: Session, turn: int) -> str:
    if turn == 0 and session.opener is not None:
        return _OPENERS[session.opener]
    return f"Session {session.sid}, message {turn}: " + " ".join(
        _WORDS[(session.sid * 7 + turn * 3 + i) % len(_WORDS)] for i in range(12))


def reply_text(session: Session, turn: int) -> str:
    return f"Reply {turn} to session {session.sid}."


def segment_id(session: Session, turn: int, reply: bool) -> int:
    """Unique per (session, turn, role); stock openers share one id per opener text so that
    their KV blocks are shared too."""
    if turn == 0 and not reply and session.opener is not None:
        return 1_000_000_000 + session.opener
    return (session.sid * 64 + turn) * 2 + (1 if reply else 0)

"""Where a rollout's state and measurements live: process memory (one replica, the embedded
default) or Redis (every replica routes the same split and adds its counts to the same step).

State is one hash per rollout with a `version` that every transition bumps: a transition is a
compare-and-set on it, so when two replicas see the same breach only one of them rolls back
(and announces it). Measurements are one hash per rollout, step and arm, added to with
HINCRBY/HINCRBYFLOAT in one pipeline per flush.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from gateway.rollouts.stats import ArmStats

Status = Literal["running", "paused", "promoted", "rolled_back"]
Arm = Literal["baseline", "candidate"]
ARMS: tuple[Arm, ...] = ("baseline", "candidate")
_KEY_TTL_S = 30 * 86400  # a finished rollout's hashes outlive any reasonable post-mortem


@dataclass(slots=True)
class RolloutState:
    status: Status = "running"
    step: int = 0
    step_started: float = 0.0
    """Wall-clock (epoch s) start of the current step: replicas share it, so not monotonic."""
    version: int = 0
    reason: str = ""
    gates: list[dict[str, Any]] = field(default_factory=list)
    """The last verdicts that moved the rollout (a breach's figures, a promotion's)."""
    updated: float = 0.0

    def to_fields(self) -> dict[str, str]:
        d = asdict(self)
        d["gates"] = json.dumps(self.gates)
        return {k: str(v) for k, v in d.items()}

    @classmethod
    def from_fields(cls, f: dict[str, str]) -> RolloutState:
        return cls(status=f.get("status", "running"),  # type: ignore[arg-type]
                   step=int(f.get("step", 0)), step_started=float(f.get("step_started", 0)),
                   version=int(f.get("version", 0)), reason=f.get("reason", ""),
                   gates=json.loads(f.get("gates") or "[]"),
                   updated=float(f.get("updated", 0)))


class RolloutStore(Protocol):
    async def load(self, rid: str) -> RolloutState | None: ...

    async def swap(self, rid: str, expected_version: int, new: RolloutState) -> bool:
        """Write ``new`` (its version = expected + 1) if the stored version is still
        ``expected_version`` (0: nothing stored yet)."""
        ...

    async def add(self, rid: str, step: int, arm: Arm, fields: dict[str, float]) -> None: ...

    async def read(self, rid: str, step: int) -> dict[Arm, ArmStats]: ...

    async def close(self) -> None: ...


class MemoryStore:
    def __init__(self) -> None:
        self._states: dict[str, RolloutState] = {}
        self._stats: dict[tuple[str, int, Arm], dict[str, float]] = {}

    async def load(self, rid: str) -> RolloutState | None:
        s = self._states.get(rid)
        return None if s is None else RolloutState.from_fields(s.to_fields())

    async def swap(self, rid: str, expected_version: int, new: RolloutState) -> bool:
        cur = self._states.get(rid)
        if (cur.version if cur else 0) != expected_version:
            return False
        new.version = expected_version + 1
        self._states[rid] = RolloutState.from_fields(new.to_fields())
        return True

    async def add(self, rid: str, step: int, arm: Arm, fields: dict[str, float]) -> None:
        h = self._stats.setdefault((rid, step, arm), {})
        for k, v in fields.items():
            h[k] = h.get(k, 0) + v

    async def read(self, rid: str, step: int) -> dict[Arm, ArmStats]:
        return {arm: ArmStats.from_fields(self._stats.get((rid, step, arm), {}))
                for arm in ARMS}

    async def close(self) -> None:
        return None


# KEYS[1] state hash; ARGV[1] expected version; ARGV[2..] field, value pairs.
_SWAP = f"""
local cur = redis.call('HGET', KEYS[1], 'version') or '0'
if cur ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], {_KEY_TTL_S})
return 1
"""


class RedisStore:
    def __init__(self, url: str, prefix: str) -> None:
        import redis.asyncio as aioredis

        self._redis: Any = aioredis.Redis.from_url(url, decode_responses=True,
                                                   socket_timeout=2.0)
        self._prefix = prefix
        self._swap = self._redis.register_script(_SWAP)

    def _state_key(self, rid: str) -> str:
        return f"{self._prefix}rollout:{{{rid}}}:state"

    def _stats_key(self, rid: str, step: int, arm: Arm) -> str:
        return f"{self._prefix}rollout:{{{rid}}}:step:{step}:{arm}"

    async def load(self, rid: str) -> RolloutState | None:
        f = await self._redis.hgetall(self._state_key(rid))
        return RolloutState.from_fields(f) if f else None

    async def swap(self, rid: str, expected_version: int, new: RolloutState) -> bool:
        new.version = expected_version + 1
        args: list[str] = [str(expected_version)]
        for k, v in new.to_fields().items():
            args += [k, v]
        ok = await self._swap(keys=[self._state_key(rid)], args=args)
        return bool(ok)

    async def add(self, rid: str, step: int, arm: Arm, fields: dict[str, float]) -> None:
        key = self._stats_key(rid, step, arm)
        pipe = self._redis.pipeline(transaction=False)
        for k, v in fields.items():
            if isinstance(v, int):
                pipe.hincrby(key, k, v)
            else:
                pipe.hincrbyfloat(key, k, v)
        pipe.expire(key, _KEY_TTL_S)
        await pipe.execute()

    async def read(self, rid: str, step: int) -> dict[Arm, ArmStats]:
        pipe = self._redis.pipeline(transaction=False)
        for arm in ARMS:
            pipe.hgetall(self._stats_key(rid, step, arm))
        rows = await pipe.execute()
        return {arm: ArmStats.from_fields(row) for arm, row in zip(ARMS, rows, strict=True)}

    async def close(self) -> None:
        await self._redis.aclose()

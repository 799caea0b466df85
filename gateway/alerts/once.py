"""'Has this alert fired already?' — once per key, in memory or across replicas in Redis.

A key is claimed with `SET key 1 NX EX ttl`: of every replica racing for it, exactly one gets
OK and sends the alert. When Redis cannot answer the claim succeeds: a duplicate alert is
better than a lost one (delivery is at least once anyway).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

log = logging.getLogger("gateway.alerts")


class Once(Protocol):
    async def claim(self, key: str, ttl_s: int) -> bool:
        """True for the first claim of `key` within `ttl_s` seconds, False after."""
        ...

    async def close(self) -> None: ...


class MemoryOnce:
    def __init__(self) -> None:
        self._until: dict[str, float] = {}

    async def claim(self, key: str, ttl_s: int) -> bool:
        now = time.monotonic()
        if len(self._until) > 10_000:  # keys are per tenant and period; expired ones go
            self._until = {k: t for k, t in self._until.items() if t > now}
        if self._until.get(key, 0.0) > now:
            return False
        self._until[key] = now + ttl_s
        return True

    async def close(self) -> None:
        return None


class RedisOnce:
    def __init__(self, url: str, prefix: str) -> None:
        # Imported here: a gateway without Redis never loads the client (8 MB resident).
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError

        self._redis: Any = aioredis.Redis.from_url(url, socket_timeout=1.0,
                                                   socket_connect_timeout=1.0)
        self._errors = (RedisError, OSError)
        self._prefix = prefix

    async def claim(self, key: str, ttl_s: int) -> bool:
        try:
            return bool(await self._redis.set(self._prefix + key, b"1", nx=True, ex=ttl_s))
        except self._errors as e:
            log.warning("Redis could not say whether alert %s fired already (%s); sending it",
                        key, type(e).__name__)
            return True

    async def close(self) -> None:
        await self._redis.aclose()

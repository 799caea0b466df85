"""Where cached replies live: this process's memory (the embedded default) or Redis (shared by
every replica). Both store opaque bytes under a key with a TTL. A store that fails answers
"miss" and drops the write: the cache may only ever save work, never fail a request."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Protocol

log = logging.getLogger("gateway.cache")


class CacheStore(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes, ttl_s: float) -> None: ...


class MemoryStore:
    """LRU bounded by entry count, each entry with its own expiry (monotonic clock)."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        hit = self._entries.get(key)
        if hit is None:
            return None
        expires, value = hit
        if expires <= time.monotonic():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        self._entries[key] = (time.monotonic() + ttl_s, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


class RedisStore:
    """`SET key value PX ttl` / `GET key` under the policy's prefix; one round trip each."""

    def __init__(self, url: str, prefix: str, timeout_s: float = 0.5) -> None:
        import redis.asyncio as aioredis

        self.prefix = prefix
        self._redis = aioredis.from_url(url, socket_timeout=timeout_s,
                                        socket_connect_timeout=timeout_s)

    async def get(self, key: str) -> bytes | None:
        from redis.exceptions import RedisError

        try:
            value = await self._redis.get(self.prefix + key)
        except (RedisError, OSError) as e:
            log.warning("response cache: Redis read failed (%s); serving as a miss", e)
            return None
        return value if isinstance(value, bytes) else None

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        from redis.exceptions import RedisError

        try:
            await self._redis.set(self.prefix + key, value, px=max(1, int(ttl_s * 1000)))
        except (RedisError, OSError) as e:
            log.warning("response cache: Redis write failed (%s); entry not stored", e)

    async def aclose(self) -> None:
        await self._redis.aclose()

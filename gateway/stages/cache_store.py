"""Where cached replies live: this process's memory (the embedded default) or Redis (shared by
every replica). Both store opaque bytes under a key with a TTL. A store that fails answers
"miss" and drops the write: the cache may only ever save work, never fail a request.

Writes are `put_soon`: called once the reply is on its way (`loop.call_soon` from the stage), a
memory write is done there and then, a Redis write is a task of its own — neither is on the
request's path, and a write that fails is logged, never raised."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("gateway.cache")


class CacheStore(Protocol):
    # `get` never suspends (no I/O): a hit is then answered within one loop turn.
    synchronous: bool

    async def get(self, key: str) -> bytes | None: ...

    def put_soon(self, key: str, value: bytes, ttl_s: float) -> None: ...

    def size(self) -> tuple[int, int]:
        """(entries, bytes) held, where the store knows (memory); (0, 0) otherwise."""
        ...


class MemoryStore:
    """LRU bounded by entry count, each entry with its own expiry (monotonic clock)."""

    synchronous = True

    def __init__(self, max_entries: int,
                 on_evict: Callable[[str], None] | None = None) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0
        # Told "lru" or "expired" for each entry dropped (the cache's metrics).
        self._on_evict = on_evict or (lambda reason: None)

    def __len__(self) -> int:
        return len(self._entries)

    def size(self) -> tuple[int, int]:
        return len(self._entries), self._bytes

    async def get(self, key: str) -> bytes | None:
        hit = self._entries.get(key)
        if hit is None:
            return None
        expires, value = hit
        if expires <= time.monotonic():
            del self._entries[key]
            self._bytes -= len(value)
            self._on_evict("expired")
            return None
        self._entries.move_to_end(key)
        return value

    def put_soon(self, key: str, value: bytes, ttl_s: float) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= len(old[1])
        self._entries[key] = (time.monotonic() + ttl_s, value)
        self._bytes += len(value)
        while len(self._entries) > self.max_entries:
            _key, (_exp, dropped) = self._entries.popitem(last=False)
            self._bytes -= len(dropped)
            self._on_evict("lru")

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        self.put_soon(key, value, ttl_s)


class RedisStore:
    """`SET key value PX ttl` / `GET key` under the policy's prefix; one round trip each."""

    synchronous = False

    def __init__(self, url: str, prefix: str, timeout_s: float = 0.5) -> None:
        import redis.asyncio as aioredis

        from gateway.redis_packing import packed

        self.prefix = prefix
        self._redis = aioredis.from_url(url, socket_timeout=timeout_s,
                                        socket_connect_timeout=timeout_s)
        packed(self._redis.connection_pool)  # a lookup per request: C packing, as limits
        # Writes in flight (a task nobody holds may be collected before it ran).
        self._writes: set[asyncio.Task[None]] = set()

    def size(self) -> tuple[int, int]:
        return 0, 0

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

    def put_soon(self, key: str, value: bytes, ttl_s: float) -> None:
        task = asyncio.get_running_loop().create_task(self.put(key, value, ttl_s))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def aclose(self) -> None:
        await self._redis.aclose()

"""Signed-out console sessions: a session id (the cookie's nonce) that sign-out revoked stops
working on every replica, even in a copied cookie, until the cookie would have expired anyway.

Where the record lives:
- Redis, when the policy has `state.redis_url` (every replica then shares it):
  `SET {state.key_prefix}console:signed_out:{sid} 1 EXAT {cookie expiry}` at sign-out, one
  `EXISTS` per console request. If Redis cannot answer, the request is refused with a 503
  rather than let a possibly signed-out cookie through (the console is not the API's hot path).
- Otherwise this process's memory. Without Redis the gateway is one process (`--workers` above
  1 is refused without it), so memory is shared by all it serves; what memory cannot do is
  outlive a restart, so its cookies also carry this process's boot id (`epoch`) and a restart
  ends every console session instead of reviving signed-out ones.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any, Protocol

from gateway.errors import ServiceUnavailable

log = logging.getLogger("gateway.console")


class Revocations(Protocol):
    epoch: str | None
    """Set where revocations die with the process: cookies must carry it to verify."""

    async def revoke(self, sid: str, until: float) -> None:
        """Session `sid` is signed out; remember it until `until` (epoch s, its expiry)."""
        ...

    async def is_revoked(self, sid: str) -> bool: ...

    async def close(self) -> None:
        """Let go of what the store holds open (the Redis connection pool)."""
        ...


class MemoryRevocations:
    def __init__(self) -> None:
        self.epoch: str | None = secrets.token_urlsafe(8)
        self._until: dict[str, float] = {}

    async def revoke(self, sid: str, until: float) -> None:
        now = time.time()
        if len(self._until) > 10_000:  # expired ones can go: their cookies no longer verify
            self._until = {k: t for k, t in self._until.items() if t > now}
        self._until[sid] = until

    async def is_revoked(self, sid: str) -> bool:
        return sid in self._until

    async def close(self) -> None:
        pass


class RedisRevocations:
    epoch: str | None = None

    def __init__(self, url: str, prefix: str) -> None:
        # Imported here: a gateway without Redis never loads the client (8 MB resident).
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError

        self._redis: Any = aioredis.Redis.from_url(url, socket_timeout=1.0,
                                                   socket_connect_timeout=1.0)
        self._errors = (RedisError, OSError)
        self._prefix = prefix + "console:signed_out:"

    async def revoke(self, sid: str, until: float) -> None:
        try:
            await self._redis.set(self._prefix + sid, b"1", exat=max(int(until) + 1,
                                                                     int(time.time()) + 1))
        except self._errors as e:
            log.warning("console sign-out could not be recorded in Redis (%s)",
                        type(e).__name__)
            raise ServiceUnavailable("Sign-out could not be recorded (the shared state store "
                                     "is unreachable). Retry shortly.",
                                     headers={"retry-after": "2"}) from None

    async def is_revoked(self, sid: str) -> bool:
        try:
            return bool(await self._redis.exists(self._prefix + sid))
        except self._errors as e:
            log.warning("console session check could not reach Redis (%s)", type(e).__name__)
            raise ServiceUnavailable("The console cannot check sessions right now (the shared "
                                     "state store is unreachable). Retry shortly.",
                                     headers={"retry-after": "2"}) from None

    async def close(self) -> None:
        await self._redis.aclose()


def open_revocations(redis_url: str | None, key_prefix: str) -> Revocations:
    return RedisRevocations(redis_url, key_prefix) if redis_url else MemoryRevocations()

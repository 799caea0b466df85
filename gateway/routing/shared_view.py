"""Many gateway replicas, one view: per-deployment load and prefix ownership shared through
Redis (`state.redis_url`), so N replicas route as one would.

Each replica, every `INTERVAL_S`, in one round trip (a Lua script, `_EXCHANGE`):

- publishes its own in-flight count per deployment (a hash field per replica, with a
  heartbeat in a sorted set scored by Redis's own clock) and reads every other live
  replica's. The sum of the others' is added to this replica's own in `SignalCollector`, so
  `prefix-load` and `least-busy` count the whole cluster's requests ahead. Decisions are
  counted too: an attempt begins (and counts in flight) as soon as it is planned. Between
  exchanges the others' counts follow this replica's own moves in part
  (`SignalCollector.set_remote`), so a view held still does not herd every replica onto the
  deployment that looked least busy at the last exchange.
- appends the prompts it routed since the last exchange (`PrefixIndex.outbox`: deployment,
  fingerprints, tokens per chunk) to a capped stream, and reads the entries the others
  appended since its last read, recording them into its own index. A prefix one replica sent
  to `gpu-3` is then known on every replica to be cached on `gpu-3`. Fingerprints are
  xxHash3 of the text (`prefix_index`), the same in every process.

Staleness is bounded: a replica that has not exchanged for `STALE_S` (by Redis's clock) is
dropped from everyone's view by the script, and a replica that cannot reach Redis for
`STALE_S` drops the others' loads and routes on its own view alone (its own in-flight counts
and the prefix records it already has), until Redis answers again. Nothing here is on the
request path: the request path only leaves its record for the outbox (`PrefixIndex.
record_later`, applied after the decision; reading `outbox` applies any still pending, so the
exchange misses none) and reads the counts the last exchange left in memory; the exchange
runs in its own task.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.policy.models import Policy
from gateway.routing.periodic import cancel, every
from gateway.routing.prefix_index import Record

if TYPE_CHECKING:
    from gateway.routing.signals import SignalCollector

log = logging.getLogger(__name__)

INTERVAL_S = 0.25
"""Seconds between two exchanges. In the simulator (docs/routing.md, "Shared view across
replicas") four replicas sharing every 0.25-1 s route RAG as one replica does, and chat
conversations at its TTFT p50 and within 14-18 % of its p99 (with `prefix-load`'s learnt
queue weight; every 50 ms bought little even before it)."""
STALE_S = 2.0
"""A replica not heard from for this long is left out of the view; Redis unreachable this
long, a replica routes on its own view."""
STREAM_MAX = 2048
"""Prefix-record batches kept in the stream (about a minute of four busy replicas)."""
READ_MAX = 32
"""Batches read per exchange: a replica starting, or catching up after an outage, spreads the
work over several exchanges rather than holding its event loop."""
APPLY_SLICE = 512
"""Records applied between two yields to the event loop."""

_EXCHANGE = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stale = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[1])
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - stale)
for _, r in ipairs(dead) do
  redis.call('HDEL', KEYS[1], r)
  redis.call('ZREM', KEYS[2], r)
end
if ARGV[4] ~= '' then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'r', ARGV[1], 'p', ARGV[4])
end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], stale * 30) end
local recs
if ARGV[6] == '' then
  recs = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', ARGV[7])
else
  recs = redis.call('XRANGE', KEYS[3], '(' .. ARGV[6], '+', 'COUNT', ARGV[7])
end
return {redis.call('HGETALL', KEYS[1]), recs}
"""

_encode = msgspec.msgpack.Encoder().encode
_loads_decoder = msgspec.msgpack.Decoder(dict[str, int])
_records_decoder = msgspec.msgpack.Decoder(list[tuple[str, list[int], list[int]]])


def batch(records: Sequence[Record]) -> list[Record]:
    """The records worth publishing: one per (deployment, prompt), the latest (a hot prompt
    routed a hundred times in an interval is sent once)."""
    latest: dict[tuple[str, int], Record] = {}
    for r in records:
        if r[1]:
            key = (r[0], r[1][-1])  # the last fingerprint is chained on the whole prompt
            latest.pop(key, None)
            latest[key] = r
    return list(latest.values())


def encode_records(records: Sequence[Record]) -> bytes:
    return _encode([(d, list(f), list(t)) for d, f, t in records]) if records else b""


def decode_records(payload: bytes) -> list[Record]:
    return list(_records_decoder.decode(payload))


def encode_loads(in_flight: Mapping[str, int]) -> bytes:
    return _encode(dict(in_flight))


def remote_loads(own: str, payloads: Mapping[str, bytes]) -> dict[str, int]:
    """Sum of the other replicas' in-flight counts per deployment; unreadable entries (an
    older or newer replica's format) are skipped."""
    out: dict[str, int] = {}
    for replica, payload in payloads.items():
        if replica == own:
            continue
        try:
            loads = _loads_decoder.decode(payload)
        except msgspec.DecodeError:
            continue
        for did, n in loads.items():
            if n > 0:
                out[did] = out.get(did, 0) + n
    return out


class SharedView:
    """This replica's side of the shared view; owned by the `SignalCollector` it feeds."""

    def __init__(self, collector: SignalCollector, redis: Any, *, key_prefix: str,
                 replica: str | None = None, interval_s: float = INTERVAL_S,
                 stale_s: float = STALE_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._collector = collector
        self._redis = redis
        self._script = redis.register_script(_EXCHANGE)
        self._keys = [f"{key_prefix}view:loads", f"{key_prefix}view:beats",
                      f"{key_prefix}view:prefixes"]
        self.replica = replica or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._interval = interval_s
        self._stale = stale_s
        self._clock = clock
        self._last_id = ""  # stream position read up to; "" until the first exchange
        self._ok_at = clock()
        self._down = False
        self._task: asyncio.Task[None] | None = None
        collector.prefixes.outbox = []
        self.exchanges = 0
        """Successful exchanges (tests poll it instead of sleeping)."""
        self.replicas = 1
        """Live replicas in the last successful exchange, this one included."""

    @classmethod
    def from_policy(cls, policy: Policy, collector: SignalCollector) -> SharedView:
        assert policy.state.redis_url
        return cls(collector, redis_client(policy.state.redis_url),
                   key_prefix=policy.state.key_prefix)

    def _take_records(self) -> list[Record]:
        index = self._collector.prefixes
        records, index.outbox = index.outbox or [], []
        return batch(records)

    async def exchange(self) -> bool:
        """One round trip: publish this replica's loads and records, take the others'.
        False (and nothing raised) when Redis could not be reached."""
        from redis.exceptions import RedisError

        records = self._take_records()  # dropped if the exchange fails: they are hints
        args = [self.replica, encode_loads(self._collector.local_in_flight()),
                int(self._stale * 1000), encode_records(records), STREAM_MAX, self._last_id,
                READ_MAX]
        try:
            loads, entries = await self._script(keys=self._keys, args=args)
        except (RedisError, OSError, TimeoutError) as e:
            self._unreachable(e)
            return False
        if self._down:
            log.warning("shared routing view: Redis reachable again; sharing resumed")
            self._down = False
        self._ok_at = self._clock()
        payloads = {_str(loads[i]): loads[i + 1] for i in range(0, len(loads), 2)}
        self.replicas = len(payloads)
        others = len(payloads) - (self.replica in payloads)
        self._collector.set_remote(remote_loads(self.replica, payloads), others)
        if not self._last_id:
            entries = entries[::-1]  # the newest first on a (re)start: oldest first to apply
        await self._apply(entries)
        self.exchanges += 1
        return True

    async def _apply(self, entries: Sequence[Any]) -> None:
        index = self._collector.prefixes
        applied = 0
        for entry_id, fields in entries:
            self._last_id = _str(entry_id)
            f = {_str(fields[i]): fields[i + 1] for i in range(0, len(fields), 2)}
            if _str(f.get("r", b"")) == self.replica:
                continue
            try:
                records = decode_records(f.get("p", b""))
            except msgspec.DecodeError:
                continue
            for did, fps, tokens in records:
                if len(fps) == len(tokens):
                    index.record(did, fps, tokens, publish=False)
            applied += len(records)
            if applied >= APPLY_SLICE:
                applied = 0
                await asyncio.sleep(0)

    def _unreachable(self, e: BaseException) -> None:
        if self._clock() - self._ok_at < self._stale:
            return
        if not self._down:
            log.warning("shared routing view: Redis unreachable for %.1f s (%s); routing on "
                        "this replica's own view", self._stale, type(e).__name__)
            self._down = True
            self._last_id = ""  # the stream may have moved past the cap: restart at its end
        self._collector.set_remote({})
        self.replicas = 1

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                every(self._interval, self._clock, self.exchange, log,
                      "shared routing view exchange"), name="shared-view")

    async def stop(self) -> None:
        """Stop exchanging and leave the view at once (the others stop counting this
        replica's requests now, not `STALE_S` later)."""
        from redis.exceptions import RedisError

        task, self._task = self._task, None
        if task is not None:
            await cancel(task)
            try:
                await asyncio.wait_for(self._leave(), timeout=1.0)
            except (RedisError, OSError, TimeoutError):
                pass  # Redis away: the others drop this replica when its heartbeat is stale
        await self._redis.aclose()

    async def _leave(self) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.hdel(self._keys[0], self.replica)
        pipe.zrem(self._keys[1], self.replica)
        await pipe.execute()


def redis_client(url: str) -> Any:
    """The view's own Redis client: short timeouts, so a hung Redis cannot stall an exchange
    past the staleness bound, and one immediate retry on a broken pooled connection (Redis
    restarted), as the limiter does; an exchange is idempotent enough to repeat."""
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    timeout = min(1.0, STALE_S / 2)
    return aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                   retry=Retry(NoBackoff(), 1),
                                   retry_on_error=[RedisConnectionError])


def _str(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)

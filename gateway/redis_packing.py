"""Redis commands packed by hiredis, in C, for redis-py's asyncio client.

redis-py's synchronous client packs each command with `hiredis.pack_command` when hiredis is
installed; its asyncio client (8.1) still packs in Python, argument by argument. An admission
is one EVALSHA of some twenty keys and numbers, and each request also settles: packing cost
~22 µs a command in Python against ~3.5 µs in hiredis (a loaded core, 2026-12-03). `packed`
gives a pool's connections the synchronous client's packer — the same rules (a command name
with a space is split into words; bytearray and memoryview are sent as bytes; a type Redis
cannot take is a `DataError`) and the same bytes on the wire
(`tests/unit/limits/test_redis_packing.py` checks both against redis-py's own packer).
"""

from __future__ import annotations

from typing import Any

import hiredis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import DataError


class HiredisPacking:
    """A mixin for a redis-py asyncio connection class: `pack_command` in C."""

    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0]
        if isinstance(first, str):
            args = (*first.encode().split(), *args[1:])
        elif b" " in first:
            args = (*first.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            # hiredis takes str, bytes, int and float: convert what redis-py also sends as
            # bytes (only then, so that the common case stays one C call).
            args = tuple(bytes(a) if isinstance(a, bytearray | memoryview) else a
                         for a in args)
            try:
                return [hiredis.pack_command(args)]
            except TypeError as e:
                raise DataError(str(e)) from None


_CLASSES: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def _with_packing(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    """One subclass per connection kind, however many pools (a class per pool would be a
    leak for whatever makes pools at run time)."""
    if issubclass(cls, HiredisPacking):
        return cls
    got = _CLASSES.get(cls)
    if got is None:
        got = _CLASSES[cls] = type(f"Hiredis{cls.__name__}", (HiredisPacking, cls), {})
    return got


def packed(pool: ConnectionPool) -> ConnectionPool:
    """`pool`, its connections (TCP, TLS or a Unix socket: whatever its URL made) packing
    with hiredis. Call before the pool makes its first connection."""
    pool.connection_class = _with_packing(pool.connection_class)
    return pool

"""`gateway.redis_packing`: hiredis packs every command into the very bytes redis-py's own
asyncio packer would send, refuses what it refuses, and keeps the pool's connection kind."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import DataError

from gateway.redis_packing import HiredisPacking, packed


class _Packed(HiredisPacking, Connection):
    pass


PYTHON = Connection()
HIREDIS = _Packed()

# What the gateway sends (key names, hold ids, limits, nanodollars) and what any other caller
# of the client might: every type redis-py's encoder takes.
names = st.sampled_from(["EVALSHA", "GET", "SET", "CONFIG GET", b"EVALSHA", b"SCRIPT LOAD",
                         "HSET", "ZADD"])
args = st.one_of(st.text(), st.binary(), st.integers(min_value=-(2**70), max_value=2**70),
                 st.floats(allow_nan=False), st.binary().map(bytearray),
                 st.binary().map(memoryview))


def _wire(conn: Connection, *command: Any) -> bytes:
    return b"".join(bytes(part) for part in conn.pack_command(*command))


@settings(max_examples=500, deadline=None, database=None)
@given(names, st.lists(args, max_size=24))
def test_same_bytes_as_redis_py(name: Any, rest: list[Any]) -> None:
    assert _wire(HIREDIS, name, *rest) == _wire(PYTHON, name, *rest)


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.lists(args, min_size=1, max_size=8), min_size=1, max_size=8))
def test_pipelines_same_bytes(commands: list[list[Any]]) -> None:
    cmds = [("EVALSHA", *c) for c in commands]
    got = b"".join(bytes(p) for p in HIREDIS.pack_commands(cmds))
    assert got == b"".join(bytes(p) for p in PYTHON.pack_commands(cmds))


@pytest.mark.parametrize("bad", [None, True, object(), [1]])
def test_refuses_what_redis_py_refuses(bad: Any) -> None:
    with pytest.raises(DataError):
        PYTHON.pack_command("SET", "k", bad)
    with pytest.raises(DataError):
        HIREDIS.pack_command("SET", "k", bad)


def test_pool_keeps_its_connection_kind() -> None:
    tcp = packed(aioredis.ConnectionPool.from_url("redis://127.0.0.1:6379/0"))
    unix = packed(aioredis.ConnectionPool.from_url("unix:///tmp/redis.sock"))
    assert issubclass(tcp.connection_class, Connection)
    assert issubclass(unix.connection_class, UnixDomainSocketConnection)
    assert issubclass(tcp.connection_class, HiredisPacking)
    assert issubclass(unix.connection_class, HiredisPacking)
    # One class per kind, however many pools.
    again = packed(aioredis.ConnectionPool.from_url("redis://127.0.0.1:6379/1"))
    assert again.connection_class is tcp.connection_class


@pytest.mark.asyncio
async def test_round_trip_through_real_redis() -> None:
    """Against the Redis on 127.0.0.1:6379: the packed client's commands do what they say."""
    client = aioredis.Redis(connection_pool=packed(
        aioredis.ConnectionPool.from_url("redis://127.0.0.1:6379/0")))
    key = f"test-redis-packing-{uuid.uuid4().hex[:8]}:é:key"  # a fresh prefix per run
    try:
        await client.set(key, "välue ☃", ex=30)
        assert await client.get(key) == "välue ☃".encode()
        assert await client.eval("return {KEYS[1], ARGV[1], ARGV[2]}", 1, key, 7, 2.5) == [
            key.encode(), b"7", b"2.5"]
        pipe = client.pipeline(transaction=False)
        pipe.incrby(key + ":n", 5)
        pipe.expire(key + ":n", 30)
        assert await pipe.execute() == [5, True]
    finally:
        await client.delete(key, key + ":n")
        await client.aclose()

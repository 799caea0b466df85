"""Streaming load: `concurrency` aiohttp workers, each posting a streamed request as soon as
its last one ended, for a fixed time. Per request it records time to the first body bytes
(TTFB), to the first content token (TTFT: the first chat content chunk, or the first
`response.output_text.delta` of a Responses stream) and to the end of the stream.

    python -m bench.overhead.stream_client --url http://127.0.0.1:4000/v1/chat/completions \\
        --model bench-stream --concurrency 16 --seconds 10
    python -m bench.overhead.stream_client --api responses \\
        --url http://127.0.0.1:4000/v1/responses --model bench-responses-stream
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp


def pct(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile (what wrk reports too)."""
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, -(-len(sorted_values) * p // 100) - 1))
    return sorted_values[int(k)]


def body_for(model: str) -> bytes:
    return json.dumps({
        "model": model, "stream": True, "max_tokens": 64,
        "messages": [{"role": "user", "content": "Count to twenty."}],
    }, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Markers:
    """Bytes that mark, in a stream, its first content token and its end."""

    first_token: bytes = b" tok"  # the chat mock's content tokens (its first chunk: the role)
    end: bytes = b"[DONE]"


async def _one(session: aiohttp.ClientSession, url: str, body: bytes,
               headers: Mapping[str, str], timeout: float,
               marks: Markers) -> tuple[float, float, float, int, bool]:
    t0 = time.perf_counter()
    # TTFT is the first *content* token (what a user waits for); the first bytes can be a
    # role-only chunk (or Responses' lifecycle events), which the gateway holds until content
    # exists (so that a stream that drops before any content can still fall back), so they
    # are recorded apart, as TTFB.
    ttfb = float("nan")
    ttft = float("nan")
    events = 0
    done = False
    # A marker may straddle two reads: each read is searched with the end of the one before.
    carry = b""
    keep = max(len(marks.first_token), len(marks.end)) - 1
    async with session.post(url, data=body, headers=headers,
                            timeout=aiohttp.ClientTimeout(total=timeout)) as r:
        ok = r.status == 200
        while True:
            data = await r.content.readany()
            if not data:
                break
            if events == 0:
                ttfb = time.perf_counter() - t0
            seen = carry + data
            if ttft != ttft and marks.first_token in seen:
                ttft = time.perf_counter() - t0
            events += data.count(b"data:")
            if marks.end in seen:
                done = True
            carry = seen[-keep:]
    return ttfb, ttft, time.perf_counter() - t0, events, ok and done


async def measure(url: str, body: bytes, *, concurrency: int, seconds: float,
                  headers: Mapping[str, str] | None = None, marks: Markers = Markers(),
                  timeout: float = 30.0) -> dict[str, Any]:
    """Closed loop for `seconds`; requests that start before the deadline count."""
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    ttfts: list[float] = []
    ttfbs: list[float] = []
    totals: list[float] = []
    events = 0
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal events, errors
        while time.perf_counter() < deadline:
            try:
                ttfb, ttft, total, n, ok = await _one(session, url, body, hdrs, timeout,
                                                      marks)
            except (aiohttp.ClientError, TimeoutError):
                errors += 1
                await asyncio.sleep(0.01)  # a refused connection must not spin the loop
                continue
            if not ok:
                errors += 1
                continue
            ttfts.append(ttft)
            ttfbs.append(ttfb)
            totals.append(total)
            events += n

    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ttfts.sort()
    ttfbs.sort()
    totals.sort()
    ms = 1000.0
    return {
        "concurrency": concurrency,
        "requests": len(ttfts),
        "errors": errors,
        "elapsed_s": elapsed,
        "streams_per_s": len(ttfts) / elapsed if elapsed else 0.0,
        "events": events,
        "ttft_ms": {"p50": pct(ttfts, 50) * ms, "p90": pct(ttfts, 90) * ms,
                    "p99": pct(ttfts, 99) * ms,
                    "mean": sum(ttfts) / len(ttfts) * ms if ttfts else float("nan")},
        "ttfb_ms": {"p50": pct(ttfbs, 50) * ms, "p90": pct(ttfbs, 90) * ms,
                    "p99": pct(ttfbs, 99) * ms},
        "total_ms": {"p50": pct(totals, 50) * ms, "p90": pct(totals, 90) * ms,
                     "p99": pct(totals, 99) * ms,
                     "mean": sum(totals) / len(totals) * ms if totals else float("nan")},
    }


def run(url: str, body: bytes, **kw: Any) -> dict[str, Any]:
    import uvloop

    return uvloop.run(measure(url, body, **kw))


def main(argv: list[str] | None = None) -> None:
    from bench.overhead.apis import APIS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--api", choices=sorted(APIS), default="chat")
    p.add_argument("--model", default="bench-stream")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--api-key", default=None)
    a = p.parse_args(argv)
    api = APIS[a.api]
    headers = {"Authorization": f"Bearer {a.api_key}"} if a.api_key else {}
    print(json.dumps(run(a.url, api.stream_body(a.model, None), concurrency=a.concurrency,
                         seconds=a.seconds, headers=headers,
                         marks=api.marks), indent=2))


if __name__ == "__main__":
    main()

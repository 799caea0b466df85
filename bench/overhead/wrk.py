"""Non-streaming load with wrk: one thread on the load core, a Lua script that POSTs a chat
completion and prints wrk's own latency percentiles as JSON when the run is done."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.overhead.procs import LOAD_CPU

BODY = json.dumps({
    "model": "bench-model",
    "messages": [{"role": "user", "content": "Hello, how are you?"}],
    "max_tokens": 16,
}, separators=(",", ":"))

# `response()` is deliberately not defined: wrk would then build a Lua table of every reply's
# headers and body, which costs the load generator more than nginx costs the mock. Non-2xx
# replies are still counted (summary.errors.status).
LUA = """\
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write("WRKJSON ")
  io.write(string.format(
    '{{"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}},' ..
    '"latency_us":{{"mean":%.1f,"stdev":%.1f,"min":%d,"max":%d,' ..
    '"p50":%d,"p90":%d,"p99":%d,"p999":%d}}}}\\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.stdev, latency.min, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
"""


def _lua_str(s: str) -> str:
    # Lua long brackets take the text verbatim; the level is chosen to not occur in it.
    level = "=" * 3
    assert f"]{level}]" not in s
    return f"[{level}[{s}]{level}]"


def write_script(path: Path, body: str = BODY, headers: Mapping[str, str] | None = None) -> Path:
    # The spaces matter: `[[` would open a long string.
    lines = [f"wrk.headers[ {_lua_str(k)} ] = {_lua_str(v)}"
             for k, v in (headers or {}).items()]
    path.write_text(LUA.format(body=_lua_str(body), headers="\n".join(lines)))
    return path


def run(url: str, script: Path, *, connections: int, seconds: float,
        timeout_s: float = 10.0) -> dict[str, Any]:
    """One wrk run pinned to the load core; wrk's numbers plus requests per second."""
    argv = ["taskset", "-c", str(LOAD_CPU), "wrk", "-t1", f"-c{connections}",
            f"-d{max(1, round(seconds))}s", f"--timeout={timeout_s:g}s", "-s", str(script), url]
    # wrk stops itself after -d; the subprocess bound is a backstop for a stuck target.
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + timeout_s + 30,
                         check=False)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-800:]} "
                           f"{out.stderr[-800:]}")
    res: dict[str, Any] = json.loads(line[len("WRKJSON "):])
    res["connections"] = connections
    res["rps"] = res["requests"] / (res["duration_us"] / 1e6) if res["duration_us"] else 0.0
    res["error_count"] = sum(res["errors"].values())
    if res["error_count"] > 0.01 * max(1, res["requests"]):
        # Refusals are fast: counting them as throughput would flatter a broken target.
        raise RuntimeError(f"wrk against {url}: {res['error_count']} errors in "
                           f"{res['requests']} requests ({res['errors']})")
    return res

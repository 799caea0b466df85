"""How the policy's size costs at start-up: a generated policy with N tenants (one key each,
rpm/tpm/concurrency limits and a monthly budget), then `gateway policy check` and the app's
build (what `gateway serve` does before it listens), each in its own process; and with
`--keys K`, K run-time keys in the key store (the ledger's SQLite database, as `gateway keys
create` leaves them), loaded as `serve` loads them before it reports ready.

    .venv/bin/python bench/scale_tenants.py --tenants 1,10000
    .venv/bin/python bench/scale_tenants.py --tenants 10000 --keys 1,100000

Reported per N (and K): the policy file's size; `policy check` CPU seconds and peak RSS; the
start-up's CPU seconds (policy load + `build_app` + the key store's first load) and the RSS
after it; and what one admission costs (authenticate + the limiter's plan, the work that
depends on how many keys there are): CPU µs per admission over 100,000 admissions. CPU
seconds (user + system, from `getrusage`) rather than wall time, because the machine may be
shared.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

# Runs in the child: load + build + the key store's first load, then report its own CPU and
# RSS; then the admission cost (its CPU measured apart from the start-up's).
_BUILD = """
import asyncio, json, resource, sys, time
from gateway.policy.load import load_policy
from gateway.app import build_app
from gateway.limits.rules import Rules

def cpu():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime

policy = load_policy(sys.argv[1])
app = build_app(policy, policy_path=sys.argv[1])
auth = app.state.deps.auth
asyncio.run(auth.refresh())  # what `auth.start()` does first, as serve starts
startup = cpu()
rss = int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024
rules, n, key = Rules(policy.tenants), 100_000, sys.argv[2]
t0 = cpu()
for _ in range(n):
    rules.plan(auth.authenticate(key), "chat")
admission_us = (cpu() - t0) * 1e6 / n
print(json.dumps({"cpu_s": startup, "rss_mb": rss, "keys": len(auth._entries),
                  "admission_us": admission_us}))
"""


# `gateway policy check FILE` in a child that reports its own peak RSS as it exits (the
# children's `ru_maxrss` is the largest of every child so far, not this one's).
_CHECK = """
import atexit, resource, runpy, sys
atexit.register(lambda: print("PEAK_RSS_MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                              / 1024, file=sys.stderr))
sys.argv = ["gateway", "policy", "check", sys.argv[1]]
runpy.run_module("gateway", run_name="__main__")
"""


def policy(n: int, tmp: Path) -> dict:
    tenants = {}
    for i in range(n):
        digest = hashlib.sha256(f"sk-tenant-{i}".encode()).hexdigest()
        tenants[f"tenant-{i:05d}"] = {
            "keys": [{"id": f"key-{i:05d}", "hash": f"sha256:{digest}"}],
            "limits": {"rpm": 600, "tpm": 100_000, "concurrency": 20},
            "budget": {"monthly_usd": "100"},
        }
    return {
        "version": 1,
        "ledger": {"url": f"sqlite:///{tmp}/ledger.db", "spill_path": f"{tmp}/spill.jsonl"},
        "providers": {"up": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1"}},
        "models": {"chat": {"deployments": [{"provider": "up", "model": "m"}]}},
        "tenants": tenants,
    }


def _child(argv: list[str]) -> tuple[float, float, str]:
    """(CPU seconds, peak RSS MB) of one child process, and its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=600,
                         check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        raise RuntimeError(f"{argv} failed: {out.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    peak = [float(line.split()[1]) for line in out.stderr.splitlines()
            if line.startswith("PEAK_RSS_MB ")]
    return cpu, peak[-1] if peak else after.ru_maxrss / 1024, out.stdout


def add_keys(tmp: Path, tenants: int, keys: int) -> str:
    """`keys` run-time keys spread over the tenants, written as the key store writes them
    (one revision each); returns the plaintext of the last one."""
    from gateway.keys import SqliteKeyStore, _iso, generate_key, hash_key, mask_key

    store = SqliteKeyStore(str(tmp / "ledger.db"))
    conn = store._connect()
    now = _iso(datetime.now(UTC))
    key = ""
    rows = []
    for i in range(keys):
        key = generate_key()
        rows.append((f"key_{i:016x}", hash_key(key), f"tenant-{i % tenants:05d}", None,
                     mask_key(key), now, None, None, i + 1))
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO gateway_keys (id, hash, tenant, name, hint, created_at, "
                     "expires_at, revoked_at, revision) VALUES (?,?,?,?,?,?,?,?,?)", rows)
    conn.execute("UPDATE gateway_key_revision SET value = ? WHERE id = 1", (keys,))
    conn.execute("COMMIT")
    conn.close()
    return key


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tenants", default="1,10000")
    p.add_argument("--keys", default="0",
                   help="comma-separated counts of run-time keys in the key store")
    a = p.parse_args()
    rows = []
    for n in (int(x) for x in a.tenants.split(",")):
        for k in (int(x) for x in a.keys.split(",")):
            tmp = Path(tempfile.mkdtemp(prefix=f"bench-tenants-{n}-{k}-"))
            path = tmp / "policy.yaml"
            path.write_text(yaml.safe_dump(policy(n, tmp), sort_keys=False))
            # Admission with a policy key when there are no run-time keys, else a store key.
            key = add_keys(tmp, n, k) if k else "sk-tenant-0"
            check_cpu, check_rss, _ = _child([sys.executable, "-c", _CHECK, str(path)])
            _, _, out = _child([sys.executable, "-c", _BUILD, str(path), key])
            build = json.loads(out.strip().splitlines()[-1])
            rows.append({"tenants": n, "keys": k, "policy_kb": path.stat().st_size // 1024,
                         "check_cpu_s": round(check_cpu, 2),
                         "check_peak_rss_mb": round(check_rss),
                         "build_cpu_s": round(build["cpu_s"], 2),
                         "build_rss_mb": round(build["rss_mb"]),
                         "admission_us": round(build["admission_us"], 1)})
            print(json.dumps(rows[-1]), file=sys.stderr)
    print("| tenants | run-time keys | policy KiB | `policy check` CPU s | its peak RSS MB "
          "| start-up CPU s (load + build_app + keys) | RSS after it MB "
          "| CPU µs per admission |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tenants']:,} | {r['keys']:,} | {r['policy_kb']:,} | {r['check_cpu_s']} | "
              f"{r['check_peak_rss_mb']} | {r['build_cpu_s']} | {r['build_rss_mb']} | "
              f"{r['admission_us']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

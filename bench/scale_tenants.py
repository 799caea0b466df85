"""How the policy's size costs at start-up: a generated policy with N tenants (one key each,
rpm/tpm/concurrency limits and a monthly budget), then `gateway policy check` and the app's
build (what `gateway serve` does before it listens), each in its own process.

    .venv/bin/python bench/scale_tenants.py --tenants 1,10000

Reported per N: the policy file's size; `policy check` CPU seconds and peak RSS; the build's
CPU seconds (policy load + `build_app`) and the RSS after it. CPU seconds (user + system, from
`getrusage`) rather than wall time, because the machine may be shared.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

# Runs in the child: load + build, then report its own CPU and RSS.
_BUILD = """
import json, resource, sys, time
from gateway.policy.load import load_policy
from gateway.app import build_app
policy = load_policy(sys.argv[1])
build_app(policy, policy_path=sys.argv[1])
ru = resource.getrusage(resource.RUSAGE_SELF)
rss = int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024
print(json.dumps({"cpu_s": ru.ru_utime + ru.ru_stime, "rss_mb": rss}))
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
    return cpu, after.ru_maxrss / 1024, out.stdout


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tenants", default="1,10000")
    a = p.parse_args()
    rows = []
    for n in (int(x) for x in a.tenants.split(",")):
        tmp = Path(tempfile.mkdtemp(prefix=f"bench-tenants-{n}-"))
        path = tmp / "policy.yaml"
        path.write_text(yaml.safe_dump(policy(n, tmp), sort_keys=False))
        check_cpu, check_rss, _ = _child([sys.executable, "-m", "gateway", "policy", "check",
                                          str(path)])
        _, _, out = _child([sys.executable, "-c", _BUILD, str(path)])
        build = json.loads(out.strip().splitlines()[-1])
        rows.append({"tenants": n, "policy_kb": path.stat().st_size // 1024,
                     "check_cpu_s": round(check_cpu, 2), "check_peak_rss_mb": round(check_rss),
                     "build_cpu_s": round(build["cpu_s"], 2),
                     "build_rss_mb": round(build["rss_mb"])})
        print(json.dumps(rows[-1]), file=sys.stderr)
    print("| tenants | policy KiB | `policy check` CPU s | its peak RSS MB (max of children) "
          "| start-up CPU s (load + build_app) | RSS after it MB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tenants']:,} | {r['policy_kb']:,} | {r['check_cpu_s']} | "
              f"{r['check_peak_rss_mb']} | {r['build_cpu_s']} | {r['build_rss_mb']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

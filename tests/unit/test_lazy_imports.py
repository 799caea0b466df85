"""The embedded default never loads what only Redis, PostgreSQL or a secrets guard need:
psycopg, redis and detect-secrets cost 11, 8 and 5 MB resident (issue 9's memory target), so
they are imported where those are configured. Each case builds the app in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("psycopg", "redis", "detect_secrets")

_BUILD = """
import json, sys
from gateway.app import build_app
from gateway.policy.load import load_policy
from gateway.stages.registry import build_stages
policy = load_policy(sys.argv[1])
build_app(policy)
build_stages(policy, None)  # what serve's start-up adds (the runtime is only stored)
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def _loaded(policy: Path) -> list[str]:
    out = subprocess.run([sys.executable, "-c", _BUILD.format(heavy=HEAVY), str(policy)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


def test_the_default_policy_loads_none_of_them() -> None:
    assert _loaded(ROOT / "policies" / "default.yaml") == []


@pytest.mark.parametrize(("extra", "expected"), [
    ("guards:\n  keys:\n    detector: {kind: secrets}\n    action: block\n",
     ["detect_secrets"]),
    ("state:\n  redis_url: redis://127.0.0.1:1/0\n", ["redis"]),
])
def test_what_is_configured_is_loaded(tmp_path: Path, extra: str, expected: list[str]) -> None:
    """The check above can fail: configuring the feature loads its library."""
    policy = tmp_path / "policy.yaml"
    policy.write_text((ROOT / "policies" / "default.yaml").read_text() + "\n" + extra)
    assert _loaded(policy) == expected

"""docs/policy.md documents every key the policy accepts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_policy_reference_is_generated_from_the_models() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_policy_docs.py"), "--check"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr

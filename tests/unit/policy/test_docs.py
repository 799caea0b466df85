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


def test_the_example_policy_uses_every_documented_key() -> None:
    """policies/example.yaml says it uses every key: each key of the generated reference
    appears in it (but `api_key_file`, which must name an existing file)."""
    import re

    doc = (ROOT / "docs" / "policy.md").read_text()
    example = (ROOT / "policies" / "example.yaml").read_text()
    missing, section = [], None
    for line in doc.splitlines():
        if m := re.match(r"### `(.+)`", line):
            section = m.group(1)
        elif section and (m := re.match(r"\| `([a-z_]+)` \|", line)):
            key = m.group(1)
            if key != "api_key_file" and not re.search(rf"\b{key}\s*:", example):
                missing.append(f"{section}: {key}")
    assert not missing, "add to policies/example.yaml: " + ", ".join(missing)

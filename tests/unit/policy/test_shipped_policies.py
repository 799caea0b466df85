"""Every policy in policies/ passes `gateway policy check` with no error and no warning: they are
what people copy, so a warning there teaches a mistake."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.cli import main

POLICIES = sorted((Path(__file__).resolve().parents[3] / "policies").glob("*.yaml"))
# `${NAME}` with no `:-default`: a secret the operator must export (a dummy stands in here).
REQUIRED_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def test_there_are_policies_to_check() -> None:
    assert {p.name for p in POLICIES} >= {"default.yaml", "example.yaml"}


@pytest.mark.parametrize("path", POLICIES, ids=lambda p: p.name)
def test_policy_check_prints_no_error_and_no_warning(
        path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name in REQUIRED_ENV.findall(path.read_text()):
        monkeypatch.setenv(name, "dummy-secret")
    status = main(["policy", "check", str(path)])
    out, err = capsys.readouterr()
    assert err == "", err
    assert status == 0
    assert out.startswith(f"{path}: OK (") and "warning" not in out, out

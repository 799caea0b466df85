"""Suite-wide checks before any test runs."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # An editable install's compiled extensions shadow their sources: after an edit (or a
    # checkout) the tests would run the old code. `scripts/test.sh` reinstalls first.
    from gateway.compiled import stale

    old = stale()
    if old:
        raise pytest.UsageError(
            f"compiled extensions older than their source: {', '.join(old)}; rebuild them "
            "with `.venv/bin/pip install -e . --no-deps`, then rerun")

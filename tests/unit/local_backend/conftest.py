from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from local_backend.loading import load_causal_lm
from local_backend.tiny import make_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir: Path) -> tuple[Any, Any]:
    """(model, tokenizer) loaded the way `serve` loads a user's model."""
    return load_causal_lm(str(tiny_model_dir), device="cpu", dtype="auto")

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from local_backend.loading import ModelLoadError, resolve_model


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_hub_says_so_and_asks_for_a_local_directory(tmp_path: Path) -> None:
    # A closed loopback port is a hub that cannot be reached, without depending on DNS.
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(ModelLoadError) as caught:
        resolve_model("some-org/some-model", models_dir=tmp_path, hub_endpoint=endpoint)
    message = str(caught.value)
    assert "'some-org/some-model'" in message
    assert f"Hub at {endpoint} is unreachable" in message
    assert "Pass a local model directory" in message
    assert "--model /path/to/model" in message


def test_missing_directory_is_not_looked_up_on_the_hub(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"does not exist.*make-tiny-model"):
        resolve_model(str(tmp_path / "nope"), models_dir=tmp_path)


def test_directory_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        resolve_model(str(tmp_path), models_dir=tmp_path)


def test_local_directory_and_bundled_embedding_model_resolve_offline(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    assert resolve_model(str(tiny_model_dir), models_dir=tmp_path).location == str(
        tiny_model_dir
    )
    bundled = Path(resolve_model("all-MiniLM-L6-v2", models_dir=tmp_path).location)
    assert (bundled / "model.safetensors").is_file()

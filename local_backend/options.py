"""`local-backend serve` options, parsed once by the CLI and read by both engines."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from local_backend.loading import DEFAULT_MODELS_DIR
from local_backend.tiny import TINY_MODEL_NAME

DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"


@dataclass(frozen=True, slots=True)
class ServeOptions:
    model: str = TINY_MODEL_NAME
    """Model directory, Hugging Face id, or `tiny-random` (built offline on first use)."""
    engine: Literal["auto", "vllm", "torch"] = "auto"
    """`auto`: vLLM when it is installed and a GPU is present, torch otherwise."""
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None
    """Name clients use in `model`; defaults to `--model` as given (as vLLM does)."""
    embedding_model: str | None = None
    """torch engine: sentence-embedding model served at /v1/embeddings (default
    all-MiniLM-L6-v2, bundled; `none` serves no embeddings). Not available with vLLM."""
    max_model_len: int | None = None
    """Context length; defaults to the model's own limit and may not exceed it."""
    max_num_seqs: int | None = None
    """Sequences batched together (torch default 16); more requests wait."""
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    device: str = "auto"
    """torch engine: `cpu`, `cuda`, `cuda:1`…; `auto` picks cuda when present."""
    torch_threads: int | None = None
    """torch engine: intra-op CPU threads; default half the cores (at most 8), see launch.py."""
    tensor_parallel_size: int | None = None
    gpu_memory_utilization: float | None = None
    quantization: str | None = None
    lora_modules: tuple[str, ...] = ()
    """vLLM LoRA adapters as `name=path` (vLLM's own syntax)."""
    enable_prefix_caching: bool | None = None
    """None keeps each engine's default (on for both)."""
    models_dir: Path = DEFAULT_MODELS_DIR
    """Where `tiny-random` is created."""
    log_level: str = "info"
    passthrough: tuple[str, ...] = ()
    """Arguments this CLI does not know, handed to vLLM unchanged."""

    @property
    def name(self) -> str:
        return self.served_model_name or self.model

"""Pick the engine, load what `serve` was asked to serve, and run it."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from typing import Any, Literal, NoReturn

from local_backend.engine.vllm_args import build_vllm_command
from local_backend.loading import ModelLoadError, load_causal_lm, pick_device, resolve_model
from local_backend.options import DEFAULT_EMBEDDING_MODEL, ServeOptions
from local_backend.server import Backend, build_app

log = logging.getLogger("local_backend")

DEFAULT_MAX_NUM_SEQS = 16
PREFIX_CACHE_TOKENS = 16384


class LaunchError(Exception):
    """The options cannot be served as given; the message says what to change."""


def choose_engine(
    requested: str, *, vllm_installed: bool, gpu: bool
) -> Literal["vllm", "torch"]:
    if requested == "torch":
        return "torch"
    if requested == "vllm":
        if not vllm_installed:
            raise LaunchError(
                "--engine vllm needs the vllm package (pip install 'model-gateway[vllm]' on a "
                "GPU machine); use --engine torch to serve with PyTorch instead."
            )
        return "vllm"
    return "vllm" if vllm_installed and gpu else "torch"


def serve(options: ServeOptions) -> None:
    engine = choose_engine(
        options.engine, vllm_installed=importlib.util.find_spec("vllm") is not None,
        gpu=_gpu_available(),
    )
    if engine == "vllm":
        exec_vllm(options)
    import uvicorn

    backend = load_backend(options)
    log.info("serving %s on http://%s:%d (torch engine)", backend.names(), options.host,
             options.port)
    uvicorn.run(build_app(backend), host=options.host, port=options.port,
                log_level=options.log_level)


def exec_vllm(options: ServeOptions) -> NoReturn:
    if options.embedding_model not in (None, "none"):
        raise LaunchError(
            "vLLM serves one model per process, so --embedding-model is not available with "
            "--engine vllm. Serve embeddings from a second process: local-backend serve "
            "--engine torch --model MODEL --embedding-model "
            f"{options.embedding_model} --port OTHER_PORT."
        )
    source = resolve_model(options.model, models_dir=options.models_dir)
    argv = build_vllm_command(options, source.location)
    log.info("exec %s", " ".join(argv))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)


def load_backend(options: ServeOptions, *, hub_endpoint: str | None = None) -> Backend:
    """Load the text model into a torch engine, and the embedding model, as `serve` does."""
    from local_backend.embeddings import Embedder
    from local_backend.engine.torch_engine import EngineConfig, TorchEngine
    from local_backend.metrics import BackendMetrics

    _warn_ignored(options)
    if options.lora_modules:
        raise LaunchError("LoRA adapters (--lora-modules) need --engine vllm.")
    device = pick_device(options.device)
    _set_torch_threads(options.torch_threads)
    source = resolve_model(options.model, models_dir=options.models_dir,
                           hub_endpoint=hub_endpoint)
    model, tokenizer = load_causal_lm(source.location, device=device, dtype=options.dtype)
    limit = model_context_limit(model.config, tokenizer)
    if options.max_model_len is not None and options.max_model_len > limit:
        raise LaunchError(
            f"--max-model-len {options.max_model_len} exceeds the model's own limit of {limit} "
            "tokens (max_position_embeddings in its config.json); pass at most that."
        )
    metrics = BackendMetrics(options.name)
    config = EngineConfig(
        max_model_len=options.max_model_len or limit,
        max_num_seqs=options.max_num_seqs or DEFAULT_MAX_NUM_SEQS,
        prefix_cache_tokens=0 if options.enable_prefix_caching is False else PREFIX_CACHE_TOKENS,
    )
    engine = TorchEngine(model, tokenizer, config, observer=metrics)
    try:
        engine.warmup()
    except TypeError as exc:  # kv_batch's message names the unsupported cache layer
        raise LaunchError(str(exc)) from exc
    metrics.watch_load(engine.load)
    metrics.report_cache(config.prefix_cache_tokens)

    embedding_name = options.embedding_model or DEFAULT_EMBEDDING_MODEL
    embedder = None
    if embedding_name != "none":
        where = resolve_model(embedding_name, models_dir=options.models_dir,
                              hub_endpoint=hub_endpoint)
        embedder = Embedder(where.location, device=device)
    return Backend(
        metrics=metrics,
        model_name=options.name,
        engine=engine,
        embedding_name=None if embedder is None else embedding_name,
        embedder=embedder,
    )


def model_context_limit(config: Any, tokenizer: Any) -> int:
    """The longest sequence the model was built for (its position embeddings)."""
    for attr in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    from_tokenizer = getattr(tokenizer, "model_max_length", 0)
    # Tokenizers without a limit report a huge sentinel (int(1e30)); 2048 is a safe floor.
    return from_tokenizer if 0 < from_tokenizer < 1_000_000 else 2048


def _warn_ignored(options: ServeOptions) -> None:
    ignored = [flag for flag, value in (
        ("--tensor-parallel-size", options.tensor_parallel_size),
        ("--gpu-memory-utilization", options.gpu_memory_utilization),
        ("--quantization", options.quantization),
    ) if value is not None] + list(options.passthrough)
    if ignored:
        log.warning("torch engine ignores these vLLM arguments: %s", " ".join(ignored))


def _set_torch_threads(requested: int | None) -> None:
    """Give torch's intra-op pool half the cores, at most 8, unless told otherwise.

    torch defaults to one thread per core, and its OpenMP threads spin while waiting for work.
    On a small machine they then starve the event loop and the embedding thread: measured on
    2 cores with the tiny model, a 24-token request took 10x longer with 2 threads than 1.
    """
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(requested or max(1, min(8, (cores or 2) // 2)))


def _gpu_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


__all__ = ["LaunchError", "ModelLoadError", "choose_engine", "load_backend", "serve"]

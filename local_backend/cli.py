"""`local-backend serve …` and `local-backend make-tiny-model DIR`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from local_backend.loading import DEFAULT_MODELS_DIR, ModelLoadError
from local_backend.options import ServeOptions
from local_backend.tiny import TINY_MODEL_NAME


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="local-backend",
        description="Self-hosted OpenAI-compatible model server (vLLM on GPU, torch on CPU).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    # allow_abbrev=False: an unknown vLLM flag must pass through, never be taken for a
    # prefix of one of ours.
    serve = commands.add_parser(
        "serve", allow_abbrev=False,
        help="serve a model; arguments not listed here are passed through to vLLM",
    )
    serve.add_argument("--model", default=TINY_MODEL_NAME,
                       help="model directory, Hugging Face id, or tiny-random (default)")
    serve.add_argument("--engine", choices=["auto", "vllm", "torch"], default="auto")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--served-model-name", default=None)
    serve.add_argument("--embedding-model", default=None,
                       help="torch engine: embedding model (default all-MiniLM-L6-v2; 'none')")
    serve.add_argument("--max-model-len", type=int, default=None)
    serve.add_argument("--max-num-seqs", type=int, default=None)
    serve.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"],
                       default="auto")
    serve.add_argument("--device", default="auto", help="torch engine: cpu, cuda, cuda:N")
    serve.add_argument("--torch-threads", type=int, default=None,
                       help="torch engine: CPU threads (default: half the cores, at most 8)")
    serve.add_argument("--tensor-parallel-size", type=int, default=None)
    serve.add_argument("--gpu-memory-utilization", type=float, default=None)
    serve.add_argument("--quantization", default=None)
    serve.add_argument("--lora-modules", nargs="+", default=[], metavar="NAME=PATH")
    serve.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction,
                       default=None)
    serve.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR,
                       help=f"where {TINY_MODEL_NAME} is created (default {DEFAULT_MODELS_DIR})")
    serve.add_argument("--log-level", default="info",
                       choices=["debug", "info", "warning", "error", "critical"])

    tiny = commands.add_parser("make-tiny-model",
                               help="create a tiny random-weight model with a real tokenizer")
    tiny.add_argument("directory", type=Path)
    tiny.add_argument("--seed", type=int, default=0)
    return parser


def parse_serve_options(argv: list[str]) -> ServeOptions:
    """ServeOptions from `serve` arguments (without the word `serve`)."""
    args, passthrough = build_parser().parse_known_args(["serve", *argv])
    return ServeOptions(
        model=args.model,
        engine=args.engine,
        host=args.host,
        port=args.port,
        served_model_name=args.served_model_name,
        embedding_model=args.embedding_model,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        dtype=args.dtype,
        device=args.device,
        torch_threads=args.torch_threads,
        tensor_parallel_size=args.tensor_parallel_size,
        gpu_memory_utilization=args.gpu_memory_utilization,
        quantization=args.quantization,
        lora_modules=tuple(args.lora_modules),
        enable_prefix_caching=args.enable_prefix_caching,
        models_dir=args.models_dir,
        log_level=args.log_level,
        passthrough=tuple(passthrough),
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        options = parse_serve_options(argv[1:])
        _configure_logging(options.log_level)
        from local_backend.launch import LaunchError, serve

        try:
            serve(options)
        except (LaunchError, ModelLoadError) as exc:
            print(f"local-backend: error: {exc}", file=sys.stderr)
            return 2
        return 0
    args = build_parser().parse_args(argv)
    if args.command == "make-tiny-model":
        _configure_logging("warning")
        from local_backend.tiny import make_tiny_model

        print(make_tiny_model(args.directory, seed=args.seed))
    return 0


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(levelname)s %(name)s: %(message)s")
    # transformers' progress bars and advisory warnings are noise in a server log.
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

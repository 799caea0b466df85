"""The vLLM engine is vLLM's own OpenAI server; this builds its command line from our flags.

vLLM already serves the same API and the /metrics the gateway scrapes, so the thinnest correct
integration is to exec `python -m vllm.entrypoints.openai.api_server` in place of this process
(same pid: the gateway's supervisor signals vLLM directly). Flags the user set are translated;
flags they did not set are left to vLLM's defaults; unknown flags pass through unchanged.
"""

from __future__ import annotations

import sys

from local_backend.options import ServeOptions

VLLM_ENTRYPOINT = "vllm.entrypoints.openai.api_server"


def build_vllm_command(
    options: ServeOptions, model_location: str, *, python: str = sys.executable
) -> list[str]:
    """argv for vLLM serving ``model_location`` under ``options.name``."""
    argv = [
        python, "-m", VLLM_ENTRYPOINT,
        "--model", model_location,
        "--served-model-name", options.name,
        "--host", options.host,
        "--port", str(options.port),
    ]
    for flag, value in (
        ("--max-model-len", options.max_model_len),
        ("--max-num-seqs", options.max_num_seqs),
        ("--tensor-parallel-size", options.tensor_parallel_size),
        ("--gpu-memory-utilization", options.gpu_memory_utilization),
        ("--quantization", options.quantization),
        ("--dtype", None if options.dtype == "auto" else options.dtype),
    ):
        if value is not None:
            argv += [flag, str(value)]
    if options.enable_prefix_caching is not None:
        argv.append(
            "--enable-prefix-caching" if options.enable_prefix_caching
            else "--no-enable-prefix-caching"
        )
    if options.lora_modules:
        # vLLM refuses --lora-modules unless LoRA is enabled; asking for adapters implies it.
        if "--enable-lora" not in options.passthrough:
            argv.append("--enable-lora")
        argv += ["--lora-modules", *options.lora_modules]
    argv += list(options.passthrough)
    return argv

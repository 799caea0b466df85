from __future__ import annotations

import pytest

from local_backend.cli import parse_serve_options
from local_backend.engine.vllm_args import VLLM_ENTRYPOINT, build_vllm_command
from local_backend.launch import LaunchError, choose_engine


def _command(*argv: str) -> list[str]:
    return build_vllm_command(parse_serve_options(list(argv)), "/models/llama", python="py")


def test_minimal_command_names_model_host_port_and_served_name() -> None:
    assert _command("--model", "meta-llama/Llama-3.1-8B-Instruct", "--port", "9000") == [
        "py", "-m", VLLM_ENTRYPOINT,
        "--model", "/models/llama",
        "--served-model-name", "meta-llama/Llama-3.1-8B-Instruct",
        "--host", "127.0.0.1",
        "--port", "9000",
    ]


def test_engine_flags_are_translated_and_unknown_flags_pass_through_in_order() -> None:
    cmd = _command(
        "--model", "m", "--served-model-name", "chat", "--host", "0.0.0.0",
        "--tensor-parallel-size", "2", "--max-model-len", "8192",
        "--gpu-memory-utilization", "0.85", "--quantization", "awq", "--dtype", "float16",
        "--max-num-seqs", "64", "--no-enable-prefix-caching",
        "--swap-space", "4", "--enforce-eager", "--kv-cache-dtype", "fp8",
    )
    tail = cmd[cmd.index("--port") + 2 :]
    assert tail == [
        "--max-model-len", "8192", "--max-num-seqs", "64", "--tensor-parallel-size", "2",
        "--gpu-memory-utilization", "0.85", "--quantization", "awq", "--dtype", "float16",
        "--no-enable-prefix-caching",
        "--swap-space", "4", "--enforce-eager", "--kv-cache-dtype", "fp8",
    ]
    assert cmd[cmd.index("--served-model-name") + 1] == "chat"
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"


def test_lora_modules_enable_lora_once() -> None:
    cmd = _command("--model", "m", "--lora-modules", "sql=/a/sql", "chat=/a/chat")
    assert cmd[-4:] == ["--enable-lora", "--lora-modules", "sql=/a/sql", "chat=/a/chat"]
    cmd = _command("--model", "m", "--enable-lora", "--lora-modules", "sql=/a/sql")
    assert cmd.count("--enable-lora") == 1


def test_our_flags_are_not_abbreviations_of_vllm_flags() -> None:
    # "--max-num" would be taken for --max-num-seqs if argparse allowed abbreviations.
    options = parse_serve_options(["--max-num-batched-tokens", "512"])
    assert options.max_num_seqs is None
    assert options.passthrough == ("--max-num-batched-tokens", "512")


@pytest.mark.parametrize(
    ("requested", "vllm", "gpu", "expected"),
    [
        ("auto", True, True, "vllm"),
        ("auto", True, False, "torch"),
        ("auto", False, True, "torch"),
        ("torch", True, True, "torch"),
        ("vllm", True, False, "vllm"),  # explicit: vLLM itself reports the missing GPU
    ],
)
def test_engine_choice(requested: str, vllm: bool, gpu: bool, expected: str) -> None:
    assert choose_engine(requested, vllm_installed=vllm, gpu=gpu) == expected


def test_vllm_engine_without_vllm_says_how_to_get_it() -> None:
    with pytest.raises(LaunchError, match=r"model-gateway\[vllm\].*--engine torch"):
        choose_engine("vllm", vllm_installed=False, gpu=True)

"""`local-backend` as a user runs it: a separate process, started from the command line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "local_backend", *args]


def _wait_healthy(proc: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + 90
    while True:
        if proc.poll() is not None:
            stderr = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"server exited: {stderr}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server did not become healthy"
        time.sleep(0.1)


def test_serve_without_a_model_builds_tiny_random_offline_and_serves_it(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        _cli("serve", "--engine", "torch", "--port", str(port), "--models-dir", str(tmp_path),
             "--embedding-model", "none", "--log-level", "warning", "--swap-space", "4"),
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(proc, url)
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list()] == ["tiny-random"]
        reply = client.chat.completions.create(
            model="tiny-random", messages=[{"role": "user", "content": "Hi"}], max_tokens=3,
            extra_body={"ignore_eos": True},
        )
        assert reply.usage is not None and reply.usage.completion_tokens == 3
        assert (tmp_path / "tiny-random" / "config.json").is_file()
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0
    # The vLLM-only argument is reported, not fatal.
    assert b"torch engine ignores these vLLM arguments: --swap-space 4" in stderr


def test_make_tiny_model_writes_a_loadable_model(tmp_path: Path) -> None:
    out = subprocess.run(_cli("make-tiny-model", str(tmp_path / "m")), capture_output=True,
                         check=True)
    assert out.stdout.decode().strip() == str(tmp_path / "m")
    names = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names


def test_unreachable_hub_fails_fast_telling_the_user_to_pass_a_directory(tmp_path: Path) -> None:
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{_free_port()}",
           "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_OFFLINE", None)
    command = _cli("serve", "--engine", "torch", "--model", "some-org/some-model")
    out = subprocess.run(command, env=env, capture_output=True, timeout=60)
    assert out.returncode == 2
    err = out.stderr.decode()
    assert "local-backend: error:" in err
    assert "Hugging Face Hub at http://127.0.0.1:" in err and "is unreachable" in err
    assert "Pass a local model directory" in err


FAKE_VLLM_SERVER = """
import json, os, sys
with open(os.environ["FAKE_VLLM_RECORD"], "w") as f:
    json.dump({"pid": os.getpid(), "argv": sys.argv[1:]}, f)
"""


def test_vllm_engine_execs_vllms_openai_server_with_built_arguments(tmp_path: Path) -> None:
    # A stand-in for the vllm package (a third-party program we cannot run without a GPU):
    # it records how it was started, which is all this path is responsible for.
    server = tmp_path / "fake" / "vllm" / "entrypoints" / "openai"
    server.mkdir(parents=True)
    for package in (server.parent.parent, server.parent, server):
        (package / "__init__.py").write_text("")
    (server / "api_server.py").write_text(FAKE_VLLM_SERVER)
    record = tmp_path / "record.json"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "fake"), "FAKE_VLLM_RECORD": str(record)}
    model_dir = tmp_path / "models"
    proc = subprocess.Popen(
        _cli("serve", "--engine", "vllm", "--models-dir", str(model_dir), "--port", "9001",
             "--tensor-parallel-size", "2", "--lora-modules", "sql=/l/sql",
             "--max-num-batched-tokens", "8192"),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr.decode()
    seen = json.loads(record.read_text())
    assert seen["pid"] == proc.pid  # exec'd in place: the supervisor's pid is vLLM's
    assert seen["argv"] == [
        "--model", str(model_dir / "tiny-random"), "--served-model-name", "tiny-random",
        "--host", "127.0.0.1", "--port", "9001", "--tensor-parallel-size", "2",
        "--enable-lora", "--lora-modules", "sql=/l/sql", "--max-num-batched-tokens", "8192",
    ]

"""Processes and the workload of the real-engine check (bench/realengine/__init__.py).

One phase per strategy, each on fresh `local-backend` processes (empty prefix caches) behind a
fresh `gateway serve`: the same seeded sequence of requests, each a long shared prefix (one of
`prefixes` documents, as the system prompt) and a short question, sent streaming by
`concurrency` closed-loop clients. Measured per phase: the TTFT each client saw (first SSE
event), and the prefix-cache hit rate each backend reports on `/metrics`
(`vllm:prefix_cache_hits_total / vllm:prefix_cache_queries_total`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from gateway.routing.signals import parse_prometheus

ROOT = Path(__file__).resolve().parents[2]
# The tiny model's BPE on this text (its own corpus words): 1,803 prompt tokens for 960
# words with the chat template.
TOKENS_PER_WORD = 1.85
SERVED = "bench-model"
SIZES = {"tiny": None, "small": (256, 4)}  # (hidden size, layers) over the tiny model's
_WORDS = ("The quick brown fox jumps over the lazy dog gateway routes each request to a "
          "model tokens are counted for every request and each tenant pays").split()
HITS, QUERIES = "vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"


@dataclass(frozen=True, slots=True)
class Workload:
    backends: int = 3
    prefixes: int = 24
    """Distinct shared prefixes. 24 × 1,200 tokens is 1.8× one backend's 16,384-token prefix
    cache and 0.6× the three backends' together: round-robin thrashes, affinity fits."""
    prefix_tokens: int = 1200
    rounds: int = 4
    """Each round asks one question of every prefix, in a seeded random order."""
    concurrency: int = 3
    max_tokens: int = 2
    seed: int = 7
    torch_threads: int = 1
    model: str = "tiny"
    """`tiny` (local_backend/tiny.py: 64 wide, 2 layers, where prefill is a small part of the
    time to first token) or `small` (the same tokenizer, random weights 256 wide and 4
    layers deep: prefill then dominates, as on a real model)."""

    def requests(self) -> list[tuple[int, str]]:
        """(prefix index, question) in send order."""
        rng = random.Random(self.seed)
        out: list[tuple[int, str]] = []
        for r in range(self.rounds):
            order = list(range(self.prefixes))
            rng.shuffle(order)
            out += [(k, f"Question {r}: what does document {k} say about routing?")
                     for k in order]
        return out

    def prefix(self, k: int) -> str:
        words = int(self.prefix_tokens / TOKENS_PER_WORD)
        return f"[document {k}] " + " ".join(_WORDS[(k * 7 + j) % len(_WORDS)]
                                             for j in range(words))


@dataclass(slots=True)
class Phase:
    strategy: str
    ttft_s: list[float] = field(default_factory=list)
    served: Counter[str] = field(default_factory=Counter)
    hits: dict[str, float] = field(default_factory=dict)  # backend -> hit tokens
    queries: dict[str, float] = field(default_factory=dict)  # backend -> queried tokens
    wall_s: float = 0.0

    @property
    def hit_rate(self) -> float:
        q = sum(self.queries.values())
        return sum(self.hits.values()) / q if q else 0.0

    def backend_rate(self, name: str) -> float:
        q = self.queries.get(name, 0.0)
        return self.hits.get(name, 0.0) / q if q else 0.0

    def pct(self, p: float) -> float:
        xs = sorted(self.ttft_s)
        return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/health", timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not become healthy within {timeout:.0f} s")


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in reversed(procs):
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def backends(w: Workload, tmp: Path) -> Iterator[list[str]]:
    """`w.backends` fresh `local-backend` torch processes (prefix cache on); yields their
    root URLs once every one answers `/health`."""
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    try:
        ports = [free_port() for _ in range(w.backends)]
        for port in ports:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "local_backend", "serve", "--engine", "torch",
                 "--port", str(port), "--model", str(model_dir(w, tmp)),
                 "--served-model-name", SERVED,
                 "--embedding-model", "none", "--enable-prefix-caching",
                 "--torch-threads", str(w.torch_threads), "--log-level", "warning"],
                cwd=tmp, env=env, stdout=(tmp / f"backend-{port}.log").open("ab"),
                stderr=subprocess.STDOUT))
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        for url, proc in zip(urls, procs, strict=True):
            _wait_healthy(proc, url, 300)
        yield urls
    finally:
        _stop(procs)


def policy_for(w: Workload, urls: list[str], strategy: str, tmp: Path) -> dict[str, Any]:
    """One model, `chat`, over the backends (`b0`, `b1`…) with `strategy`."""
    return {
        "ledger": {"url": f"sqlite:///{tmp}/ledger-{strategy}.db",
                   "spill_path": str(tmp / f"spill-{strategy}.jsonl")},
        "observability": {"log_requests": False},
        "router": {"seed": w.seed, "health_check_interval_s": 1, "metrics_stale_s": 5},
        "providers": {f"b{i}": {"kind": "vllm", "base_url": f"{u}/v1"}
                      for i, u in enumerate(urls)},
        "models": {"chat": {"strategy": strategy, "deployments": [
            {"provider": f"b{i}", "model": SERVED, "name": f"b{i}"}
            for i in range(len(urls))]}},
    }


@contextlib.contextmanager
def gateway_process(policy: dict[str, Any], tmp: Path) -> Iterator[str]:
    """`gateway serve` on `policy`; yields its URL once `/health` answers."""
    path = tmp / f"policy-{free_port()}.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path),
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp, env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=(tmp / f"gateway-{port}.log").open("ab"), stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(proc, url, 60)
        yield url
    finally:
        _stop([proc])


def prefix_counters(root: str) -> tuple[float, float]:
    """(hit tokens, queried tokens) a backend's `/metrics` reports."""
    return _counters(httpx.get(root + "/metrics", timeout=10).text)


def _counters(text: str) -> tuple[float, float]:
    samples = parse_prometheus(text, (HITS, QUERIES))
    hits = sum(s.value for s in samples if s.name == HITS)
    return hits, sum(s.value for s in samples if s.name == QUERIES)


def _first_token(line: str) -> bool:
    """An SSE line carrying generated text or the end: a role-only chunk that a server sends
    before prefill is not a first token."""
    payload = line[5:].strip()
    if payload == "[DONE]":
        return True
    choices = json.loads(payload).get("choices") or []
    return bool(choices) and bool(choices[0].get("delta", {}).get("content")
                                  or choices[0].get("finish_reason"))


async def drive(w: Workload, url: str, phase: Phase, model: str = "chat",
                first_prefix: int = 0) -> None:
    """Send the workload's requests to `model` at `url`; prefixes numbered from
    `first_prefix` (a second phase on the same backends uses documents of its own)."""
    sem = asyncio.Semaphore(w.concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        async def one(k: int, question: str) -> None:
            body = {"model": model, "stream": True, "max_tokens": w.max_tokens,
                    "messages": [{"role": "system", "content": w.prefix(first_prefix + k)},
                                 {"role": "user", "content": question}]}
            async with sem:
                t0 = time.perf_counter()
                async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                    if r.status_code != 200:
                        raise RuntimeError(f"{r.status_code}: {(await r.aread())[:300]!r}")
                    first: float | None = None
                    async for line in r.aiter_lines():
                        if not line.startswith("data:"):
                            continue
                        if '"error"' in line:  # an error event: the run is not valid
                            raise RuntimeError(f"stream error: {line[:300]}")
                        if first is None and _first_token(line):
                            first = time.perf_counter() - t0
                    phase.ttft_s.append(first if first is not None else float("nan"))
                    phase.served[r.headers.get("x-gateway-deployment", "?")] += 1

        # Closed loop in send order: each client takes the next request when its last ends.
        pending = iter(w.requests())

        async def client_loop() -> None:
            for k, q in pending:
                await one(k, q)

        await asyncio.gather(*(client_loop() for _ in range(w.concurrency)))


def run_phase(w: Workload, strategy: str, tmp: Path) -> Phase:
    """One strategy on fresh backends (empty caches) behind a fresh gateway."""
    phase = Phase(strategy)
    with backends(w, tmp) as urls, \
            gateway_process(policy_for(w, urls, strategy, tmp), tmp) as gw:
        t0 = time.perf_counter()
        asyncio.run(drive(w, gw, phase))
        phase.wall_s = time.perf_counter() - t0
        for i, url in enumerate(urls):
            phase.hits[f"b{i}"], phase.queries[f"b{i}"] = prefix_counters(url)
    return phase


def model_dir(w: Workload, tmp: Path) -> Path:
    return tmp / "models" / ("tiny-random" if SIZES[w.model] is None else f"{w.model}-random")


def make_model(w: Workload, tmp: Path) -> Path:
    """The workload's model under `tmp/models`, built once (not once per backend)."""
    from local_backend.tiny import ensure_tiny_model

    tiny = ensure_tiny_model(tmp / "models")
    size = SIZES[w.model]
    target = model_dir(w, tmp)
    if size is None or (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    config = AutoConfig.from_pretrained(tiny)
    config.hidden_size, config.num_hidden_layers = size
    config.intermediate_size = 2 * size[0]
    config.head_dim = size[0] // config.num_attention_heads
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    shutil.copytree(tiny, target)  # the tokenizer and chat template
    model.save_pretrained(target)
    return target


def run(w: Workload, strategies: tuple[str, ...]) -> list[Phase]:
    with tempfile.TemporaryDirectory(prefix="realengine-") as d:
        make_model(w, Path(d))
        return [run_phase(w, s, Path(d)) for s in strategies]


def table(w: Workload, phases: list[Phase]) -> str:
    names = [f"b{i}" for i in range(w.backends)]
    head = ("strategy", "requests", "prompt tokens", "TTFT p50 ms", "TTFT p90 ms",
            "TTFT mean ms", "hit rate", *(f"{n} hit / served" for n in names), "wall s")
    rows = [head]
    for p in phases:
        ttft = [x for x in p.ttft_s if x == x]
        prompt = sum(p.queries.values()) / max(1, len(p.ttft_s))
        rows.append((p.strategy, str(len(p.ttft_s)), f"{prompt:.0f}", f"{p.pct(0.5) * 1e3:.1f}",
                     f"{p.pct(0.9) * 1e3:.1f}",
                     f"{statistics.fmean(ttft) * 1e3:.1f}" if ttft else "nan",
                     f"{p.hit_rate:.1%}",
                     *(f"{p.backend_rate(n):.0%} / {p.served[n]}" for n in names),
                     f"{p.wall_s:.1f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(wd) for c, wd in zip(r, widths, strict=True)) + " |"
             for r in rows]
    lines.insert(1, "| " + " | ".join("-" * wd for wd in widths) + " |")
    return "\n".join(lines)

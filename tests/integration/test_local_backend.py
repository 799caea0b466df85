"""The local backend's torch engine over HTTP, driven by the official `openai` SDK.

Servers run in a thread with uvicorn on a free loopback port, built by `load_backend` from
`ServeOptions` exactly as `local-backend serve --model DIR` builds them.
"""

from __future__ import annotations

import base64
import math
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from transformers import AutoTokenizer

from local_backend.launch import load_backend
from local_backend.options import ServeOptions
from local_backend.server import build_app
from local_backend.tiny import make_tiny_model

MODEL = "tiny"
LONG = 1800  # tokens: far more than any test waits for, so a long request outlives the others
IGNORE_EOS = {"ignore_eos": True}


class ServerThread:
    """uvicorn in a thread on a pre-bound socket (no port race), like httpx's test server."""

    def __init__(self, app: Any) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.base_url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become healthy"
            time.sleep(0.02)

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._sock.close()

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url + "/v1", api_key="unused", max_retries=0)

    def metric(self, name: str) -> float:
        return self.metrics(name)[0]

    def metrics(self, *names: str) -> list[float]:
        """Values from one scrape (values from two scrapes are from two moments)."""
        text = httpx.get(self.base_url + "/metrics").text
        values = []
        for name in names:
            match = re.search(rf'^{re.escape(name)}{{model_name="{MODEL}"}} (\S+)$', text, re.M)
            assert match, f"{name} missing from /metrics"
            values.append(float(match.group(1)))
        return values

    def wait_for(self, check: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 20
        while not check():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.01)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[ServerThread]:
    options = ServeOptions(model=str(tiny_model_dir), served_model_name=MODEL)
    with ServerThread(build_app(load_backend(options))) as running:
        yield running


@pytest.fixture(scope="module")
def one_slot_server(tiny_model_dir: Path) -> Iterator[ServerThread]:
    options = ServeOptions(model=str(tiny_model_dir), served_model_name=MODEL, max_num_seqs=1,
                           embedding_model="none")
    with ServerThread(build_app(load_backend(options))) as running:
        yield running


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny_model_dir)


MESSAGES: list[Any] = [{"role": "system", "content": "You are brief."},
            {"role": "user", "content": "Say something about foxes, ünïcödé 🦊."}]


def _chat(server: ServerThread, **kw: Any) -> Any:
    args: dict[str, Any] = {"model": MODEL, "messages": MESSAGES, "temperature": 0, **kw}
    return server.client().chat.completions.create(**args)


def test_stream_deltas_add_up_to_the_non_streamed_reply(server: ServerThread) -> None:
    whole = _chat(server, max_tokens=24)
    chunks = list(_chat(server, max_tokens=24, stream=True,
                        stream_options={"include_usage": True}))
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert sum(1 for d in deltas if d) > 5  # token by token, not one blob
    assert "".join(deltas) == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason and not any(finishes[:-1])
    final = chunks[-1]
    assert final.choices == [] and final.usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_usage_counts_are_the_tokenizers_counts(server: ServerThread, tokenizer: Any) -> None:
    reply = _chat(server, max_tokens=9, extra_body=IGNORE_EOS)
    prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    expected_prompt = len(tokenizer.encode(prompt, add_special_tokens=False))
    assert reply.usage.prompt_tokens == expected_prompt
    assert reply.usage.completion_tokens == 9
    assert reply.usage.total_tokens == expected_prompt + 9
    text = server.client().completions.create(model=MODEL, prompt="The fox", max_tokens=4,
                                              extra_body=IGNORE_EOS)
    assert text.usage is not None
    assert text.usage.prompt_tokens == len(tokenizer.encode("The fox"))


def test_continuous_usage_stats_put_usage_on_every_chunk(server: ServerThread) -> None:
    chunks = list(_chat(server, max_tokens=6, stream=True, extra_body=IGNORE_EOS,
                        stream_options={"include_usage": True, "continuous_usage_stats": True}))
    assert all(c.usage is not None for c in chunks)
    counts = [c.usage.completion_tokens for c in chunks]
    assert counts == sorted(counts) and counts[0] == 0 and counts[-1] == 6
    assert chunks[-1].choices == []


def test_max_tokens_ends_with_length(server: ServerThread) -> None:
    reply = _chat(server, max_tokens=5, extra_body=IGNORE_EOS)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 5


def test_stop_string_is_trimmed_and_ends_with_stop(server: ServerThread) -> None:
    free = _chat(server, max_tokens=30, extra_body=IGNORE_EOS).choices[0].message.content
    assert len(free) >= 13
    stop = free[10:13]
    expected = free[: free.find(stop)]
    reply = _chat(server, max_tokens=30, stop=[stop], extra_body=IGNORE_EOS)
    assert reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].message.content == expected
    streamed = list(_chat(server, max_tokens=30, stop=stop, stream=True, extra_body=IGNORE_EOS))
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == expected
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_seeded_sampling_repeats_and_other_seeds_differ(server: ServerThread) -> None:
    def sample(seed: int) -> str:
        reply = _chat(server, max_tokens=24, temperature=1.0, top_p=0.95, seed=seed,
                      extra_body=IGNORE_EOS)
        return str(reply.choices[0].message.content)

    first = sample(1234)
    assert sample(1234) == first
    assert sample(4321) != first


def test_n_choices_are_sampled_separately_and_repeat_with_the_seed(
    server: ServerThread,
) -> None:
    def choices() -> list[str]:
        reply = _chat(server, n=2, max_tokens=12, temperature=1.0, seed=5, extra_body=IGNORE_EOS)
        assert [c.index for c in reply.choices] == [0, 1]
        assert reply.usage.completion_tokens == 24
        return [str(c.message.content) for c in reply.choices]

    first = choices()
    assert first[0] != first[1]
    assert choices() == first


def test_completions_stream_and_multiple_prompts(server: ServerThread) -> None:
    client = server.client()
    whole = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=8,
                                      temperature=0, extra_body=IGNORE_EOS)
    parts = list(client.completions.create(model=MODEL, prompt="Once upon", max_tokens=8,
                                           temperature=0, stream=True, extra_body=IGNORE_EOS,
                                           stream_options={"include_usage": True}))
    assert "".join(p.choices[0].text for p in parts if p.choices) == whole.choices[0].text
    assert parts[-1].usage == whole.usage
    multi = client.completions.create(model=MODEL, prompt=["Once upon", "The fox"],
                                      max_tokens=8, temperature=0, extra_body=IGNORE_EOS)
    assert [c.index for c in multi.choices] == [0, 1]
    assert multi.choices[0].text == whole.choices[0].text
    assert multi.usage is not None and multi.usage.completion_tokens == 16


def test_concurrent_requests_share_decode_steps(server: ServerThread) -> None:
    client = server.client()
    # A long stream keeps running (unread) while two short requests arrive and finish.
    long = _chat(server, max_tokens=LONG, stream=True, extra_body=IGNORE_EOS)
    server.wait_for(lambda: server.metric("vllm:num_requests_running") == 1, "the long one")
    counters = ("local_backend:decode_steps_total", "local_backend:decode_sequence_steps_total")
    steps, rows = server.metrics(*counters)
    with ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(
            lambda p: client.completions.create(model=MODEL, prompt=p, max_tokens=16,
                                                extra_body=IGNORE_EOS),
            ["Once upon", "The fox"],
        ))
    steps_after, rows_after = server.metrics(*counters)
    shared = (rows_after - rows) - (steps_after - steps)
    assert server.metric("vllm:num_requests_running") == 1  # the long one is still going
    long.close()
    server.wait_for(lambda: server.metric("vllm:num_requests_running") == 0, "cancellation")
    assert [r.usage.completion_tokens for r in replies if r.usage] == [16, 16]
    # Each short request's 15 decode steps were steps the long one took as well.
    assert shared == 30


def test_disconnect_frees_running_and_waiting_slots_and_metrics_follow(
    one_slot_server: ServerThread,
) -> None:
    s = one_slot_server
    assert s.metric("vllm:num_requests_running") == 0
    first = _chat(s, max_tokens=LONG, stream=True, extra_body=IGNORE_EOS)
    s.wait_for(lambda: s.metric("vllm:num_requests_running") == 1, "the first to run")
    assert s.metric("vllm:kv_cache_usage_perc") > 0
    queued = _chat(s, max_tokens=LONG, stream=True, extra_body=IGNORE_EOS)
    s.wait_for(lambda: s.metric("vllm:num_requests_waiting") == 1, "the second to wait")
    queued.close()  # a waiting client leaves: it never takes a slot
    s.wait_for(lambda: s.metric("vllm:num_requests_waiting") == 0, "the waiter to leave")
    assert s.metric("vllm:num_requests_running") == 1
    last = _chat(s, max_tokens=4, stream=True, extra_body=IGNORE_EOS)
    s.wait_for(lambda: s.metric("vllm:num_requests_waiting") == 1, "the third to wait")
    first.close()  # the running client leaves: its row is dropped, the waiter gets the slot
    chunks = list(last)
    assert chunks[-1].choices[0].finish_reason == "length"
    s.wait_for(lambda: s.metric("vllm:num_requests_running") == 0, "an idle engine")
    assert s.metric("vllm:num_requests_waiting") == 0
    assert s.metric("vllm:kv_cache_usage_perc") == 0


def test_metrics_count_tokens_and_time_to_first_token(server: ServerThread) -> None:
    names = ("vllm:prompt_tokens_total", "vllm:generation_tokens_total",
             "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
             "vllm:time_to_first_token_seconds_count")
    before = dict(zip(names, server.metrics(*names), strict=True))
    reply = _chat(server, max_tokens=3, extra_body=IGNORE_EOS)
    again = _chat(server, max_tokens=3, extra_body=IGNORE_EOS)
    after = dict(zip(names, server.metrics(*names), strict=True))
    prompt = reply.usage.prompt_tokens
    assert after["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"] == 2 * prompt
    assert after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"] == 6
    assert after["vllm:time_to_first_token_seconds_count"] - before[
        "vllm:time_to_first_token_seconds_count"] == 2
    queries = after["vllm:prefix_cache_queries_total"] - before["vllm:prefix_cache_queries_total"]
    assert queries == 2 * prompt
    # The repeated prompt is served from the prefix cache, all but its last token.
    assert after["vllm:prefix_cache_hits_total"] - before["vllm:prefix_cache_hits_total"] >= (
        prompt - 1)
    assert again.choices[0].message.content == reply.choices[0].message.content


def test_prompt_too_long_is_a_400_naming_the_maximum_context_length(
    server: ServerThread,
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _chat(server, max_tokens=4000)
    assert "maximum context length" in str(caught.value)
    body = caught.value.body
    assert isinstance(body, dict) and body.get("code") == "context_length_exceeded"


def test_unknown_model_is_a_404_listing_the_models(server: ServerThread) -> None:
    with pytest.raises(openai.NotFoundError, match="Available models: tiny, all-MiniLM-L6-v2"):
        server.client().chat.completions.create(model="gpt-5", messages=MESSAGES)


def test_models_lists_chat_and_embedding_models(server: ServerThread) -> None:
    ids = [m.id for m in server.client().models.list()]
    assert ids == [MODEL, "all-MiniLM-L6-v2"]


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_embeddings_are_normalised_384_vectors_that_rank_similarity(
    server: ServerThread,
) -> None:
    texts = ["A man is playing a guitar.", "Someone plays an instrument.",
             "The stock market fell sharply today."]
    reply = server.client().embeddings.create(model="all-MiniLM-L6-v2", input=texts)
    vectors = [d.embedding for d in reply.data]
    assert [len(v) for v in vectors] == [384, 384, 384]
    assert all(math.isclose(_cos(v, v), 1.0, rel_tol=1e-4) for v in vectors)
    assert _cos(vectors[0], vectors[1]) > _cos(vectors[0], vectors[2]) + 0.2
    assert reply.usage.prompt_tokens > len(texts) * 3


def test_embeddings_base64_and_token_arrays_match_floats(server: ServerThread) -> None:
    url = server.base_url + "/v1/embeddings"
    floats = httpx.post(url, json={"model": "all-MiniLM-L6-v2", "input": "hello world",
                                   "encoding_format": "float"}).json()
    packed = httpx.post(url, json={"model": "all-MiniLM-L6-v2", "input": "hello world",
                                   "encoding_format": "base64"}).json()
    raw = base64.b64decode(packed["data"][0]["embedding"])
    unpacked = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert unpacked == pytest.approx(floats["data"][0]["embedding"], abs=1e-6)
    # [CLS] hello world [SEP] in all-MiniLM-L6-v2's vocabulary.
    tokens = httpx.post(url, json={"model": "all-MiniLM-L6-v2",
                                   "input": [101, 7592, 2088, 102]}).json()
    assert tokens["usage"]["prompt_tokens"] == floats["usage"]["prompt_tokens"] == 4
    assert tokens["data"][0]["embedding"] == pytest.approx(floats["data"][0]["embedding"],
                                                           abs=1e-5)


def test_the_gateway_reads_the_prefix_cache_size_from_cache_config_info(
    server: ServerThread,
) -> None:
    """`vllm:cache_config_info` as vLLM exports it (no model_name, one series per engine):
    the gateway's collector takes num_gpu_blocks × block_size, the engine's real budget,
    instead of the 131,072 tokens it assumes when a backend reports nothing."""
    import asyncio

    from gateway.routing.signals import _CACHE_TOKENS, Probe, SignalCollector
    from local_backend.launch import PREFIX_CACHE_TOKENS

    text = httpx.get(server.base_url + "/metrics").text
    info = re.search(r"^vllm:cache_config_info\{(.*)\} 1\.0$", text, re.M)
    assert info and 'enable_prefix_caching="True"' in info.group(1)
    assert "model_name" not in info.group(1)

    async def scrape() -> int | None:
        probe = Probe("local/tiny", MODEL, server.base_url + "/metrics", None)
        collector = SignalCollector([probe])
        try:
            await collector.scrape_once()
            return collector.snapshot().load("local/tiny").cache_tokens
        finally:
            await collector.stop()

    assert asyncio.run(scrape()) == PREFIX_CACHE_TOKENS != _CACHE_TOKENS

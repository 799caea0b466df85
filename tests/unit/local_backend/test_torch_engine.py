"""The engine driven directly: scheduling, batching, cancellation (no HTTP)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from local_backend.engine.sequence import SamplingParams, SequenceOutput
from local_backend.engine.torch_engine import EngineConfig, SequenceHandle, TorchEngine

GREEDY = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)


async def _collect(handle: SequenceHandle) -> list[SequenceOutput]:
    return [out async for out in handle]


async def _until(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        await asyncio.sleep(0.005)


def _engine(tiny_lm: tuple[Any, Any], **config: Any) -> TorchEngine:
    model, tokenizer = tiny_lm
    return TorchEngine(model, tokenizer, EngineConfig(max_model_len=2048, **config))


def _text(outputs: list[SequenceOutput]) -> str:
    return "".join(o.text for o in outputs)


@pytest.mark.asyncio
async def test_sequences_submitted_together_share_every_decode_step(
    tiny_lm: tuple[Any, Any],
) -> None:
    engine = _engine(tiny_lm)
    await engine.start()
    try:
        solo = [_text(await _collect(engine.submit([5 + i, 6, 7], GREEDY))) for i in range(3)]
        steps, rows = engine.decode_steps, engine.decode_sequence_steps
        handles = [engine.submit([5 + i, 6, 7], GREEDY) for i in range(3)]
        together = [await _collect(h) for h in handles]
    finally:
        await engine.stop()
    # 20 tokens each: the first from prefill, 19 from decode steps that carried all three.
    assert engine.decode_steps - steps == 19
    assert engine.decode_sequence_steps - rows == 3 * 19
    assert [_text(o) for o in together] == solo  # batching does not change greedy output
    assert all(o[-1].finish_reason == "length" and o[-1].completion_tokens == 20
               for o in together)


@pytest.mark.asyncio
async def test_a_late_request_joins_the_running_batch(tiny_lm: tuple[Any, Any]) -> None:
    engine = _engine(tiny_lm)
    await engine.start()
    try:
        long = engine.submit([1, 2, 3], SamplingParams(max_tokens=300, temperature=0.0,
                                                       ignore_eos=True))
        outputs = aiter(long)
        for _ in range(5):
            await anext(outputs)
        steps, rows = engine.decode_steps, engine.decode_sequence_steps
        late = await _collect(engine.submit([9, 9, 9], SamplingParams(max_tokens=10,
                                                                      ignore_eos=True)))
        shared = (engine.decode_sequence_steps - rows) - (engine.decode_steps - steps)
        assert engine.load().running == 1  # the long one is still going
        long.abort()
        await _until(lambda: engine.load().running == 0)
    finally:
        await engine.stop()
    assert late[-1].completion_tokens == 10
    assert shared == 9  # every decode step of the late sequence also advanced the long one


@pytest.mark.asyncio
async def test_abort_removes_running_and_waiting_sequences(tiny_lm: tuple[Any, Any]) -> None:
    engine = _engine(tiny_lm, max_num_seqs=1)
    await engine.start()
    try:
        params = SamplingParams(max_tokens=1500, ignore_eos=True)
        running = engine.submit([1, 2], params)
        waiting = engine.submit([3, 4], params)
        await _until(lambda: engine.load().running == 1 and engine.load().waiting == 1)
        assert engine.load().kv_usage > 0
        waiting.abort()
        assert engine.load().waiting == 0
        assert (await _collect(waiting))[-1].finish_reason == "abort"
        running.abort()
        await _until(lambda: engine.load().running == 0)
        outputs = await _collect(running)
        assert outputs[-1].finish_reason == "abort"
        assert outputs[-1].completion_tokens < 1500
    finally:
        await engine.stop()


@pytest.mark.asyncio
async def test_stop_token_id_finishes_with_stop_and_is_not_text(tiny_lm: tuple[Any, Any]) -> None:
    engine = _engine(tiny_lm)
    await engine.start()
    try:
        free = engine.submit([1, 2, 3], GREEDY)
        await _collect(free)
        stop_at = free.token_ids[5]
        first = free.token_ids.index(stop_at)
        handle = engine.submit([1, 2, 3], SamplingParams(
            max_tokens=20, temperature=0.0, stop_token_ids=(stop_at,)))
        stopped = await _collect(handle)
    finally:
        await engine.stop()
    assert stopped[-1].finish_reason == "stop"
    # The stop token is counted as generated (as vLLM does) but never shown as text.
    assert stopped[-1].completion_tokens == first + 1
    assert _text(stopped) == engine.tokenizer.decode(free.token_ids[:first])

"""The torch engine: continuous batching of a Hugging Face causal LM in one engine loop.

The loop runs on the server's event loop and hands every step to one worker thread, so the
event loop keeps serving HTTP (and /metrics) while torch computes. Between two steps it drops
aborted sequences and admits waiting ones (up to ``max_num_seqs``). One step is: one batched
decode forward over all running sequences, then a prefill of each newly admitted sequence,
whose KV joins the batch for the next decode. Every running sequence gains one token per step.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from local_backend.engine.detokenize import IncrementalDetokenizer
from local_backend.engine.kv_batch import KVBatch
from local_backend.engine.prefix_cache import PrefixCache
from local_backend.engine.sampling import Sampler
from local_backend.engine.sequence import (
    FinishReason,
    SamplingParams,
    Sequence,
    SequenceOutput,
)

log = logging.getLogger("local_backend.engine")


@dataclass(frozen=True, slots=True)
class EngineConfig:
    max_model_len: int
    """Prompt plus completion tokens one sequence may hold."""
    max_num_seqs: int = 16
    """Sequences decoded together; more requests wait (vLLM's `--max-num-seqs`)."""
    prefix_cache_tokens: int = 16384
    """Token budget of the prefix cache; 0 disables it."""


@dataclass(frozen=True, slots=True)
class EngineLoad:
    running: int
    waiting: int
    kv_usage: float
    """Tokens held in the KV cache over the most it may hold (max_num_seqs × max_model_len)."""


class EngineObserver(Protocol):
    """Receives the engine's events (the metrics implement it)."""

    def on_prefill(self, prompt_tokens: int, cached_tokens: int) -> None: ...
    def on_first_token(self, seconds: float) -> None: ...
    def on_tokens(self, count: int) -> None: ...
    def on_finished(self, reason: FinishReason) -> None: ...
    def on_decode_step(self, batch_size: int) -> None: ...


@dataclass(slots=True)
class _Row:
    """Worker-side state of one running sequence (its row in the KV batch)."""

    seq: Sequence
    sampler: Sampler
    detok: IncrementalDetokenizer
    last_token: int = -1


@dataclass(slots=True)
class _StepResult:
    outputs: list[tuple[Sequence, SequenceOutput]] = field(default_factory=list)
    decode_batch: int = 0


class SequenceHandle:
    """One submitted prompt: iterate it for outputs; ``abort()`` removes it from the batch."""

    def __init__(self, engine: TorchEngine, seq: Sequence) -> None:
        self._engine = engine
        self._seq = seq

    @property
    def prompt_tokens(self) -> int:
        return len(self._seq.prompt_ids)

    @property
    def token_ids(self) -> list[int]:
        """Tokens generated so far (complete once the last output has been read)."""
        return list(self._seq.generated)

    def abort(self) -> None:
        self._engine._abort(self._seq)

    def __aiter__(self) -> AsyncIterator[SequenceOutput]:
        return self._outputs()

    async def _outputs(self) -> AsyncIterator[SequenceOutput]:
        while True:
            out = await self._seq.outputs.get()
            yield out
            if out.finish_reason is not None:
                return


class TorchEngine:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        config: EngineConfig,
        observer: EngineObserver | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self._observer = observer
        self._device = next(model.parameters()).device
        self._eos_ids = _eos_token_ids(model, tokenizer)
        self._batch = KVBatch(model, self._device)
        self._prefix = PrefixCache(config.prefix_cache_tokens)
        self._rows: list[_Row] = []  # worker thread only, in batch row order
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch-engine")
        self._task: asyncio.Task[None] | None = None
        # Steps counted so a test (and /metrics) can see concurrent requests share decode steps.
        self.decode_steps = 0
        self.decode_sequence_steps = 0

    @property
    def max_model_len(self) -> int:
        return self.config.max_model_len

    def load(self) -> EngineLoad:
        capacity = self.config.max_num_seqs * self.config.max_model_len
        held = sum(s.num_tokens for s in self._running)
        return EngineLoad(len(self._running), len(self._waiting), min(1.0, held / capacity))

    def warmup(self) -> None:
        """One throwaway prefill at load time: fails early on an unsupported architecture (its
        cache is not key/value) and pays torch's first-call costs before the first request."""
        with torch.inference_mode():
            self._batch.prefill([0, 0])

    async def start(self) -> None:
        self._wake = asyncio.Event()  # bound to the loop that serves, not the one that built us
        self._task = asyncio.create_task(self._run(), name="torch-engine-loop")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for seq in [*self._running, *self._waiting]:
            self._finish(seq, SequenceOutput("", len(seq.generated), "abort"))
        self._running.clear()
        self._waiting.clear()
        self._executor.shutdown(wait=True)

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> SequenceHandle:
        seq = Sequence(prompt_ids=list(prompt_ids), params=params, outputs=asyncio.Queue())
        self._waiting.append(seq)
        self._wake.set()
        return SequenceHandle(self, seq)

    def _abort(self, seq: Sequence) -> None:
        if seq.finished or seq.aborted:
            return
        seq.aborted = True
        if seq in self._waiting:
            self._waiting.remove(seq)
            self._finish(seq, SequenceOutput("", 0, "abort"))
        # A running sequence leaves the batch at the next step boundary (one step at most).
        self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._running and not self._waiting:
                self._wake.clear()
                await self._wake.wait()
                continue
            drop = [s for s in self._running if s.aborted]
            for seq in drop:
                self._finish(seq, SequenceOutput("", len(seq.generated), "abort"))
            self._running = [s for s in self._running if not s.aborted]
            admit: list[Sequence] = []
            while self._waiting and len(self._running) + len(admit) < self.config.max_num_seqs:
                admit.append(self._waiting.popleft())
            self._running.extend(admit)
            try:
                result = await loop.run_in_executor(self._executor, self._step, drop, admit)
            except Exception as exc:  # a failed forward fails the batch, not the server
                log.exception("engine step failed; failing %d sequences", len(self._running))
                await loop.run_in_executor(self._executor, self._reset)
                result = _StepResult(
                    [(s, SequenceOutput("", len(s.generated), "error", str(exc))) for s in
                     self._running]
                )
            self._deliver(admit, result)
            self._running = [s for s in self._running if not s.finished]

    def _deliver(self, admitted: list[Sequence], result: _StepResult) -> None:
        obs = self._observer
        if result.decode_batch:
            self.decode_steps += 1
            self.decode_sequence_steps += result.decode_batch
            if obs is not None:
                obs.on_decode_step(result.decode_batch)
        if obs is not None:
            for seq in admitted:
                obs.on_prefill(len(seq.prompt_ids), seq.cached_tokens)
        for seq, out in result.outputs:
            if obs is not None and out.error is None:
                obs.on_tokens(1)
                if out.completion_tokens == 1 and seq.first_token_at is not None:
                    obs.on_first_token(seq.first_token_at - seq.arrival)
            if out.finish_reason is not None:
                self._finish(seq, out)
            elif not seq.aborted:
                seq.outputs.put_nowait(out)

    def _finish(self, seq: Sequence, out: SequenceOutput) -> None:
        seq.finish_reason = out.finish_reason
        seq.outputs.put_nowait(out)
        if self._observer is not None and out.finish_reason is not None:
            self._observer.on_finished(out.finish_reason)

    # --- worker thread -------------------------------------------------------------------

    def _step(self, drop: list[Sequence], admit: list[Sequence]) -> _StepResult:
        # inference_mode is thread-local: it has to be entered here, in the worker.
        with torch.inference_mode():
            result = _StepResult()
            if drop:
                self._keep_rows(lambda row: row.seq not in drop)
            if self._rows:
                logits = self._batch.decode([row.last_token for row in self._rows])
                logits = logits.float().cpu()
                result.decode_batch = len(self._rows)
                for i, row in enumerate(self._rows):
                    result.outputs.append((row.seq, self._advance(row, logits[i])))
            for seq in admit:
                row = _Row(seq, Sampler(seq.params), IncrementalDetokenizer(
                    self.tokenizer, seq.params.stop
                ))
                hit = self._prefix.lookup(seq.prompt_ids)
                seq.cached_tokens = hit.tokens
                logits, kv = self._batch.prefill(seq.prompt_ids, hit.kv)
                self._prefix.insert(seq.prompt_ids, kv)
                result.outputs.append((seq, self._advance(row, logits.float().cpu())))
                if seq.finish_reason is None:
                    self._batch.append(kv, len(seq.prompt_ids))
                    self._rows.append(row)
            self._keep_rows(lambda row: row.seq.finish_reason is None)
            return result

    def _advance(self, row: _Row, logits: torch.Tensor) -> SequenceOutput:
        seq, params = row.seq, row.seq.params
        token = row.sampler.sample(logits, seq.generated)
        seq.generated.append(token)
        row.last_token = token
        if seq.first_token_at is None:
            seq.first_token_at = time.monotonic()
        reason: FinishReason | None = None
        if (token in self._eos_ids and not params.ignore_eos) or token in params.stop_token_ids:
            reason = "stop"  # end-of-sequence tokens count as generated but are never text
        else:
            row.detok.add(token)
            if row.detok.stopped:
                reason = "stop"
        if reason is None and (
            len(seq.generated) >= params.max_tokens or seq.num_tokens >= self.max_model_len
        ):
            reason = "length"
        if reason is not None:
            row.detok.finish()
            # Set here, in the worker, so the same step drops the row; the loop only reads it.
            seq.finish_reason = reason
        return SequenceOutput(row.detok.take(final=reason is not None), len(seq.generated), reason)

    def _keep_rows(self, keep: Any) -> None:
        indices = [i for i, row in enumerate(self._rows) if keep(row)]
        if len(indices) != len(self._rows):
            self._batch.keep(indices)
            self._rows = [self._rows[i] for i in indices]

    def _reset(self) -> None:
        self._batch.clear()
        self._rows = []


def _eos_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    gen = getattr(model, "generation_config", None)
    for value in (getattr(gen, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return frozenset(ids)

"""The torch engine on a GPU: batched greedy output equals solo, seeds repeat, abort frees the
batch, and batching multiplies throughput. Prints one JSON object.

    python -m bench.gpu.engine_check [--device cuda] [--dtype bfloat16] [--concurrency 16]

Uses the tiny random model (`local-backend make-tiny-model`) so it needs no download; on a
machine with a real model directory pass `--model DIR`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from local_backend.engine.sequence import SamplingParams
from local_backend.engine.torch_engine import EngineConfig, TorchEngine
from local_backend.loading import load_causal_lm
from local_backend.tiny import make_tiny_model


async def _run(engine: TorchEngine, prompts: list[list[int]], params: SamplingParams
               ) -> tuple[list[list[int]], float]:
    start = time.perf_counter()
    handles = [engine.submit(p, params) for p in prompts]
    for h in handles:
        async for _ in h:
            pass
    return [h.token_ids for h in handles], time.perf_counter() - start


async def _poll(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)


async def main(args: argparse.Namespace) -> dict[str, object]:
    import torch

    model_dir = args.model or str(make_tiny_model(Path(tempfile.mkdtemp()) / "tiny"))
    model, tok = load_causal_lm(model_dir, device=args.device, dtype=args.dtype)
    engine = TorchEngine(model, tok, EngineConfig(max_model_len=4096,
                                                  max_num_seqs=args.concurrency))
    await engine.start()
    try:
        greedy = SamplingParams(max_tokens=args.tokens, temperature=0.0, ignore_eos=True)
        prompts = [[5 + i, 6, 7, 8 + i] for i in range(args.concurrency)]
        solo_ids = []
        t_solo = 0.0
        for p in prompts:
            ids, t = await _run(engine, [p], greedy)
            solo_ids += ids
            t_solo += t
        steps0 = engine.decode_steps
        batch_ids, t_batch = await _run(engine, prompts, greedy)
        shared_steps = engine.decode_steps - steps0
        seeded = SamplingParams(max_tokens=32, temperature=0.9, top_p=0.95, seed=1234)
        a, _ = await _run(engine, [prompts[0]], seeded)
        b, _ = await _run(engine, [prompts[0]], seeded)
        long = engine.submit(prompts[0], SamplingParams(max_tokens=100_000, ignore_eos=True))
        await _poll(lambda: engine.load().running > 0)
        long.abort()
        await _poll(lambda: engine.load().running == 0)
        total = args.tokens * args.concurrency
        return {
            "device": torch.cuda.get_device_name(0) if args.device == "cuda" else args.device,
            "torch": torch.__version__, "dtype": args.dtype, "concurrency": args.concurrency,
            "tokens_per_sequence": args.tokens,
            "batched_equals_solo": batch_ids == solo_ids,
            "decode_steps_shared": shared_steps,
            "seeded_repeatable": a == b,
            "abort_freed_batch": engine.load().running == 0,
            "sequential_tokens_per_s": round(total / t_solo, 1),
            "batched_tokens_per_s": round(total / t_batch, 1),
            "batching_speedup": round(t_solo / t_batch, 2),
        }
    finally:
        await engine.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=None)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--tokens", type=int, default=128)
    print(json.dumps(asyncio.run(main(p.parse_args())), indent=2))

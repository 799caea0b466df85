"""Sentence embeddings: a transformers encoder, mean pooling, L2 normalisation.

That is what sentence-transformers does for all-MiniLM-L6-v2 (its 1_Pooling config says mean
pooling; its pipeline ends with Normalize), done here with transformers alone so no second
model framework loads. Forward passes run on their own worker thread.
"""

from __future__ import annotations

import asyncio
import base64
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from local_backend.errors import ContextLengthExceeded, InvalidRequest

_BATCH = 32  # inputs per forward pass; bounds padding waste and peak memory


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    vectors: torch.Tensor  # [inputs, dim], float32, unit length
    prompt_tokens: int


class Embedder:
    def __init__(self, location: str, *, device: str) -> None:
        from pathlib import Path

        from transformers import AutoModel, AutoTokenizer

        local = Path(location).is_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=local)
        model = AutoModel.from_pretrained(location, local_files_only=local)
        self.model = model.to(device).eval()
        self._device = torch.device(device)
        self.dimensions = int(self.model.config.hidden_size)
        limit = getattr(self.model.config, "max_position_embeddings", 512)
        self.max_tokens = min(int(self.tokenizer.model_max_length), int(limit))
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embeddings")

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def tokenize(self, inputs: list[str] | list[list[int]]) -> list[list[int]]:
        """Token ids per input, with the encoder's [CLS]/[SEP]; token arrays are taken as is.

        Too-long inputs are refused, not truncated, so a vector always covers its whole input.
        """
        if inputs and isinstance(inputs[0], str):
            ids = self.tokenizer(list(inputs), add_special_tokens=True)["input_ids"]
        else:
            ids = [list(x) for x in inputs]
        vocab = len(self.tokenizer)
        for i, row in enumerate(ids):
            if not row:
                raise InvalidRequest(f"input[{i}] is empty.", param="input")
            if len(row) > self.max_tokens:
                raise ContextLengthExceeded(
                    f"This model's maximum context length is {self.max_tokens} tokens. However, "
                    f"input[{i}] has {len(row)} tokens. Please reduce the length of the input.",
                    param="input",
                )
            if min(row) < 0 or max(row) >= vocab:
                raise InvalidRequest(
                    f"input[{i}] has token ids outside [0, {vocab}).", param="input"
                )
        return ids

    async def embed(self, inputs: list[str] | list[list[int]]) -> EmbeddingResult:
        ids = self.tokenize(inputs)
        loop = asyncio.get_running_loop()
        vectors = await loop.run_in_executor(self._executor, self._embed_ids, ids)
        return EmbeddingResult(vectors, sum(len(row) for row in ids))

    def _embed_ids(self, ids: list[list[int]]) -> torch.Tensor:
        out = []
        with torch.inference_mode():
            for start in range(0, len(ids), _BATCH):
                out.append(self._forward(ids[start : start + _BATCH]))
        return torch.cat(out)

    def _forward(self, rows: list[list[int]]) -> torch.Tensor:
        pad = self.tokenizer.pad_token_id or 0
        width = max(len(r) for r in rows)
        input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=self._device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows],
                            device=self._device)
        hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled.float(), p=2, dim=1).cpu()


def encode_vector(vector: torch.Tensor, encoding_format: str) -> list[float] | str:
    """OpenAI's `encoding_format`: a float list, or base64 of little-endian float32 bytes."""
    if encoding_format == "base64":
        values = vector.tolist()
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
    return [float(x) for x in vector.tolist()]

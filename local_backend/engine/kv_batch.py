"""The running batch's KV cache: one row per sequence, left-padded to a common width.

Each sequence owns one row. A new sequence is prefilled alone, then its KV joins the batch as
a new row, padded on the left (the batch or the row, whichever is shorter) with an attention
mask of 0 over the padding. A decode step feeds every row's last token in one forward pass with
each row's true position id, so rotary/absolute position embeddings and causal masks see the
sequence exactly as if it ran alone. Finished rows are dropped and all-padding columns trimmed.
This is how Hugging Face batches left-padded generation; here rows come and go between steps.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers import DynamicCache

LayerKV = tuple[torch.Tensor, torch.Tensor]  # keys, values: [batch, kv_heads, width, head_dim]


class KVBatch:
    def __init__(self, model: Any, device: torch.device) -> None:
        self._model = model
        self._device = device
        # Computing logits for the last position only saves a [prompt, vocab] matmul per prefill.
        params = inspect.signature(model.forward).parameters
        self._logits_to_keep = "logits_to_keep" in params
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # [rows, width]; 1 = real token, 0 = padding
        self._positions: torch.Tensor | None = None  # [rows]; position id of each row's next token

    @property
    def size(self) -> int:
        return 0 if self._mask is None else int(self._mask.shape[0])

    @property
    def width(self) -> int:
        return 0 if self._mask is None else int(self._mask.shape[1])

    def prefill(self, token_ids: list[int], prefix: list[LayerKV] | None = None) -> tuple[
        torch.Tensor, list[LayerKV]
    ]:
        """Run one prompt alone; returns its last logits ``[vocab]`` and its KV (one row).

        ``prefix`` holds the KV of the prompt's first tokens (from the prefix cache); only the
        tokens after it are computed.
        """
        start = 0 if prefix is None else int(prefix[0][0].shape[2])
        cache = DynamicCache() if prefix is None else DynamicCache(ddp_cache_data=prefix)
        ids = torch.tensor([token_ids[start:]], device=self._device)
        positions = torch.arange(start, len(token_ids), device=self._device)[None, :]
        mask = torch.ones((1, len(token_ids)), dtype=torch.long, device=self._device)
        extra = {"logits_to_keep": 1} if self._logits_to_keep else {}
        out = self._model(
            input_ids=ids,
            position_ids=positions,
            attention_mask=mask,
            past_key_values=cache,
            use_cache=True,
            **extra,
        )
        return out.logits[0, -1], _layers(cache)

    def append(self, row: list[LayerKV], length: int) -> None:
        """Add a prefilled sequence (KV of ``length`` tokens) as the last row."""
        row_mask = torch.ones((1, length), dtype=torch.long, device=self._device)
        row_position = torch.tensor([length], device=self._device)
        if self._cache is None or self._mask is None or self._positions is None:
            self._cache = DynamicCache(ddp_cache_data=row)
            self._mask, self._positions = row_mask, row_position
            return
        width = max(self.width, length)
        batch = [(_pad_left(k, width), _pad_left(v, width)) for k, v in _layers(self._cache)]
        row = [(_pad_left(k, width), _pad_left(v, width)) for k, v in row]
        merged = [(torch.cat([bk, rk]), torch.cat([bv, rv])) for (bk, bv), (rk, rv) in zip(
            batch, row, strict=True
        )]
        self._cache = DynamicCache(ddp_cache_data=merged)
        self._mask = torch.cat([_pad_mask(self._mask, width), _pad_mask(row_mask, width)])
        self._positions = torch.cat([self._positions, row_position])

    def decode(self, last_tokens: list[int]) -> torch.Tensor:
        """One forward pass over every row; returns next-token logits ``[rows, vocab]``."""
        assert self._cache is not None and self._mask is not None and self._positions is not None
        ids = torch.tensor(last_tokens, device=self._device)[:, None]
        ones = torch.ones((self.size, 1), dtype=torch.long, device=self._device)
        self._mask = torch.cat([self._mask, ones], dim=1)
        out = self._model(
            input_ids=ids,
            position_ids=self._positions[:, None],
            attention_mask=self._mask,
            past_key_values=self._cache,
            use_cache=True,
        )
        self._positions = self._positions + 1
        return out.logits[:, -1]

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in that order); drop the others' KV and trim dead padding."""
        if not rows or self._cache is None or self._mask is None or self._positions is None:
            self.clear()
            return
        if rows == list(range(self.size)):
            return
        index = torch.tensor(rows, device=self._device)
        mask = self._mask.index_select(0, index)
        # Columns that are padding in every remaining row hold nothing: cut them off the left.
        first = int(torch.nonzero(mask.sum(dim=0))[0, 0])
        layers = [
            (k.index_select(0, index)[:, :, first:], v.index_select(0, index)[:, :, first:])
            for k, v in _layers(self._cache)
        ]
        self._cache = DynamicCache(ddp_cache_data=layers)
        self._mask = mask[:, first:]
        self._positions = self._positions.index_select(0, index)

    def clear(self) -> None:
        self._cache = self._mask = self._positions = None


def _layers(cache: DynamicCache) -> list[LayerKV]:
    out: list[LayerKV] = []
    for layer in cache.layers:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if not isinstance(keys, torch.Tensor) or not isinstance(values, torch.Tensor):
            raise TypeError(
                f"{type(layer).__name__} is not a key/value attention cache layer: this model's "
                "architecture is not supported by the torch engine (use --engine vllm)."
            )
        out.append((keys, values))
    return out


def _pad_left(t: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - t.shape[2]
    if missing == 0:
        return t
    pad = t.new_zeros((t.shape[0], t.shape[1], missing, t.shape[3]))
    return torch.cat([pad, t], dim=2)


def _pad_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - mask.shape[1]
    if missing == 0:
        return mask
    return torch.cat([mask.new_zeros((mask.shape[0], missing)), mask], dim=1)

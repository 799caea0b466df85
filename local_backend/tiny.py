"""A tiny random-weight causal LM with a real byte-level BPE tokenizer, built offline.

It is what the tests serve and what `--model tiny-random` serves when no model is given, so the
quickstart works on a machine without internet or GPU. Its text is noise, but every code path
(chat template, batching, streaming, stop strings, usage) is the one a real model takes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

TINY_MODEL_NAME = "tiny-random"

# ChatML, the format Qwen and many fine-tunes use; the end-of-turn token is the EOS token.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

# Training text for the BPE merges. Byte-level BPE starts from all 256 bytes, so any UTF-8
# text round-trips whatever this says; the corpus only decides which merges exist.
_CORPUS = """\
The quick brown fox jumps over the lazy dog. A gateway routes each request to a model.
Hello! How are you today? I am fine, thank you. What can I help you with?
You are a helpful assistant. Answer the question briefly and accurately.
The system prompt sets the tone; the user asks; the assistant answers in turn.
Tokens are counted for every request, and each tenant pays for the tokens it uses.
Large language models predict the next token from the tokens that came before it.
def main() -> int:
    print("hello, world")
    return 0

for i in range(10):
    total += i * 2
{"model": "tiny-random", "messages": [{"role": "user", "content": "Hi"}], "stream": true}
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 3.14 2.71 42.
Bonjour le monde. Hallo Welt. Hola mundo. Ciao mondo. Olá mundo.
こんにちは世界。你好，世界。Привет, мир. مرحبا بالعالم. שלום עולם. 🙂🚀✨
"""


def make_tiny_model(directory: str | Path, *, seed: int = 0, vocab_size: int = 512) -> Path:
    """Create the tiny model in ``directory`` with ``save_pretrained``; returns its path."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    target = Path(directory)
    tokenizer = _train_tokenizer(vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        # Wider than the default 0.02 so the logits are peaked enough that greedy decoding
        # is far from ties, and batched and solo runs pick the same tokens.
        initializer_range=0.2,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    )
    # fork_rng keeps the caller's global RNG untouched; the seed makes the weights reproducible.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def ensure_tiny_model(models_dir: str | Path) -> Path:
    """The `tiny-random` model under ``models_dir``, created on first use.

    It is built in a temporary sibling and renamed into place, so two servers starting at
    once never load a half-written directory.
    """
    target = Path(models_dir) / TINY_MODEL_NAME
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    try:
        make_tiny_model(staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "config.json").is_file():  # lost a race to another builder: fine
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _train_tokenizer(vocab_size: int):  # -> PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS.splitlines(keepends=True) * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
        model_max_length=2048,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer

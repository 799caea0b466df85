"""The project's self-hosted model server: an OpenAI-compatible API with vLLM's `/metrics`.

`local-backend serve` runs either vLLM (GPU; exec'd as vLLM's own OpenAI server) or the torch
engine (a Hugging Face causal LM with continuous batching, CPU or GPU). See docs/local_backend.md.
"""

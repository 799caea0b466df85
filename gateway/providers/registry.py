"""Policy `kind:` → adapter class. With the policy's provider union, the only code that names
providers."""

from __future__ import annotations

from gateway.policy.models import ProviderBase
from gateway.providers.base import Adapter
from gateway.providers.openai_compat import OpenAICompatAdapter

ADAPTERS: dict[str, str] = {
    "openai": "gateway.providers.openai_compat:OpenAICompatAdapter",
    "openai-compatible": "gateway.providers.openai_compat:OpenAICompatAdapter",
    "vllm": "gateway.providers.openai_compat:OpenAICompatAdapter",
    "local": "gateway.providers.openai_compat:OpenAICompatAdapter",
    "azure": "gateway.providers.azure:AzureAdapter",
    "anthropic": "gateway.providers.anthropic:AnthropicAdapter",
    "gemini": "gateway.providers.gemini:GeminiAdapter",
}


def build_adapter(name: str, config: ProviderBase) -> Adapter:
    """Resolve the provider's kind to its adapter once, at startup (like uvicorn's tables)."""
    import importlib

    module, _, cls = ADAPTERS[config.kind].partition(":")  # type: ignore[attr-defined]
    klass = getattr(importlib.import_module(module), cls)
    return klass(name, config)  # type: ignore[no-any-return]


__all__ = ["ADAPTERS", "OpenAICompatAdapter", "build_adapter"]

"""Azure OpenAI: the OpenAI-compatible adapter with Azure's URL, auth header and model naming.

REST reference: https://learn.microsoft.com/azure/ai-services/openai/reference
- URL: `{base_url}/openai/deployments/{deployment}/chat/completions?api-version=…`, where the
  deployment is our `Deployment.model`; with `api_version: v1` (or `preview`), the newer
  `{base_url}/openai/v1/chat/completions` with the deployment in the body's `model`.
- Auth: `api-key: <key>`, or `Authorization: Bearer <token>` with `auth: entra`.
- Responses API (https://learn.microsoft.com/azure/ai-foundry/openai/how-to/responses):
  `{base_url}/openai/v1/responses` (`?api-version=preview` for `preview`); with a dated
  api-version `{base_url}/openai/responses?api-version=…` (no deployment in the path, as the
  `openai` SDK's AzureOpenAI client calls it), the deployment in the body's `model` either way.
- Replies name the underlying model (`gpt-4o-2024-08-06`), not the deployment: every `model`
  value is rewritten to the public name, not just the deployment's.
- A stream's first chunk carries only `prompt_filter_results` (`choices: []`, `"model": ""`);
  the inherited stream folds that key into the next chunk, so clients that read
  `chunk.choices[0]` get OpenAI's shape (https://learn.microsoft.com/azure/ai-services/openai/concepts/content-filter#streaming).
Errors are OpenAI's shape (content filter: 400 `content_filter`; 429 with `retry-after-ms`),
so classification is inherited.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from urllib.parse import quote

from gateway.call import Call
from gateway.policy.models import AzureProvider, ProviderBase
from gateway.providers.base import Target
from gateway.providers.openai_compat import OpenAICompatAdapter

_PATHS = {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings"}
_MODEL = re.compile(rb'"model":(\s*)"(?:[^"\\]|\\.)*"')
# The first dated api-version that serves the Responses API.
_FIRST_RESPONSES_VERSION = "2025-03-01-preview"


class AnyModelRename:
    """Rewrites every top-level `"model": "…"` to the public name, whatever the old value.

    Safe on reply bytes: a `"model":` inside a JSON string has its quotes escaped, so only
    structural keys match."""

    __slots__ = ("_new",)

    def __init__(self, public: str) -> None:
        self._new = json.dumps(public, ensure_ascii=False).encode()

    def __call__(self, data: bytes) -> bytes:
        if data.find(b'"model"') < 0:  # not `in`: see sse.has_any
            return data
        return _MODEL.sub(lambda m: b'"model":' + m.group(1) + self._new, data)


class AzureAdapter(OpenAICompatAdapter):
    def __init__(self, name: str, config: AzureProvider) -> None:
        super().__init__(name, config)
        # An endpoint copied with its `/openai` suffix still works.
        self._base = config.base_url.rstrip("/").removesuffix("/openai")
        self._version = config.api_version
        headers = {"Content-Type": "application/json", **config.headers}
        if config.api_key:
            if config.auth == "entra":
                headers["Authorization"] = f"Bearer {config.api_key}"
            else:
                headers["api-key"] = config.api_key
        self._headers = headers

    def url(self, call: Call, target: Target) -> str:
        path = _PATHS[call.endpoint]
        if self._version in ("v1", "preview"):
            query = "?api-version=preview" if self._version == "preview" else ""
            return f"{self._base}/openai/v1{path}{query}"
        deployment = quote(target.upstream_model, safe="")
        return f"{self._base}/openai/deployments/{deployment}{path}?api-version={self._version}"

    @staticmethod
    def serves_responses(config: ProviderBase) -> bool:
        if not isinstance(config, AzureProvider):
            return False
        if config.supports_responses is not None:
            return config.supports_responses
        version = config.api_version
        # Dated versions sort as text; before 2025-03-01-preview none serves Responses.
        return version in ("v1", "preview") or (
            version.endswith("-preview") and version >= _FIRST_RESPONSES_VERSION)

    def responses_url(self) -> str:
        if self._version in ("v1", "preview"):
            query = "?api-version=preview" if self._version == "preview" else ""
            return f"{self._base}/openai/v1/responses{query}"
        return f"{self._base}/openai/responses?api-version={self._version}"

    def rename(self, call: Call, target: Target) -> Callable[[bytes], bytes]:
        # Azure's replies name the underlying model (`gpt-4o-2024-08-06`), not the deployment.
        return AnyModelRename(call.model)

"""Azure OpenAI: the OpenAI-compatible adapter with Azure's URL, auth header and model naming.

REST reference: https://learn.microsoft.com/azure/ai-services/openai/reference
- URL: `{base_url}/openai/deployments/{deployment}/chat/completions?api-version=…`, where the
  deployment is our `Deployment.model`; with `api_version: v1` (or `preview`), the newer
  `{base_url}/openai/v1/chat/completions` with the deployment in the body's `model`.
- Auth: `api-key: <key>`, or `Authorization: Bearer <token>` with `auth: entra`.
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
from urllib.parse import quote

from gateway.call import Call
from gateway.policy.models import AzureProvider
from gateway.providers.base import Reply, Target
from gateway.providers.openai_compat import OpenAICompatAdapter, OpenAIStream

_PATHS = {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings"}
_MODEL = re.compile(rb'"model":(\s*)"(?:[^"\\]|\\.)*"')


class AnyModelRename:
    """Rewrites every top-level `"model": "…"` to the public name, whatever the old value.

    Safe on reply bytes: a `"model":` inside a JSON string has its quotes escaped, so only
    structural keys match."""

    __slots__ = ("_new",)

    def __init__(self, public: str) -> None:
        self._new = json.dumps(public, ensure_ascii=False).encode()

    def __call__(self, data: bytes) -> bytes:
        if b'"model"' not in data:
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

    def parse_reply(self, call: Call, target: Target, body: bytes, native: bool) -> Reply:
        reply = super().parse_reply(call, target, body, native)
        return Reply(AnyModelRename(call.model)(reply.body), reply.usage)

    def stream(self, call: Call, target: Target, native: bool) -> OpenAIStream:
        translator = super().stream(call, target, native)
        # The parent renames only the deployment name; Azure sends the model's own name.
        translator._rename = AnyModelRename(call.model)  # type: ignore[assignment]
        return translator

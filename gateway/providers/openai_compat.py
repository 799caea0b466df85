"""OpenAI-compatible upstreams (OpenAI, vLLM, TGI, Ollama, Groq, Together, Mistral, DeepSeek,
Fireworks, OpenRouter…): a byte pass-through.

Requests are forwarded as the client sent them but for `model` (and, on streams, the usage
request). Replies pass through untouched except `model`, which becomes the public name — a bytes
replace, not a re-serialisation — and a usage chunk the client did not ask for, which is removed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from gateway.accounting.usage import Usage, from_openai
from gateway.call import Call
from gateway.policy.models import LocalProvider, OpenAIProvider, ProviderBase
from gateway.providers.base import Classified, ErrorKind, Reply, Target
from gateway.providers.http_errors import parse_retry_after
from gateway.providers.scrub import scrub
from gateway.upstream import UpstreamRequest

_PATHS = {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings"}
_CONTEXT_MARKERS = ("maximum context length", "context_length_exceeded", "context length",
                    "too many tokens", "prompt is too long", "reduce the length")


def _json_str(s: str) -> bytes:
    return json.dumps(s, ensure_ascii=False).encode()


class ModelRename:
    """Rewrites `"model": "<upstream>"` to the public name in reply bytes, both spacings."""

    __slots__ = ("_pairs",)

    def __init__(self, upstream: str, public: str) -> None:
        if upstream == public:
            self._pairs: tuple[tuple[bytes, bytes], ...] = ()
        else:
            u, p = _json_str(upstream), _json_str(public)
            self._pairs = ((b'"model":' + u, b'"model":' + p), (b'"model": ' + u, b'"model": ' + p))

    def __call__(self, data: bytes) -> bytes:
        for old, new in self._pairs:
            if old in data:
                return data.replace(old, new)
        return data


class OpenAIStream:
    """SSE pass-through: whole events out, usage read from whichever chunk carries it."""

    __slots__ = ("_buf", "_classify_body", "_keep_every", "_keep_final", "_rename", "chunks",
                 "done", "error", "usage")

    def __init__(self, rename: ModelRename, keep_final: bool, keep_every: bool,
                 classify_body: Any) -> None:
        self._buf = b""
        self._rename = rename
        # What the client asked for itself: the final usage chunk (include_usage), and usage on
        # every chunk (vLLM's continuous_usage_stats). Anything more was our request: strip it.
        self._keep_final = keep_final
        self._keep_every = keep_every
        self.usage: Usage | None = None
        self.done = False
        self.error: Classified | None = None
        # Content chunks forwarded: ~one token each on OpenAI and vLLM, the fallback estimate
        # of output tokens when a stream ends with no usage.
        self.chunks = 0
        self._classify_body = classify_body

    def feed(self, data: bytes) -> bytes:
        buf = self._buf + data if self._buf else data
        if b"\r\n" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        end = buf.rfind(b"\n\n")
        if end < 0:
            self._buf = buf
            return b""
        self._buf = buf[end + 2:]
        whole = buf[: end + 2]
        # Fast path: nothing to inspect in this batch of events.
        if b'"usage"' not in whole and b'"error"' not in whole and b"[DONE]" not in whole:
            self.chunks += whole.count(b"data:")
            return self._rename(whole)
        out = []
        for event in whole.split(b"\n\n"):
            if event:
                kept = self._event(event)
                if kept:
                    out.append(kept)
        return b"".join(out)

    def _event(self, event: bytes) -> bytes | None:
        payload = b"".join(ln[5:].lstrip() for ln in event.split(b"\n") if ln.startswith(b"data:"))
        if payload == b"[DONE]":
            self.done = True
            return event + b"\n\n"
        if b'"usage"' not in payload and b'"error"' not in payload:
            self.chunks += 1
            return self._rename(event) + b"\n\n"
        try:
            obj = json.loads(payload)
        except ValueError:
            return self._rename(event) + b"\n\n"
        if not isinstance(obj, dict):
            return self._rename(event) + b"\n\n"
        if "error" in obj and "choices" not in obj:
            self.error = self._classify_body(500, payload)
            return None
        usage = from_openai(obj.get("usage"))
        if usage is not None:
            self.usage = usage
        has_choices = bool(obj.get("choices"))
        if has_choices:
            self.chunks += 1
        if usage is None:
            if self._keep_final or "usage" not in obj:
                return self._rename(event) + b"\n\n"
        elif not has_choices:
            # The usage-only final chunk: forwarded only if the client asked for it.
            return self._rename(event) + b"\n\n" if self._keep_final else None
        elif self._keep_every:
            return self._rename(event) + b"\n\n"
        # `"usage": null` (OpenAI, once include_usage is on) or usage riding on a content chunk
        # (vLLM continuous stats) that the client did not ask for: drop just that key.
        del obj["usage"]
        return b"data: " + self._rename(json.dumps(obj, ensure_ascii=False).encode()) + b"\n\n"

    def finish(self) -> bytes:
        return b""


class OpenAICompatAdapter:
    native_ingress = "openai"

    def __init__(self, name: str, config: ProviderBase) -> None:
        self.name = name
        self.config = config
        self._base = config.base_url.rstrip("/")
        self._stream_usage = getattr(config, "supports_stream_usage", True)
        self._vllm = (isinstance(config, OpenAIProvider) and config.kind == "vllm") \
            or isinstance(config, LocalProvider)
        headers = {"Content-Type": "application/json", **config.headers}
        if config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key}"
        self._headers = headers
        self._secrets = tuple(s for s in (config.api_key,) if s)

    def url(self, call: Call, target: Target) -> str:
        return self._base + _PATHS[call.endpoint]

    def request_body(self, call: Call, target: Target) -> bytes:
        body = call.body
        needs_usage = call.stream and self._stream_usage and not (
            call.client_include_usage and not self._vllm)
        if target.upstream_model == call.model and not needs_usage:
            return call.raw
        body = dict(body)
        body["model"] = target.upstream_model
        if needs_usage:
            opts = dict(body.get("stream_options") or {})
            opts["include_usage"] = True
            if self._vllm:
                # vLLM reports usage on every chunk, so a stream cut short still has a count.
                opts["continuous_usage_stats"] = True
            body["stream_options"] = opts
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()

    def build_request(self, call: Call, target: Target, native: bool) -> UpstreamRequest:
        return UpstreamRequest(self.url(call, target), self.request_body(call, target),
                               self._headers)

    def parse_reply(self, call: Call, target: Target, body: bytes, native: bool) -> Reply:
        return Reply(ModelRename(target.upstream_model, call.model)(body), _reply_usage(body))

    def stream(self, call: Call, target: Target, native: bool) -> OpenAIStream:
        opts = call.body.get("stream_options") or {}
        every = isinstance(opts, dict) and bool(opts.get("continuous_usage_stats"))
        keep = call.client_include_usage or not self._stream_usage
        # Usage on content chunks reaches the client when it asked for usage and the provider
        # puts it there on its own; not when it is there only because we asked vLLM for
        # continuous stats.
        every = every or not self._stream_usage or (keep and not self._vllm)
        return OpenAIStream(ModelRename(target.upstream_model, call.model), keep, every,
                            lambda s, b: self.classify(s, b, {}))

    def classify(self, status: int, body: bytes, headers: Mapping[str, str]) -> Classified:
        message, code, etype, param = _error_fields(body)
        message = scrub(message, self._secrets) or f"upstream returned HTTP {status}"
        retry_after = parse_retry_after(headers, ms_header=True)
        low = (message + " " + (code or "")).lower()
        if status in (400, 413, 422) and any(m in low for m in _CONTEXT_MARKERS):
            kind = ErrorKind.CONTEXT_LENGTH
            code = "context_length_exceeded"
        elif status in (408, 409, 429) or status >= 500:
            kind = ErrorKind.RETRYABLE
        elif status in (401, 403):
            kind = ErrorKind.CONFIG
        else:
            kind = ErrorKind.CLIENT
        return Classified(kind, status, message, code, etype, param, retry_after)


_DECODER = json.JSONDecoder()


def _reply_usage(body: bytes) -> Usage | None:
    """The reply's `usage`, decoding only that object rather than the whole reply (long
    completions are mostly text). `"usage"` cannot match inside a string value, where its
    quotes are escaped; a nested key of that name is caught by the shape check, and then the
    whole body is decoded."""
    i = body.rfind(b'"usage"')
    if i < 0:
        return None
    j = body.find(b"{", i + 7, i + 64)
    if j >= 0 and not body[i + 7:j].strip(b": \t\r\n"):
        try:
            obj, _ = _DECODER.raw_decode(body[j:].decode())
        except (ValueError, UnicodeDecodeError):
            obj = None
        if isinstance(obj, dict) and "prompt_tokens" in obj:
            return from_openai(obj)
    try:
        full = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return from_openai(full.get("usage")) if isinstance(full, dict) else None


def _error_fields(body: bytes) -> tuple[str, str | None, str | None, str | None]:
    try:
        obj = json.loads(body)
    except ValueError:
        return body[:500].decode("utf-8", "replace").strip(), None, None, None
    err: Any = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict):
        code = err.get("code")
        return (str(err.get("message") or ""), str(code) if code is not None else None,
                err.get("type"), err.get("param"))
    if isinstance(err, str):
        return err, None, None, None
    if isinstance(obj, dict) and "message" in obj:  # vLLM's older ErrorResponse shape
        return str(obj["message"]), None, obj.get("type"), None
    return body[:500].decode("utf-8", "replace"), None, None, None

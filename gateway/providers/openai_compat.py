"""OpenAI-compatible upstreams (OpenAI, vLLM, TGI, Ollama, Groq, Together, Mistral, DeepSeek,
Fireworks, OpenRouter…): a byte pass-through.

Requests are forwarded as the client sent them but for `model` (and, on streams, the usage
request). Replies pass through untouched except `model`, which becomes the public name — a bytes
replace, not a re-serialisation — and a usage chunk the client did not ask for, which is removed.
Streams keep OpenAI's shape: the frames before the first content are held until it comes (so a
stream that drops after its role chunk still falls back), and a chunk with empty `choices` that
is not the usage chunk never reaches the client.

The Responses API (`/v1/responses`) passes through natively where the upstream serves it
(`supports_responses`: OpenAI by default, vLLM when declared): see `openai_responses.py`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from gateway.accounting.usage import Usage, from_openai
from gateway.call import Call, Endpoint, Ingress
from gateway.errors import InvalidRequest
from gateway.policy.models import LocalProvider, OpenAIProvider, ProviderBase
from gateway.providers import openai_responses
from gateway.providers.base import Classified, ErrorKind, Reply, Target
from gateway.providers.http_errors import parse_retry_after
from gateway.providers.request_json import with_members
from gateway.providers.scrub import scrub
from gateway.providers.sse import HeldFrames, has_any, text_of
from gateway.providers.sse import payload as sse_payload
from gateway.upstream import UpstreamRequest

_PATHS = {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings",
          "rerank": "/rerank", "score": "/score", "moderations": "/moderations"}
# Reranking and scoring are vLLM's endpoints (`/v1/rerank` in Cohere's and Jina's shape,
# `/v1/score`), which other OpenAI-compatible hosts (Jina, Together) serve too; these kinds have
# neither, so a request for them is refused before it is sent.
_SCORING: frozenset[Endpoint] = frozenset({"rerank", "score"})
_GENERATION: frozenset[Endpoint] = frozenset({"chat", "completions", "embeddings"})
_MODERATION: frozenset[Endpoint] = frozenset({"moderations"})
_NO_SCORING = {
    "openai": "OpenAI's API has no /v1/{endpoint} endpoint",
    "azure": "Azure OpenAI has no /v1/{endpoint} endpoint",
    "local": "local_backend serves no cross-encoder for /v1/{endpoint}; point a `kind: vllm` "
             "provider at a vLLM server that runs one (docs/local_backend.md)",
}
_CONTEXT_MARKERS = ("maximum context length", "context_length_exceeded", "context length",
                    "too many tokens", "prompt is too long", "reduce the length")


def _json_str(s: str) -> bytes:
    return json.dumps(s, ensure_ascii=False).encode()


class ModelRename:
    """Rewrites `"model": "<upstream>"` to the public name in reply bytes, both spacings.

    `identity`: the two names are the same, so there is nothing to rewrite and a stream skips
    the call altogether (it would run once per chunk)."""

    __slots__ = ("_pairs", "identity")

    def __init__(self, upstream: str, public: str) -> None:
        self.identity = upstream == public
        if self.identity:
            self._pairs: tuple[tuple[bytes, bytes], ...] = ()
        else:
            u, p = _json_str(upstream), _json_str(public)
            self._pairs = ((b'"model":' + u, b'"model":' + p), (b'"model": ' + u, b'"model": ' + p))

    def __call__(self, data: bytes) -> bytes:
        for old, new in self._pairs:
            if data.find(old) >= 0:  # not `in`: see sse.has_any
                return data.replace(old, new)
        return data


class OpenAIStream:
    """SSE pass-through: whole events out, usage read from whichever chunk carries it.

    Frames before the first content (the role chunk, empty deltas, Azure's
    `prompt_filter_results` chunk) are held back and released, in order, with the first
    content or tool-call delta, a `finish_reason`, or `[DONE]`. Until then nothing has reached
    the client and the proxy can still fall back when the upstream drops. Time to first token
    is unchanged by this: it is the first *content* token either way.
    """

    __slots__ = ("_buf", "_classify_body", "_filters", "_flowing", "_held", "_keep_every",
                 "_keep_final", "_rename", "_renames", "chunks", "done", "error", "usage")

    def __init__(self, rename: Callable[[bytes], bytes], keep_final: bool, keep_every: bool,
                 classify_body: Any) -> None:
        # What `SSEEvents` keeps: the bytes of an event not complete yet (see `feed`).
        self._buf = b""
        self._rename = rename
        # False where `rename` is known to change nothing (ModelRename.identity): the fast path
        # then leaves the bytes alone without calling it.
        self._renames = not getattr(rename, "identity", False)
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
        # Client bytes held until the first content; None once released.
        self._held = HeldFrames()
        # Azure's `prompt_filter_results`, waiting for the next chunk to ride on.
        self._filters: Any = None
        # Whether no frame is held and no filter result waits: the fast path's own conditions,
        # one attribute read per chunk. Both change only in `_event` and `finish`, which set it.
        self._flowing = False

    def feed(self, data: bytes) -> bytes:
        # `SSEEvents.take`, inlined: this runs once per chunk, and a call is a frame more.
        buf = self._buf + data if self._buf else data
        if 13 in buf:  # CRLF line ends: see SSEEvents.take
            buf = buf.replace(b"\r\n", b"\n")
        if buf[-2:] == b"\n\n":
            # The read ends on an event's end, as nearly every one does: the last "\n\n"
            # is there, so this is `take`'s rfind without a call of a METH_VARARGS method.
            self._buf = b""
            whole = buf
        else:
            end = buf.rfind(b"\n\n")
            if end < 0:
                self._buf = buf
                return b""
            self._buf = buf[end + 2:]
            whole = buf[: end + 2]
        # Fast path: content is flowing and nothing in this batch of events needs a look.
        # Decoded once (latin-1: a copy, see sse.text_of) so each marker is one str `in` (see
        # sse.has_any); the markers are spelled out rather than looped over. Both spellings of
        # empty `choices` end in `[]`, so where `[]` is absent (a content chunk's choices open
        # with `[{`) one scan rules out both: `A in t` implies `"[]" in t` for either A, so the
        # `and` below is exactly `'"choices":[]' in t or '"choices": []' in t`, a scan less.
        text = whole.decode("latin-1")
        if self._flowing and not (
                '"error"' in text or "[DONE]" in text or ("[]" in text and (
                    '"choices":[]' in text or '"choices": []' in text))):
            plain = self._plain(whole) if '"usage"' in text else whole
            if plain is not None:
                self.chunks += whole.count(b"data:")
                return self._rename(plain) if self._renames else plain
        out: list[bytes] = []
        # Off while events are looked at (an exception there leaves it off: the slow path is
        # right either way), then what they left.
        self._flowing = False
        for event in whole.split(b"\n\n"):
            if event:
                self._event(event, out)
        self._flowing = not self._held.holding and self._filters is None
        return b"".join(out)

    def _plain(self, whole: bytes) -> bytes | None:
        """Content events that carry `"usage"` as they may go out without a parse, or None when
        one needs it.

        OpenAI, once include_usage is on (the gateway asks for it), puts `"usage":null` on
        every chunk: dropped here as bytes, unless the client asked for include_usage itself,
        where the slow path would parse and re-encode each chunk to drop it. Any real usage
        (the final chunk, vLLM's continuous stats) or another spelling is parsed."""
        out = whole.replace(b',"usage":null', b"")
        if out.find(b'"usage"') >= 0:
            return None
        return whole if self._keep_final else out

    def _event(self, event: bytes, out: list[bytes]) -> None:
        payload = sse_payload(event)
        if payload == b"[DONE]":
            self.done = True
            self._held.emit(out, event + b"\n\n", True)
            return
        holding = self._held.holding
        if self._filters is None and not has_any(text_of(payload), _LOOK_EVENT) \
                and (not holding or (payload.find(b'"content":"') >= 0
                                     and payload.find(b'"content":""') < 0)):
            # Content as it came. While holding, a non-empty `"content":"…` proves it without a
            # parse: quotes inside JSON strings are escaped, so only a key can match.
            self.chunks += 1
            self._held.emit(out, self._rename(event) + b"\n\n", True)
            return
        try:
            obj = json.loads(payload)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            # Not a JSON object (a comment, a keep-alive): passed on as it came, never content.
            self._held.emit(out, self._rename(event) + b"\n\n", False)
            return
        if "error" in obj and "choices" not in obj:
            self.error = self._classify_body(500, payload)
            return
        usage = from_openai(obj.get("usage"))
        if usage is not None:
            self.usage = usage
        choices = obj.get("choices")
        if not choices:
            if usage is None:
                # Not OpenAI's shape (OpenAI sends empty `choices` only on the usage chunk):
                # Azure's first chunk carries just `prompt_filter_results`. The SDK's
                # `chunk.choices[0]` would fail on it, so it rides on the next chunk instead.
                if "prompt_filter_results" in obj:
                    self._filters = obj["prompt_filter_results"]
                return
            # The usage-only final chunk: forwarded only if the client asked for it.
            self._held.emit(out, self._rename(event) + b"\n\n" if self._keep_final else None,
                            False)
            return
        self.chunks += 1
        opens = holding and _has_content(choices)
        # `"usage": null` (OpenAI, once include_usage is on) or usage riding on a content chunk
        # (vLLM continuous stats) that the client did not ask for: drop just that key.
        strip = "usage" in obj and not (self._keep_every if usage is not None
                                        else self._keep_final)
        if strip:
            del obj["usage"]
        if self._filters is not None:
            obj["prompt_filter_results"] = self._filters
            self._filters = None
        elif not strip:
            self._held.emit(out, self._rename(event) + b"\n\n", opens)
            return
        self._held.emit(out, b"data: " + self._rename(json.dumps(obj, ensure_ascii=False)
                                                      .encode()) + b"\n\n", opens)

    def finish(self) -> bytes:
        out = self._held.release()
        self._flowing = self._filters is None
        return out


def _has_content(choices: Any) -> bool:
    """Whether a chunk's choices carry anything beyond the role: text, a tool call, reasoning,
    a refusal, or a finish reason."""
    if not isinstance(choices, list):
        return True
    for c in choices:
        if not isinstance(c, dict):
            return True
        if c.get("finish_reason") is not None or c.get("text"):
            return True
        delta = c.get("delta")
        if isinstance(delta, dict) and any(v for k, v in delta.items() if k != "role"):
            return True
    return False


class OpenAICompatAdapter:
    native_ingresses: frozenset[Ingress] = frozenset({"openai"})

    def __init__(self, name: str, config: ProviderBase) -> None:
        self.name = name
        self.config = config
        self._base = config.base_url.rstrip("/")
        if self.serves_responses(config):
            self.native_ingresses = frozenset({"openai", "responses"})
        self._stream_usage = getattr(config, "supports_stream_usage", True)
        self._vllm = (isinstance(config, OpenAIProvider) and config.kind == "vllm") \
            or isinstance(config, LocalProvider)
        headers = {"Content-Type": "application/json", **config.headers}
        if config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key}"
        self._headers = headers
        self._secrets = tuple(s for s in (config.api_key,) if s)
        self._kind = str(getattr(config, "kind", ""))
        # What this provider can be asked for (rerank and score only where a kind serves them).
        self.endpoints = _GENERATION if self._kind in _NO_SCORING else _GENERATION | _SCORING
        # OpenAI's moderation API, passed through to whoever serves it; local_backend does not.
        if self._kind != "local":
            self.endpoints = self.endpoints | _MODERATION

    @staticmethod
    def serves_responses(config: ProviderBase) -> bool:
        """`supports_responses` resolved: OpenAI itself serves it unless told otherwise; other
        OpenAI-compatible servers (vLLM < 0.10, Groq…) and `kind: local` are translated."""
        if not isinstance(config, OpenAIProvider):
            return False
        declared = config.supports_responses
        return config.kind == "openai" if declared is None else declared

    def url(self, call: Call, target: Target) -> str:
        return self._base + _PATHS[call.endpoint]

    def responses_url(self) -> str:
        return self._base + "/responses"

    def token_count_request(self, call: Call, target: Target) -> UpstreamRequest | None:
        """`POST /v1/responses/input_tokens` for a Responses client where this provider serves
        Responses itself (the same body a `/v1/responses` call would send it); None otherwise:
        the gateway counts that itself."""
        if call.ingress != "responses" or "responses" not in self.native_ingresses:
            return None
        url, _, query = self.responses_url().partition("?")
        return UpstreamRequest(url + "/input_tokens" + ("?" + query if query else ""),
                               openai_responses.request_body(call, target), self._headers)

    def rename(self, call: Call, target: Target) -> Callable[[bytes], bytes]:
        """What rewrites `model` in reply bytes to the public name."""
        return ModelRename(target.upstream_model, call.model)

    def request_body(self, call: Call, target: Target) -> bytes:
        body = call.body
        needs_usage = call.stream and self._stream_usage and not (
            call.client_include_usage and not self._vllm)
        if target.upstream_model == call.model and not needs_usage:
            return call.raw
        changes: dict[str, Any] = {}
        if target.upstream_model != call.model:
            changes["model"] = target.upstream_model
        if needs_usage:
            opts = dict(body.get("stream_options") or {})
            opts["include_usage"] = True
            if self._vllm:
                # vLLM reports usage on every chunk, so a stream cut short still has a count.
                opts["continuous_usage_stats"] = True
            changes["stream_options"] = opts
        # The prompt is not re-encoded: only these members are (request_json.py).
        return with_members(call.raw, body, changes)

    def build_request(self, call: Call, target: Target, native: bool) -> UpstreamRequest:
        if call.endpoint not in self.endpoints:
            raise InvalidRequest(refusal(call, self._kind, _NO_SCORING[self._kind]),
                                 param="model", code="endpoint_not_supported")
        if native and call.ingress == "responses":
            return UpstreamRequest(self.responses_url(),
                                   openai_responses.request_body(call, target), self._headers)
        return UpstreamRequest(self.url(call, target), self.request_body(call, target),
                               self._headers)

    def parse_reply(self, call: Call, target: Target, body: bytes, native: bool) -> Reply:
        if native and call.ingress == "responses":
            return openai_responses.parse_reply(call, target, body, self.name)
        usage = scoring_usage(body) if call.endpoint in _SCORING else _reply_usage(body)
        return Reply(self.rename(call, target)(body), usage)

    def stream(self, call: Call, target: Target,
               native: bool) -> OpenAIStream | openai_responses.ResponsesPassThrough:
        if native and call.ingress == "responses":
            return openai_responses.ResponsesPassThrough(call, target, self._classify_body)
        opts = call.body.get("stream_options") or {}
        every = isinstance(opts, dict) and bool(opts.get("continuous_usage_stats"))
        keep = call.client_include_usage or not self._stream_usage
        # Usage on content chunks reaches the client when it asked for usage and the provider
        # puts it there on its own; not when it is there only because we asked vLLM for
        # continuous stats.
        every = every or not self._stream_usage or (keep and not self._vllm)
        return OpenAIStream(self.rename(call, target), keep, every, self._classify_body)

    def _classify_body(self, status: int, body: bytes) -> Classified:
        return self.classify(status, body, {})

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
# What makes one stream event need a closer look than passing it on (a batch of them: the
# same, less `"usage"`, which `OpenAIStream._plain` looks at, and plus `[DONE]`; spelled out
# in `OpenAIStream.feed`).
_LOOK_EVENT = ('"usage"', '"error"', '"choices":[]', '"choices": []')


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


def refusal(call: Call, kind: str, reason: str) -> str:
    """The 400 for an endpoint a provider kind does not serve: the kind, why, the way out."""
    return (f"Model {call.model!r} is served by a `kind: {kind}` provider, which cannot serve "
            f"/v1/{call.endpoint}: {reason.format(endpoint=call.endpoint)}. Send it to a model "
            "on a `vllm` or `openai-compatible` provider (docs/providers.md, endpoints).")


def scoring_usage(body: bytes) -> Usage | None:
    """A rerank or score reply's `usage`, all of it input (a cross-encoder generates nothing):
    `prompt_tokens` (vLLM's score and newer rerank) or else `total_tokens` (older vLLM rerank,
    Jina). None when the reply has neither (Cohere bills search units): the gateway estimates."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    u = obj.get("usage") if isinstance(obj, dict) else None
    if not isinstance(u, dict):
        return None
    counts = [n for n in (u.get("prompt_tokens"), u.get("total_tokens"))
              if isinstance(n, int) and not isinstance(n, bool) and n >= 0]
    # The two are equal where both are sent; the larger survives a zero placeholder.
    return Usage(input_uncached=max(counts)) if counts else None


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

"""The Responses API passed through natively (OpenAI, Azure, vLLM servers that serve it).

API reference: https://platform.openai.com/docs/api-reference/responses
- Request: the client's bytes when nothing must change; otherwise its body with `model` set to
  the deployment's, and the conversation a `previous_response_id` continues: the upstream's own
  previous id when this provider served the last turn, else the stored turns prepended to
  `input` (the upstream never saw them, e.g. after a fallback).
- Reply: the Response object with the upstream's ids replaced by the gateway's (clients only
  ever see gateway ids) and the `model` it names (a dated snapshot on OpenAI, the underlying
  model on Azure) by the public name — bytes replaces of exact JSON strings, not a
  re-serialisation; usage read from `usage`.
- Stream: typed SSE events (`event: <type>` + `data` with `type` and `sequence_number`),
  passed through whole. Events before the first output are held (as the chat pass-through
  holds its role chunk), so a stream that fails before any output still falls back; the
  terminal event is held until `finish`, so the response is stored before the client's end.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Annotated, Any

import msgspec
from pydantic_core import from_json

from gateway.accounting.usage import Usage, from_responses
from gateway.call import Call
from gateway.errors import GatewayError, UpstreamError
from gateway.providers.base import Classified, Reply, Target
from gateway.providers.request_json import with_members
from gateway.providers.sse import HeldFrames, SSEEvents, compact_json, text_of

ClassifyBody = Callable[[int, bytes], Classified]

_SEQ = re.compile(rb'"sequence_number":\s*(\d+)')
# What makes a batch of whole events need a closer look than passing it on.
_LIFECYCLE = frozenset({b"response.created", b"response.queued", b"response.in_progress"})
_TERMINAL = frozenset({b"response.completed", b"response.incomplete", b"response.failed"})
# `ResponseError.code`s and `error` event codes that say the request itself is wrong: the same
# request fails on any deployment (https://platform.openai.com/docs/guides/error-codes).
_CLIENT_CODES = frozenset({"invalid_prompt", "bio_policy", "misalignment_policy_violation",
                           "data_residency_mismatch", "context_length_exceeded",
                           "invalid_request_error", "content_filter"})


def _json_str(s: str) -> bytes:
    """`s` as a JSON string, as the upstream spells it (non-ASCII unescaped)."""
    # Ids (`resp_…`) are identifiers: letters, digits and `_` need no escape. One test, where
    # the general one is four.
    if s.isidentifier() or (s.isascii() and s.isprintable() and '"' not in s
                            and "\\" not in s):
        return b'"' + s.encode() + b'"'
    return json.dumps(s, ensure_ascii=False).encode()


# ---- request -----------------------------------------------------------------------------------

def _as_items(value: Any) -> list[Any]:
    """`input` as a list of items: a string is one user message (OpenAI's own reading)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    return list(value) if isinstance(value, list) else [value]


def request_body(call: Call, target: Target) -> bytes:
    """The upstream's Responses request. `call.native_raw` goes as it came when the upstream
    model is the public name and there is no conversation to map (an ingress that changed
    `native_body` sets `native_raw` to None)."""
    conv = call.conversation
    if conv is None and target.upstream_model == call.model and call.native_raw is not None:
        return call.native_raw
    if conv is None and call.native_raw is not None:
        # A renamed deployment: the rest of the client's bytes (the prompt) is not re-encoded.
        return with_members(call.native_raw, call.native_body or {},
                            {"model": target.upstream_model})
    body = dict(call.native_body or {})
    body["model"] = target.upstream_model
    if conv is not None:
        upstream_id = conv.upstream.get(target.provider_name)
        if upstream_id:
            body["previous_response_id"] = upstream_id
        else:
            # The upstream has never seen this conversation: it gets the turns themselves.
            body.pop("previous_response_id", None)
            body["input"] = [*conv.items, *_as_items(body.get("input"))]
    return compact_json(body)


# ---- ids -----------------------------------------------------------------------------------------

class ResponseIds:
    """Rewrites what a reply names upstream to what the client knows: the response's own id,
    the `previous_response_id` it echoes (the upstream's previous id, or null when the
    conversation was sent as history), and `model`.

    A plain bytes replace is exact: ids are unique strings, and a quote inside a JSON string
    is escaped, so only whole values match. Output item ids (`msg_…`, `fc_…`) are left alone,
    and so is a tool's own `model` (`image_generation`), which is another value.
    """

    __slots__ = ("_pairs", "gateway_id", "previous_id", "upstream_id", "upstream_previous")

    def __init__(self, call: Call, target: Target, upstream_id: str | None,
                 upstream_model: Any = None) -> None:
        self.upstream_id = upstream_id
        self.gateway_id = call.response_id or upstream_id
        conv = call.conversation
        self.previous_id = conv.previous_id if conv is not None else None
        self.upstream_previous = conv.upstream.get(target.provider_name) \
            if conv is not None else None
        # Each entry: alternative spellings of one value, the first found is replaced.
        pairs: list[tuple[tuple[bytes, bytes], ...]] = []
        if upstream_id and self.gateway_id and upstream_id != self.gateway_id:
            pairs.append(((_json_str(upstream_id), _json_str(self.gateway_id)),))
        if self.previous_id is not None:
            new = _json_str(self.previous_id)
            if self.upstream_previous:
                pairs.append(((_json_str(self.upstream_previous), new),))
            else:
                pairs.append(_key_pairs(b"previous_response_id", b"null", new))
        if isinstance(upstream_model, str) and upstream_model != call.model:
            pairs.append(_key_pairs(b"model", _json_str(upstream_model), _json_str(call.model)))
        self._pairs = tuple(pairs)

    def __call__(self, data: bytes) -> bytes:
        for spellings in self._pairs:
            for old, new in spellings:
                if data.find(old) >= 0:  # not `in`: see sse.has_any
                    data = data.replace(old, new)
                    break
        return data

    def client_object(self, response: dict[str, Any], public_model: str) -> dict[str, Any]:
        """The Response object as the client gets it (what the gateway stores)."""
        out = dict(response)
        if self.gateway_id:
            out["id"] = self.gateway_id
        out["model"] = public_model
        if self.previous_id is not None:
            out["previous_response_id"] = self.previous_id
        return out


def _key_pairs(key: bytes, old: bytes, new: bytes) -> tuple[tuple[bytes, bytes], ...]:
    """`"key":old` → `"key":new`, as OpenAI pretty-prints replies and compact (streams)."""
    k = b'"' + key + b'":'
    return (k + b" " + old, k + b" " + new), (k + old, k + new)


# ---- non-streaming reply ---------------------------------------------------------------------

# What a reply the client asked not to store is read for: its id, `model` and `usage`. msgspec
# checks the whole object's syntax but builds only these (the `output` items, most of the
# reply, are skipped in C); the counts are declared non-negative ints, and anything else
# (null, a float, a bool, a nested shape the ledger would read otherwise) fails the decode and
# the reply is decoded whole instead, so both readings always agree (test_openai_responses_head).
_Count = Annotated[int, msgspec.Meta(ge=0)]


class _InputDetails(msgspec.Struct):
    cached_tokens: _Count = 0


class _OutputDetails(msgspec.Struct):
    reasoning_tokens: _Count = 0


class _Usage(msgspec.Struct):
    input_tokens: _Count = 0
    output_tokens: _Count = 0
    input_tokens_details: _InputDetails | None = None
    output_tokens_details: _OutputDetails | None = None


class _Head(msgspec.Struct):
    id: str | None = None
    model: Any = None
    usage: _Usage | None = None


_HEAD = msgspec.json.Decoder(_Head)


def _usage(u: _Usage | None) -> Usage | None:
    """`from_responses` of a usage object already typed by the decode (no isinstance checks)."""
    if u is None:
        return None
    prompt, completion = u.input_tokens, u.output_tokens
    d, e = u.input_tokens_details, u.output_tokens_details
    cached = 0 if d is None else d.cached_tokens
    reasoning = 0 if e is None else e.reasoning_tokens
    if cached > prompt:  # a detail is part of its total: never more than it
        cached = prompt
    if reasoning > completion:
        reasoning = completion
    return Usage(prompt - cached, cached, 0, completion - reasoning, reasoning)


def _not_stored(call: Call, body: bytes) -> Reply | None:
    """`parse_reply` of a reply that is not stored, without decoding it whole: the same bytes
    and usage (the id and `model` replaced as `ResponseIds` replaces them); None when the
    reply's fields are not of the plain types the whole decode reads alike."""
    try:
        head = _HEAD.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    up, model = head.id, head.model
    call.upstream_response_id = up
    gid = call.response_id
    if up and gid and up != gid:
        # The gateway's ids (`resp_` + hex) need no escaping.
        body = body.replace(_json_str(up), b'"' + gid.encode() + b'"')
    if isinstance(model, str) and model != call.model:
        old, new = _json_str(model), _json_str(call.model)
        for k in (b'"model": ', b'"model":'):  # pretty-printed (OpenAI) or compact (vLLM)
            if body.find(k + old) >= 0:
                body = body.replace(k + old, k + new)
                break
    return Reply(body, _usage(head.usage))


def parse_reply(call: Call, target: Target, body: bytes, provider: str) -> Reply:
    """The upstream's Response object → the client's bytes; sets `call.upstream_response_id`
    and, unless the client said `store: false`, `call.final_response` (what is stored)."""
    if call.conversation is None and (call.native_body or {}).get("store") is False:
        reply = _not_stored(call, body)
        if reply is not None:
            return reply
    try:
        # pydantic-core's parser: half the cost of the standard library's.
        obj = from_json(body)
    except ValueError:
        obj = None
    if not isinstance(obj, dict):
        raise UpstreamError(f"{provider} returned a reply that is not a JSON Response object")
    upstream_id = obj.get("id") if isinstance(obj.get("id"), str) else None
    ids = ResponseIds(call, target, upstream_id, obj.get("model"))
    call.upstream_response_id = upstream_id
    call.final_response = ids.client_object(obj, call.model)
    return Reply(ids(body), from_responses(obj.get("usage")))


# ---- errors ------------------------------------------------------------------------------------

def _error_status(code: Any) -> int:
    """The HTTP status an in-stream error would have had as a reply: what classifies it."""
    if code == "rate_limit_exceeded":
        return 429
    if isinstance(code, str) and (code in _CLIENT_CODES or "image" in code
                                  or code.startswith("invalid")):
        return 400
    return 500  # server_error, vector_store_timeout, none or unknown: another deployment may do


def classify_event(obj: dict[str, Any], classify: ClassifyBody) -> Classified:
    """An `error` event (its fields at the top, or nested under `error` as some servers send
    them), or the `error` of a failed Response, classified like an HTTP error."""
    err = obj.get("error")
    if not isinstance(err, dict):
        err = obj if obj.get("type") == "error" else {}
    code = err.get("code")
    body = compact_json({"error": {"message": err.get("message") or "", "type": err.get("type"),
                                   "param": err.get("param"),
                                   "code": code if isinstance(code, str) else None}})
    return classify(_error_status(code), body)


# ---- stream ------------------------------------------------------------------------------------

class ResponsesPassThrough:
    """Responses SSE to a Responses client: whole events, ids and `model` rewritten, usage and
    the final Response read from the terminal event.

    Held until the first output (`response.output_item.added` or any `….delta`): the lifecycle
    events before it. A `response.failed` or `error` event before then sets `error` and is not
    forwarded, so the proxy can still fall back; after it, `error` still stops the stream and
    `error_event` ends it in the client's format, its `sequence_number`s continuing.
    """

    __slots__ = (
        "_call",
        "_classify",
        "_events",
        "_held",
        "_ids",
        "_seq",
        "_seq_bytes",
        "_snapshot",
        "_tail",
        "_target",
        "chunks",
        "done",
        "error",
        "usage",
    )

    def __init__(self, call: Call, target: Target, classify: ClassifyBody) -> None:
        self._call = call
        self._target = target
        self._classify = classify
        self._events = SSEEvents()
        self._ids = ResponseIds(call, target, None)
        # Client bytes held until the first output; None once released.
        self._held = HeldFrames()
        # The terminal event (and anything after it), sent by `finish`.
        self._tail: list[bytes] = []
        # The last sequence number forwarded: parsed (`_seq`), or still in the bytes of the
        # last batch that went through the fast path (`_seq_bytes`), read only if needed.
        self._seq = -1
        self._seq_bytes = b""
        # The latest lifecycle Response object, as the client saw it: `error_event`'s base.
        self._snapshot: dict[str, Any] | None = None
        self.usage: Usage | None = None
        self.done = False
        self.error: Classified | None = None
        # Output deltas forwarded: the output estimate should the stream end without usage.
        self.chunks = 0

    def feed(self, data: bytes) -> bytes:
        whole = self._events.take(data)
        if not whole:
            return b""
        # Fast path: output is flowing and nothing in this batch of whole events needs a look
        # (deltas and item events carry neither the response's id nor `model`). Decoded once
        # (latin-1: a copy) so each marker is one str `in` (see sse.has_any).
        text = text_of(whole)
        if not self._held.holding and not self.done and self.error is None \
                and not ('"response"' in text or '"error"' in text or "[DONE]" in text):
            self.chunks += text.count('.delta"')
            if '"sequence_number"' in text:
                self._seq_bytes = whole
            return whole
        out: list[bytes] = []
        seen = self._seq, self._seq_bytes
        for event in whole.split(b"\n\n"):
            if event and self.error is None:
                self._event(event, out)
        if self.error is not None:
            # The proxy drops what this batch would have sent: the client's last event is
            # the one before it, and `error_event` numbers on from there.
            self._seq, self._seq_bytes = seen
            return b""
        if self._held.holding:
            return b""
        return b"".join(out)

    def _event(self, event: bytes, out: list[bytes]) -> None:
        raw = event + b"\n\n"
        if self.done:
            self._tail.append(raw)  # after the terminal event (a `[DONE]`): it stays last
            return
        name = b""
        lines = []
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                lines.append(line[5:].lstrip(b" "))
            elif line.startswith(b"event:"):
                name = line[6:].strip()
        payload = b"\n".join(lines)
        if not payload or payload == b"[DONE]":
            self._held.emit(out, raw, payload == b"[DONE]")  # a comment, a keep-alive
            return
        obj: Any = None
        if not name:
            obj = _loads(payload)
            kind = obj.get("type") if isinstance(obj, dict) else None
            name = kind.encode() if isinstance(kind, str) else b""
        m = _SEQ.search(payload)
        if m is not None:
            self._seq = int(m.group(1))
            self._seq_bytes = b""
        if name in _LIFECYCLE or name in _TERMINAL or name == b"error":
            obj = obj if obj is not None else _loads(payload)
            if isinstance(obj, dict):
                self._lifecycle(name, obj, raw, out)
                return
        opens = name == b"response.output_item.added" or name.endswith(b".delta")
        if name.endswith(b".delta"):
            self.chunks += 1
        self._held.emit(out, self._ids(raw), opens)

    def _lifecycle(self, name: bytes, obj: dict[str, Any], raw: bytes, out: list[bytes]) -> None:
        if name == b"error":
            self.error = classify_event(obj, self._classify)
            return
        response = obj.get("response")
        if not isinstance(response, dict):
            response = {}
        if self._ids.upstream_id is None and isinstance(response.get("id"), str):
            self._ids = ResponseIds(self._call, self._target, response["id"],
                                    response.get("model"))
            self._call.upstream_response_id = response["id"]
        client = self._ids.client_object(response, self._call.model)
        self._snapshot = client
        if name in _LIFECYCLE:
            self._held.emit(out, self._ids(raw), False)
            return
        usage = from_responses(response.get("usage"))
        if usage is not None:
            self.usage = usage
        self.done = True
        if name == b"response.failed" and self._held.holding:
            # Nothing reached the client yet: the proxy decides (fallback, or the error).
            self.error = classify_event(response, self._classify)
            return
        self._call.final_response = client
        # Released now, sent last (`finish`): the response is stored before the client's end.
        self._held.emit(out, b"", True)
        self._tail.append(self._ids(raw))

    def finish(self) -> bytes:
        tail, self._tail = self._tail, []
        return self._held.release() + b"".join(tail)

    def last_sequence_number(self) -> int:
        seqs = _SEQ.findall(self._seq_bytes) if self._seq_bytes else ()
        return max((int(s) for s in seqs), default=self._seq)

    def error_event(self, exc: GatewayError) -> bytes:
        """How the client's stream ends on a failure mid-way: `response.failed` (the snapshot
        the client last saw, failed) then an `error` event, numbered on from the last event."""
        seq = self.last_sequence_number() + 1
        response = dict(self._snapshot or {
            "id": self._call.response_id, "object": "response", "created_at": int(time.time()),
            "model": self._call.model})
        # Left out, the SDK's stream helper fills `output` from the items it accumulated.
        response.pop("output", None)
        response["status"] = "failed"
        response["error"] = {"code": "server_error", "message": exc.message}
        failed = {"type": "response.failed", "sequence_number": seq, "response": response}
        error = {"type": "error", "code": exc.code, "message": exc.message, "param": exc.param,
                 "sequence_number": seq + 1}
        return (b"event: response.failed\ndata: " + compact_json(failed) + b"\n\n"
                + b"event: error\ndata: " + compact_json(error) + b"\n\n")


def _loads(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None

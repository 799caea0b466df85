"""Token counting without generating: `POST /v1/messages/count_tokens` (the `anthropic` SDK's
`messages.count_tokens`) and `POST /v1/responses/input_tokens` (the `openai` SDK's
`responses.input_tokens.count`).

Held to the key like a generation request — authenticated, the model resolved and checked
against the key's model list (401, 404, 403) — but not proxied: no admission, no ledger
record, no cost. Each count is one increment of `gateway_token_count_requests_total`.

The model's first healthy deployment decides who counts. A provider that counts the client's
format itself is asked (an Anthropic deployment, `count_tokens`; one serving the Responses API
natively, `input_tokens`) and its number returned as it gave it (`x-gateway-token-count:
provider`). Anything else is counted by the gateway's tokenizer on the chat request the body
means (`estimated`: docs/accounting.md), and so is a provider that cannot be reached or fails:
a count is an estimate then, never an error. A request the provider refuses (400) is refused.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from starlette.requests import Request
from starlette.routing import Route

from gateway.accounting.estimate import count_prompt_tokens
from gateway.api.anthropic import forwarded_headers, to_openai_request
from gateway.api.anthropic_codec import CODEC
from gateway.api.bodies import CountTokensRequest, check_messages, check_responses
from gateway.api.json_body import parse_json_object
from gateway.api.parse import api_key, client_request_id, echo_id, read_body
from gateway.api.responses_request import to_chat_request
from gateway.call import Call, Ingress, Principal
from gateway.errors import GatewayError, ModelNotFound
from gateway.ids import new_id
from gateway.providers.base import ErrorKind, Target
from gateway.proxy import Proxy
from gateway.responses import ErrorCodec, RawResponse, error_response
from gateway.runtime import Runtime
from gateway.upstream import UpstreamFailure, UpstreamRequest

log = logging.getLogger("gateway.count_tokens")

Source = Literal["provider", "estimated"]
# Refusals of the request itself, which a second opinion would not change: the client's.
_REFUSED = (400, 413, 422)


@runtime_checkable
class TokenCounting(Protocol):
    """An adapter whose provider counts a client format's input itself."""

    def token_count_request(self, call: Call, target: Target) -> UpstreamRequest | None:
        """The upstream request that counts `call` (in its ingress's format), or None when
        this provider cannot count that format."""
        ...


@dataclass(frozen=True, slots=True)
class _Format:
    """One counting endpoint: its wire format, how its body is checked, what chat request it
    means (for the estimate), and its reply."""

    ingress: Ingress
    check: Callable[[Any], None]
    chat: Callable[[Call], dict[str, Any]]
    reply: Callable[[int], dict[str, Any]]
    codec: ErrorCodec | None
    anthropic_paths: bool = False


def _messages_chat(call: Call) -> dict[str, Any]:
    # A count takes no max_tokens; the translation wants one, and it changes no prompt token.
    return to_openai_request({**(call.native_body or {}), "max_tokens": 1})


def _responses_chat(call: Call) -> dict[str, Any]:
    # `prepare` left the translation ready when it can be made; else this raises the 400
    # naming what cannot be.
    if call.translate is not None:
        call.translate(call)
        return call.body
    history = call.conversation.items if call.conversation is not None else []
    return to_chat_request(call.native_body or {}, history)


MESSAGES = _Format(
    "anthropic", lambda body: check_messages(body, CountTokensRequest), _messages_chat,
    lambda n: {"input_tokens": n}, CODEC, anthropic_paths=True)
RESPONSES = _Format(
    "responses", check_responses, _responses_chat,
    lambda n: {"object": "response.input_tokens", "input_tokens": n}, None)

class TokenCounter:
    """Both endpoints' handler."""

    def __init__(self, proxy: Proxy) -> None:
        self._proxy = proxy

    async def handle(self, request: Request, fmt: _Format) -> RawResponse:
        headers = {"x-request-id": echo_id(request.headers)}
        deps = self._proxy.deps
        try:
            rt = deps.runtime()
            raw = await read_body(request, rt.policy.server.max_body_bytes)
            body = parse_json_object(raw, anthropic_paths=fmt.anthropic_paths)
            fmt.check(body)
            principal = deps.auth.authenticate(api_key(request))
            model = body["model"]
            if model not in rt.policy.models:
                raise ModelNotFound(_unknown_model(rt, model, principal))
            deps.auth.check_model(principal, model, rt.policy.models)
            call = Call(endpoint="chat", model=model, body={}, raw=b"", stream=False,
                        request_id=new_id(), client_request_id=client_request_id(request.headers),
                        ingress=fmt.ingress, native_body=body, native_raw=raw,
                        headers=forwarded_headers(request.headers))
            codec = deps.codecs.get(fmt.ingress)
            if codec is not None:
                # As for a generation request: Responses rebuilds the conversation that
                # `previous_response_id` continues (the count includes it).
                pending = codec.prepare(call, principal)
                if pending is not None:
                    await pending
            target = first_target(rt, model)
            n, source = await self._count(rt, call, target, fmt)
        except GatewayError as e:
            return error_response(e, headers, fmt.codec)
        deps.metrics.token_count(model, source)
        headers["x-gateway-token-count"] = source
        headers["x-gateway-deployment"] = target.id
        return RawResponse(200, json.dumps(fmt.reply(n)).encode(), headers)

    async def _count(self, rt: Runtime, call: Call, target: Target, fmt: _Format
                     ) -> tuple[int, Source]:
        adapter = rt.adapters[target.provider_name]
        req = adapter.token_count_request(call, target) \
            if isinstance(adapter, TokenCounting) else None
        if req is not None:
            n = await self._ask(rt, adapter, target, req)
            if n is not None:
                return n, "provider"
        chat = fmt.chat(call)
        # The tokenizer is CPU work on a prompt of any size: off the event loop.
        return await asyncio.to_thread(count_prompt_tokens, chat, target.upstream_model), \
            "estimated"

    async def _ask(self, rt: Runtime, adapter: Any, target: Target, req: UpstreamRequest
                   ) -> int | None:
        """The provider's count; None (the gateway estimates) when it cannot give one."""
        provider = rt.policy.providers[target.provider_name]
        try:
            resp = await rt.clients[target.provider_name].send(
                req, target.deployment.timeouts or provider.timeouts)
            try:
                data = await resp.read()
            finally:
                resp.release()
        except UpstreamFailure as e:
            log.warning("token count: %s unreachable (%s); estimating", target.id, e.reason)
            return None
        if resp.status == 200:
            n = _input_tokens(data)
            if n is None:
                log.warning("token count: %s answered without input_tokens; estimating",
                            target.id)
            return n
        c = adapter.classify(resp.status, data, resp.headers)
        if c.status in _REFUSED and c.kind in (ErrorKind.CLIENT, ErrorKind.CONTEXT_LENGTH):
            raise GatewayError(c.message, status=c.status, type=c.type or "invalid_request_error",
                               code=c.code, param=c.param)
        log.warning("token count: %s answered HTTP %s (%s); estimating", target.id, c.status,
                    c.kind.value)
        return None


def first_target(rt: Runtime, model: str) -> Target:
    """The model's first deployment that is healthy now (in the policy's order); the first
    declared one when none is, for its tokenizer: counting needs no backend."""
    healthy = rt.router.candidates(model, rt.unavailable())
    if healthy:
        return healthy[0]
    first = rt.policy.models[model].deployments[0]
    return Target(model, first, first.provider)


def _input_tokens(data: bytes) -> int | None:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    n = obj.get("input_tokens") if isinstance(obj, dict) else None
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else None


def _unknown_model(rt: Runtime, model: str, principal: Principal) -> str:
    names = sorted(m for m in rt.policy.models if principal.may_use(m))
    return (f"The model {model!r} does not exist or you do not have access to it. "
            f"Available: {', '.join(names) or 'none'}.")


def routes(proxy: Proxy) -> list[Route]:
    counter = TokenCounter(proxy)

    async def messages(request: Request) -> RawResponse:
        return await counter.handle(request, MESSAGES)

    async def responses(request: Request) -> RawResponse:
        return await counter.handle(request, RESPONSES)

    return [
        Route("/v1/messages/count_tokens", messages, methods=["POST"]),
        Route("/v1/responses/input_tokens", responses, methods=["POST"]),
        Route("/responses/input_tokens", responses, methods=["POST"]),
    ]

"""The guards as a request stage (gateway/stages/base.py): input checks before routing and per
attempt, output checks on replies and, incrementally, on streams.

One stage runs every guard of the policy, in policy order. A guard scoped `external_only`
runs at `attempt()` — once the destination is known — and only for an external provider, so
a request that falls back from a self-hosted deployment to an external one is checked (and
blocked or redacted) before anything leaves. Its redaction applies to external attempts
only: a later self-hosted attempt gets the original prompt back.

Output checks: the text detectors on replies (and on streams through the sliding window),
`length` and `model` on whole replies (`output.py`) and on streams (`stream_checks.py`).
A policy with a `model` guard gets a `SpendingGuardStage`, whose `reserve` adds the
classifier calls' worst case to the request's admission (`admission.py`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from gateway.accounting.estimate import estimate_prompt_tokens
from gateway.call import Call, Principal
from gateway.guards.admission import GuardSpend
from gateway.guards.base import Finding, redact
from gateway.guards.compiled import SELF_HOSTED_KINDS, CompiledGuard, compile_guards
from gateway.guards.model_check import ask
from gateway.guards.output import check_reply
from gateway.guards.refusal import TOO_LONG, blocked, prompt_param
from gateway.guards.stream_checks import LengthCap, SegmentCheck
from gateway.guards.text import rewrite, texts
from gateway.guards.verdicts import VerdictClock
from gateway.guards.window import Check, StreamBlocked, WindowScanner
from gateway.stages.base import (
    ORDER_GUARD_INPUT,
    ReplyInfo,
    Stage,
    StageContext,
    StageRun,
    StreamWatch,
    set_body,
    set_native_body,
)

log = logging.getLogger("gateway.guards")

if TYPE_CHECKING:
    from gateway.policy.models import Policy
    from gateway.providers.base import Target
    from gateway.runtime import Runtime


def build_guard_stages(policy: Policy, runtime: Runtime) -> Iterable[Stage]:
    """One guard stage when the policy has any guard."""
    if not policy.guards:
        return ()
    guards = compile_guards(policy.guards)
    spend = GuardSpend(policy, runtime, guards) if any(g.model for g in guards) else None
    return (GuardStage(guards, runtime) if spend is None
            else SpendingGuardStage(guards, runtime, spend),)


_UNPLANNED = object()  # a (tenant, model) whose guards are not worked out yet


class GuardStage:
    name = "guards"
    order = ORDER_GUARD_INPUT

    def __init__(self, guards: list[CompiledGuard], runtime: Runtime) -> None:
        self.guards = guards
        self.runtime = runtime
        # (tenant, model) → the guards that apply, split by when they run; bounded by the
        # policy's tenants × models (both are checked before stages begin).
        self._plans: dict[tuple[str, str], _Plan | None] = {}

    def plan(self, tenant: str, model: str) -> _Plan | None:
        key = (tenant, model)
        try:
            return self._plans[key]
        except KeyError:
            plan = self._plans[key] = _Plan.of([g for g in self.guards if g.applies(*key)])
            return plan

    def begin(self, ctx: StageContext) -> StageRun | None:
        plan = self._plans.get((ctx.principal.tenant, ctx.call.model), _UNPLANNED)
        if plan is _UNPLANNED:
            plan = self.plan(ctx.principal.tenant, ctx.call.model)
        return GuardRun(self.runtime, ctx, plan) if isinstance(plan, _Plan) else None


class SpendingGuardStage(GuardStage):
    """The guards of a policy with a `model` guard: its classifier calls are admitted with
    the request they check (gateway/stages/base.py `Reserves`). Only such a policy has
    `reserve`, so admission of any other does no guard work."""

    def __init__(self, guards: list[CompiledGuard], runtime: Runtime,
                 spend: GuardSpend) -> None:
        super().__init__(guards, runtime)
        self.spend = spend

    def reserve(self, call: Call, principal: Principal, prompt_tokens: int,
                max_completion_tokens: int) -> tuple[int, Decimal] | None:
        plan = self.plan(principal.tenant, call.model)
        if plan is None or not plan.models:
            return None
        return self.spend.worst_case(plan.models, call.stream, principal.tenant,
                                     prompt_tokens, max_completion_tokens)


@dataclass(frozen=True, slots=True)
class _Plan:
    inputs: list[CompiledGuard]
    external_inputs: list[CompiledGuard]
    outputs: list[CompiledGuard]
    # The `model` guards, each with where it runs (`input`, `output`), for admission.
    models: list[tuple[CompiledGuard, str]]

    @classmethod
    def of(cls, guards: list[CompiledGuard]) -> _Plan | None:
        if not guards:
            return None
        return cls([g for g in guards if g.input and not g.external_only],
                   [g for g in guards if g.input and g.external_only],
                   [g for g in guards if g.output],
                   [(g, stage) for g in guards if g.model is not None
                    for stage, on in (("input", g.input), ("output", g.output)) if on])


@dataclass(slots=True)
class _Bodies:
    """A request's content as the adapters read it (saved around external-only redaction)."""

    body: dict[str, Any]
    raw: bytes
    native_body: dict[str, Any] | None
    native_raw: bytes | None
    translate: Any

    @classmethod
    def of(cls, call: Call) -> _Bodies:
        return cls(call.body, call.raw, call.native_body, call.native_raw, call.translate)

    def put(self, call: Call) -> None:
        call.body, call.raw = self.body, self.raw
        call.native_body, call.native_raw = self.native_body, self.native_raw
        call.translate = self.translate


class GuardRun(StageRun):
    def __init__(self, runtime: Runtime, ctx: StageContext, plan: _Plan) -> None:
        self.rt = runtime
        self.ctx = ctx
        self.inputs = plan.inputs
        self.external_inputs = plan.external_inputs
        self.outputs = plan.outputs
        self.checks_attempts = bool(plan.external_inputs)
        self.checks_replies = bool(plan.outputs)
        # External-only redaction: the prompt as the client sent it, and as external
        # providers get it (computed at the first external attempt).
        self._original: _Bodies | None = None
        self._external: _Bodies | None = None

    # ---- input ---------------------------------------------------------------------------

    async def before(self) -> None:
        for g in self.inputs:
            if g.model is None:
                self._check_input(g, None)  # no await: no coroutine for a pattern scan
            else:
                await self._ask_input(g, None)
        return None

    async def attempt(self, target: Target) -> None:
        if not self.external_inputs:
            return
        call = self.ctx.call
        if not _external(self.ctx, target):
            if self._original is not None:
                self._original.put(call)  # a self-hosted attempt gets the prompt as sent
            return
        if self._external is not None:
            self._external.put(call)
            return
        self._original = _Bodies.of(call)
        for g in self.external_inputs:
            if g.model is None:
                self._check_input(g, target)
            else:
                await self._ask_input(g, target)
        self._external = _Bodies.of(call)

    def _check_input(self, g: CompiledGuard, target: Target | None) -> None:
        """A text or length guard on the prompt (synchronous)."""
        call = self.ctx.call
        clock = VerdictClock(self.ctx.record, g.name, "input",
                             target.id if target is not None else None)
        source = call.native_body if call.native_body is not None else call.body
        parts = texts(source)
        find = g.find
        if find is not None:
            found: list[Finding] = []
            for t in parts:  # a loop, not a comprehension: no frame of its own, per request
                found += find(t)
            if not found:
                clock.done("pass")
                return
            labels = {f.label for f in found}
            if g.action == "redact":
                _redact_request(call, g)
                clock.done("redact", labels)
                return
            clock.done(g.action, labels)
            if g.action == "block":
                raise blocked(g, "prompt", param=prompt_param(call))
            return
        over = _too_long(g, call, parts)
        clock.done(("block" if g.action == "block" else "flag") if over else "pass",
                   ["length"] if over else [])
        if over and g.action == "block":
            raise blocked(g, "prompt", TOO_LONG, param=prompt_param(call))

    async def _ask_input(self, g: CompiledGuard, target: Target | None) -> None:
        """A `model` guard on the prompt: its classifier's verdict."""
        call = self.ctx.call
        clock = VerdictClock(self.ctx.record, g.name, "input",
                             target.id if target is not None else None)
        source = call.native_body if call.native_body is not None else call.body
        why = await ask(self.rt, g, "\n".join(texts(source)), self.ctx.record, clock,
                        "prompt")
        if why is not None:
            raise blocked(g, "prompt", why, param=prompt_param(call))

    # ---- output --------------------------------------------------------------------------

    def _outputs_for(self, target: Target) -> list[CompiledGuard]:
        return [g for g in self.outputs
                if not g.external_only or _external(self.ctx, target)]

    async def reply(self, body: bytes, info: ReplyInfo) -> bytes:
        guards = self._outputs_for(info.target)
        if not guards:
            return body
        try:
            obj = json.loads(body)
        except ValueError:
            return body
        changed = False
        for g in guards:
            if g.find is None:  # length, model: on the reply as it now reads
                await check_reply(self.rt, self.ctx.record, g, obj, info)
                continue
            clock = VerdictClock(self.ctx.record, g.name, "output")
            found = [f for t in texts(obj) for f in g.find(t)]
            if not found:
                clock.done("pass")
                continue
            clock.done(g.action, {f.label for f in found})
            if g.action == "block":
                raise blocked(g, "reply")
            if g.action == "redact":
                obj = rewrite(obj, _redactor(g))
                changed = True
        if changed:
            _redact_stored(self.ctx.call, guards)
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() \
            if changed else body

    def stream(self, info: ReplyInfo) -> StreamWatch | None:
        guards = self._outputs_for(info.target)
        if not guards:
            return None
        return GuardWatch(self.rt, self.ctx, info, guards)


class GuardWatch:
    """The output guards on one stream, in three steps each fed what the one before let
    through: the text detectors' sliding window (`WindowScanner`), the classifiers'
    segments (`SegmentCheck`), then the length caps (`LengthCap`: they count only text that
    reaches the client, and release up to the cap when they cut)."""

    def __init__(self, rt: Runtime, ctx: StageContext, info: ReplyInfo,
                 guards: list[CompiledGuard]) -> None:
        self.ctx = ctx
        self.guards = {g.name: g for g in guards}
        text = [g for g in guards if g.find is not None]
        self.clocks = {g.name: VerdictClock(ctx.record, g.name, "output") for g in text}
        checks: list[Check] = [(g.name, g.action, g.find, g.replacement) for g in text
                               if g.find is not None]
        self.scanner = WindowScanner(info.wire, max(g.window for g in text), checks,
                                     self._found) if text else None
        record = ctx.record
        self.steps: list[LengthCap | SegmentCheck] = [
            SegmentCheck(rt, record, info.wire, g, VerdictClock(record, g.name, "output"))
            for g in guards if g.model is not None]
        self.steps += [LengthCap(info.wire, g, VerdictClock(record, g.name, "output"))
                       for g in guards if g.length is not None]

    def _found(self, name: str, action: str, labels: list[str]) -> None:
        entry = self.clocks[name].entry
        entry["verdict"] = action
        entry["labels"] = sorted(set(entry["labels"]) | set(labels))

    async def feed(self, chunk: bytes) -> bytes:
        if self.scanner is not None:
            chunk = self._timed(self.scanner.feed, chunk)
        return await self._steps(chunk, 0)

    async def _steps(self, data: bytes, first: int) -> bytes:
        for i in range(first, len(self.steps)):
            try:
                data = await self.steps[i].feed(data) if data else data
            except StreamBlocked as e:
                release = e.release
                if release and i + 1 < len(self.steps):
                    # What the blocking step let through still passes the steps after it.
                    release = await self._steps(release, i + 1)
                raise blocked(self.guards[e.name], "reply", e.why, release=release) from None
        return data

    async def finish(self) -> None:
        # The text ending (finish_reason, message_delta, [DONE]) released everything held
        # already; this is the last check of anything a translator left without one.
        left = self._timed(lambda _: self.scanner.flush(), b"") if self.scanner else b""
        left = await self._steps(left, 0)
        for i, step in enumerate(self.steps):
            left += await self._steps(await step.flush(), i + 1)
        if any(c.entry["verdict"] == "redact" for c in self.clocks.values()):
            _redact_stored(self.ctx.call, list(self.guards.values()))
        if left:
            log.warning("guards: %d bytes held at the end of stream %s had no terminal event "
                        "to go before", len(left), self.ctx.record.request_id)

    def _timed(self, fn: Any, arg: bytes) -> bytes:
        t0 = time.perf_counter()
        try:
            out: bytes = fn(arg)
            return out
        except StreamBlocked as e:
            raise blocked(self.guards[e.name], "reply") from None
        finally:
            spent = time.perf_counter() - t0
            for clock in self.clocks.values():
                clock.add_time(spent / len(self.clocks))


# ---- helpers -------------------------------------------------------------------------------


def _external(ctx: StageContext, target: Target) -> bool:
    provider = ctx.policy.providers.get(target.provider_name)
    return provider is None or provider.kind not in SELF_HOSTED_KINDS


def _redactor(g: CompiledGuard) -> Any:
    find = g.find
    assert find is not None

    def fn(s: str) -> str:
        found: list[Finding] = find(s)
        return redact(s, found, g.replacement) if found else s
    return fn


def _redact_stored(call: Call, guards: list[CompiledGuard]) -> None:
    """A Responses reply is stored (`previous_response_id`, `GET /v1/responses/{id}`) from
    `call.final_response`, which a native pass-through builds from the upstream's own object:
    it gets the same redaction as the bytes the client saw."""
    if call.final_response is None:
        return
    for g in guards:
        if g.action == "redact" and g.find is not None:
            call.final_response = rewrite(call.final_response, _redactor(g))


def _redact_request(call: Call, g: CompiledGuard) -> None:
    """Replace what the guard found in every form of the request an adapter may send: the
    OpenAI-shaped body, the ingress's own body, and a Responses translation still to come."""
    fn = _redactor(g)
    new = rewrite(call.body, fn)
    if new is not call.body:
        set_body(call, new)
    if call.native_body is not None:
        native = rewrite(call.native_body, fn)
        if native is not call.native_body:
            set_native_body(call, native)
    translate = call.translate
    if translate is not None:
        # Takes the call (as `Call.translate` does) rather than closing over it: no cycle.
        def translated_then_redacted(c: Call) -> None:
            translate(c)  # builds c.body from the client's original Responses input
            set_body(c, rewrite(c.body, fn))
        call.translate = translated_then_redacted


def _too_long(g: CompiledGuard, call: Call, parts: list[str]) -> bool:
    d = g.length
    assert d is not None
    if d.max_chars is not None and sum(len(t) for t in parts) > d.max_chars:
        return True
    if d.max_tokens is not None:
        tokens = call.prompt_estimate if call.prompt_estimate is not None \
            else estimate_prompt_tokens(call.body)
        return tokens > d.max_tokens
    return False

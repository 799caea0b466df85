"""What a request's `model` guards may spend, reserved with the request at admission.

A classifier call is spend of the tenant whose request it checks: its attempts are billed in
that request's record (outcome `guard`), so its worst case is part of that request's one
admission (gateway/stages/base.py `Reserves`). The budget hold covers it — a tenant whose
budget cannot cover request *and* checks is refused with the usual budget error before
anything is spent, classifier included — and its tokens are taken from the same token-rate
buckets (tenant, key, and the checked model's). Settlement replaces the hold with the actual
usage of every attempt, so what was reserved and not used is given back.

The worst case, per guard that applies to the request (`external_only` ones included: the
destination is not known yet):

- input: one call on the prompt (the request's own prompt estimate);
- output, a non-stream reply: one call on up to `max_tokens` of reply;
- output, a stream: one call per `segment_chars` of up to `max_tokens` of reply (at
  4 characters a token, plus one for the end), each also carrying a quarter segment of
  context.

Each call adds the chat template's overhead and its verdict's `max_tokens` (nothing for a
moderation), priced at the dearest deployment the classifier model (and its fallbacks) can
land on.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from gateway.guards.classifier import call_tokens
from gateway.guards.stream_checks import CHARS_PER_TOKEN

if TYPE_CHECKING:
    from gateway.guards.compiled import CompiledGuard
    from gateway.policy.models import Policy
    from gateway.runtime import Runtime


class GuardSpend:
    def __init__(self, policy: Policy, runtime: Runtime, guards: list[CompiledGuard]) -> None:
        self.prices = runtime.prices
        # Classifier model → every deployment a call to it can land on (fallbacks included).
        self.deployments: dict[str, list[str]] = {}
        for g in guards:
            if g.model is None or g.model.model in self.deployments:
                continue
            route = policy.models.get(g.model.model)
            names = (g.model.model, *(route.fallbacks if route is not None else ()))
            self.deployments[g.model.model] = [
                d.id for m in dict.fromkeys(names) if m in policy.models
                for d in policy.models[m].deployments]

    def worst_case(self, guards: list[tuple[CompiledGuard, str]], stream: bool, tenant: str,
                   prompt_tokens: int, max_completion_tokens: int) -> tuple[int, Decimal]:
        tokens = 0
        cost = Decimal(0)
        now = datetime.now(UTC)
        for g, where in guards:
            d = g.model
            assert d is not None
            if where == "input":
                calls, text = 1, prompt_tokens
            elif not stream:
                calls, text = 1, max_completion_tokens
            else:
                chars = max_completion_tokens * CHARS_PER_TOKEN
                calls = math.ceil(chars / d.segment_chars) + 1
                text = max_completion_tokens + calls * math.ceil(
                    d.segment_chars / 4 / CHARS_PER_TOKEN)
            prompt, completion = call_tokens(d, 0)
            prompt = text + calls * prompt
            completion *= calls
            tokens += prompt + completion
            cost += self.prices.worst_case(self.deployments.get(d.model, ()), prompt,
                                           completion, tenant, now)
        return tokens, cost

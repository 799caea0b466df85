"""Shadow traffic: a copy of some baseline requests sent to the candidate in the background.

The copy is made from the settled baseline request (its parsed body), after the client has
its reply, so the client never waits on it. It runs the proxy's own attempt path against the
candidate arm, with no admission (the client's limits and budget are not touched), as the
policy's platform tenant: its ledger record has that tenant, key id `shadow:<rollout id>`
and the client request id of the request it copies — never the client's tenant. A streamed
original is copied as a stream, read to its end and discarded, so TTFT and TPOT count too.
Its measurements go to the candidate arm (served: 0), so the gates judge the candidate before
it serves anyone. At most `MAX_IN_FLIGHT` copies run at once; more are skipped, not queued.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from gateway.accounting.records import RequestRecord
from gateway.call import Call, Principal
from gateway.errors import GatewayError
from gateway.ids import new_id
from gateway.rollouts.rollout import ModelRollout

log = logging.getLogger("gateway.rollouts")

MAX_IN_FLIGHT = 64
# Client APIs whose settled body is the OpenAI-shaped request (the Anthropic and Responses
# ingresses' bodies are not re-sent: their records do not say which ingress they came by).
_ENDPOINTS = ("chat", "completions", "embeddings")


class ShadowTraffic:
    def __init__(self, proxy: Any) -> None:
        self._proxy = proxy
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = 0
        self.skipped = 0

    def maybe_copy(self, ro: ModelRollout, record: RequestRecord, draw: float) -> None:
        """Copy ``record``'s request to the candidate when ``draw`` (uniform 0..100) falls
        within the shadow percent."""
        shadow = ro.cfg.shadow
        if shadow is None or draw >= shadow.percent or record.status != 200 \
                or record.endpoint not in _ENDPOINTS or record.request_body is None \
                or record.key_id.startswith("shadow:"):
            return
        if len(self._tasks) >= MAX_IN_FLIGHT:
            self.skipped += 1
            return
        body = dict(record.request_body)
        call = Call(record.endpoint, record.model, body, json.dumps(body).encode(),  # type: ignore[arg-type]
                    record.stream, new_id(), client_request_id=record.request_id,
                    client_include_usage=bool((body.get("stream_options") or {})
                                              .get("include_usage")))
        ro.shadow_ids.add(call.request_id)
        principal = Principal(tenant=shadow.tenant, key_id=f"shadow:{ro.id}")
        task = asyncio.ensure_future(self._run(ro, call, principal))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self.sent += 1

    async def _run(self, ro: ModelRollout, call: Call, principal: Principal) -> None:
        proxy = self._proxy
        rt = proxy.deps.runtime()
        t0 = time.monotonic()
        record = proxy._record(call, principal)
        span = proxy.deps.tracing.request(call)
        try:
            proxy.deps.settler.admitted(record)
            try:
                response = await proxy._serve(rt, call, principal, record, None, None, t0, span)
            except GatewayError as e:
                await proxy._refused(rt, call, e, record, None, None, t0, span)
                return
            if hasattr(response, "o"):  # a StreamResponse: read it to its end, discard it
                await response({"type": "http"}, _never_disconnects, _discard)
        except Exception:
            log.warning("shadow request %s for rollout %s failed", call.request_id, ro.id,
                        exc_info=True)
        finally:
            if not record.closed:
                proxy.closer.close_now(None, record, span)
            if record.rollout_arm is None:
                # Never routed, so never measured: `observe` will not forget it for us.
                ro.shadow_ids.discard(call.request_id)

    async def drain(self, timeout: float = 5.0) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)


async def _never_disconnects() -> dict[str, Any]:
    await asyncio.Event().wait()
    return {"type": "http.disconnect"}  # pragma: no cover - never reached


async def _discard(message: dict[str, Any]) -> None:
    return None

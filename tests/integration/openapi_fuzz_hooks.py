"""schemathesis hooks for `test_openapi_fuzz.py`, loaded by the `schemathesis run` it starts
(`SCHEMATHESIS_HOOKS=tests.integration.openapi_fuzz_hooks`).

Generated bodies name random models, which the gateway answers with a 404 before admission,
routing or translation run, and rarely ask for a stream. The document cannot list the models
(they are the policy's), so this hook points most bodies at the policy's models
(`FUZZ_MODELS`), keeping a share random so the 404 path is fuzzed too; turns a share into
streams (they settle differently); and spreads the calls over the tenants' keys (`FUZZ_KEYS`:
schemathesis sends the first security scheme's key only). Every choice is a hash of the case,
not a random draw, so a failing case replays the same.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Mapping
from typing import Any

import schemathesis

MODELS = [m for m in os.environ.get("FUZZ_MODELS", "").split(",") if m]
KEYS = [k for k in os.environ.get("FUZZ_KEYS", "").split(",") if k]


@schemathesis.hook
def before_call(context: schemathesis.HookContext, case: schemathesis.Case,
                kwargs: dict[str, Any]) -> None:
    body = case.body
    seen = json.dumps([case.path, body], sort_keys=True, default=str).encode()
    digest = zlib.crc32(seen)
    headers: Mapping[str, Any] = case.headers or {}
    auth = str(headers.get("Authorization", ""))
    if KEYS and auth.removeprefix("Bearer ") in KEYS:
        case.headers["Authorization"] = f"Bearer {KEYS[(digest >> 8) % len(KEYS)]}"
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return
    pick = digest % (len(MODELS) + 1)  # one share in len+1 keeps its random name
    if pick < len(MODELS):
        body["model"] = MODELS[pick]
    if (digest >> 16) % 3 == 0 and body.get("stream") in (None, False):
        body["stream"] = True

"""The response cache's key: who asks (the tenant, unless sharing is opted into), which public
model, and the request body normalised so that requests with the same answer get the same key.

Normalising: object keys in sorted order (JSON object order never changes an answer), the
top-level fields that do not change the answer dropped (`user`, `stream`, `stream_options`…;
`CacheRule.ignore_fields`) and so are top-level nulls (a default asked for), and a top-level
number that is whole written as an integer (`temperature: 0.0` → `0`).
Strings are kept byte for byte: whitespace in a prompt can change an answer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

# What a key hashes, besides the body: bump when the entry format or normalisation changes, so
# old entries (Redis outlives a deploy) are never read as new ones.
KEY_VERSION = "v1"
# The tenant part of a key shared across tenants (no tenant name can be empty).
SHARED = ""


def _canon(value: Any) -> Any:
    # Top-level sampling numbers only (`temperature: 0.0`): walking every message of a long
    # conversation would cost more than the rare nested `1.0` saves.
    if isinstance(value, float) and value.is_integer() and abs(value) < 2 ** 53:
        return int(value)
    return value


def normalise(body: Mapping[str, Any], ignored: Iterable[str]) -> str:
    """The body's canonical JSON text (sorted keys, ignored fields gone, whole numbers as ints)."""
    drop = set(ignored)
    drop.add("model")  # the key carries the public model itself
    # A top-level `null` asks for the default, as leaving the field out does.
    kept = {k: _canon(v) for k, v in body.items() if k not in drop and v is not None}
    return json.dumps(kept, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def cache_key(tenant: str | None, model: str, endpoint: str, body: Mapping[str, Any],
              ignored: Iterable[str]) -> str:
    """The hex key of one request (`tenant=None`: shared across tenants)."""
    h = hashlib.sha256()
    # Length-prefixed parts: no tenant/model pair can collide with another by concatenation.
    for part in (KEY_VERSION, SHARED if tenant is None else tenant, model, endpoint,
                 normalise(body, ignored)):
        b = part.encode()
        h.update(len(b).to_bytes(8, "big"))
        h.update(b)
    return h.hexdigest()


def deterministic(body: Mapping[str, Any]) -> bool:
    """`temperature: 0` or a `seed`: the answer is meant to be reproducible."""
    t = body.get("temperature")
    seed = body.get("seed")
    return (isinstance(t, int | float) and not isinstance(t, bool) and t == 0) or (
        isinstance(seed, int) and not isinstance(seed, bool))

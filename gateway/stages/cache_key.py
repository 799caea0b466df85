"""The response cache's key: who asks (the tenant, unless sharing is opted into), which public
model, and the request body normalised so that requests with the same answer get the same key.

Normalising: object keys in sorted order (JSON object order never changes an answer), the
top-level fields that do not change the answer dropped (`user`, `stream`, `stream_options`…;
`CacheRule.ignore_fields`) and so are top-level nulls (a default asked for), and a top-level
number that is whole written as an integer (`temperature: 0.0` → `0`).
Strings are kept byte for byte: whitespace in a prompt can change an answer.

The key is taken from the client's own request: the OpenAI body for chat, the Anthropic Messages
body for `/v1/messages`, the Responses body for `/v1/responses` — so an entry is only ever
replayed to the API it was asked through (its reply may be that API's native shape). A
Responses request continuing a conversation (`previous_response_id`) is keyed on the
conversation itself — the earlier turns' items, without their ids — not on the id: the answer
depends on what was said, and a replayed hit stored under a fresh id must still lead to hits.

The canonical text is written by msgspec with sorted keys (the stdlib's `json.dumps(...,
sort_keys=True)` cost ~10× more on a long conversation, for the same text).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from gateway.call import Call

# What a key hashes, besides the body: bump when the entry format or normalisation changes, so
# old entries (Redis outlives a deploy) are never read as new ones.
KEY_VERSION = "v2"
# Sorted keys at every depth: JSON object order never changes an answer.
_SORTED = msgspec.json.Encoder(order="sorted")


def _kept(body: Mapping[str, Any], ignored: Collection[str]) -> dict[str, Any]:
    # A top-level `null` asks for the default, as leaving the field out does; `model` is a
    # part of the key on its own. Whole floats become ints at the top level only (sampling
    # numbers, `temperature: 0.0`): walking every message of a long conversation would cost
    # more than the rare nested `1.0` saves. One loop, not a comprehension then a pass over
    # its result (that cost ~1.7× as much): this runs on every cached request.
    kept = {}
    for k, v in body.items():
        if v is None or k == "model" or k in ignored:
            continue
        if type(v) is float and v.is_integer() and abs(v) < 2 ** 53:
            v = int(v)
        kept[k] = v
    return kept


def normalise(body: Mapping[str, Any], ignored: Collection[str]) -> str:
    """The body's canonical JSON (sorted keys, ignored fields gone, whole numbers as ints)."""
    return _SORTED.encode(_kept(body, ignored)).decode()


def cache_key(tenant: str | None, model: str, endpoint: str, body: Mapping[str, Any],
              ignored: Collection[str]) -> str:
    """The hex key of one request (`tenant=None`: shared across tenants). ``endpoint``: what
    was asked, `chat` or the ingress (`anthropic`, `responses`) whose body ``body`` is."""
    # One JSON array, encoded in one call: its strings are quoted and escaped, so no
    # tenant/model split can collide with another, and a shared key (`null`) with no tenant's.
    text = _SORTED.encode([KEY_VERSION, tenant, model, endpoint, _kept(body, ignored)])
    return hashlib.sha256(text).hexdigest()


def keyed_request(call: Call) -> tuple[str, Mapping[str, Any]]:
    """What a call's key is taken from: (`chat` or the ingress, the client's own body)."""
    if call.ingress == "openai":
        return call.endpoint, call.body
    body = call.native_body or {}
    conv = call.conversation
    if call.ingress != "responses" or (conv is None and "previous_response_id" not in body):
        return call.ingress, body
    keyed = {k: v for k, v in body.items() if k != "previous_response_id"}
    if conv is not None:
        # Item ids and statuses name an earlier response, not what was said in it.
        keyed[" history"] = [{k: v for k, v in item.items() if k not in ("id", "status")}
                             if isinstance(item, dict) else item for item in conv.items]
    return call.ingress, keyed


def deterministic(body: Mapping[str, Any]) -> bool:
    """`temperature: 0` or a `seed`: the answer is meant to be reproducible."""
    t = body.get("temperature")
    seed = body.get("seed")
    return (isinstance(t, int | float) and not isinstance(t, bool) and t == 0) or (
        isinstance(seed, int) and not isinstance(seed, bool))

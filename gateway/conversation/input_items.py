"""`GET /v1/responses/{id}/input_items`: the stored input as listed items, and one page of it.

Input items are stored exactly as the client sent them (an easy message `{"role", "content"}`
has no `type` and no `id`), because they are also replayed upstream to rebuild a conversation,
and an id the gateway made up means nothing to a provider that never saw it. The listing gives
each item the shape of OpenAI's `ResponseItem` and an id derived from the response id and the
item's position, so the same item has the same id in every call and `after`/`before` cursors
stay valid between pages.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from gateway.errors import InvalidRequest

MAX_LIMIT = 100
# Id prefixes OpenAI uses for these item types; anything else gets a neutral one.
_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fc"}


def item_id(response_id: str, index: int, kind: str) -> str:
    digest = hashlib.blake2b(f"{response_id}/{index}".encode(), digest_size=16).hexdigest()
    return f"{_PREFIX.get(kind, 'item')}_{digest}"


def _content(role: str, content: Any) -> Any:
    if not isinstance(content, str):
        return content
    # An assistant turn replayed as input is an output message in OpenAI's listing.
    if role == "assistant":
        return [{"type": "output_text", "text": content, "annotations": []}]
    return [{"type": "input_text", "text": content}]


def listed_item(response_id: str, index: int, item: Mapping[str, Any]) -> dict[str, Any]:
    """One stored input item as `input_items` lists it: typed, with an id and a status."""
    kind = item.get("type") or ("message" if "role" in item else None)
    out: dict[str, Any] = {"id": item.get("id") or item_id(response_id, index, str(kind))}
    if kind is not None:
        out["type"] = kind
    out.update((k, v) for k, v in item.items() if k not in ("id", "type"))
    if kind == "message":
        out["content"] = _content(str(out.get("role")), out.get("content"))
    if kind in _PREFIX:
        out.setdefault("status", "completed")
    return out


def listed_items(response_id: str, items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [listed_item(response_id, i, item) for i, item in enumerate(items)]


def _position(items: Sequence[Mapping[str, Any]], cursor: str, param: str,
              response_id: str) -> int:
    for i, item in enumerate(items):
        if item.get("id") == cursor:
            return i
    raise InvalidRequest(
        f'{param}: no input item "{cursor}" in response "{response_id}". Pass an item id '
        "from a page of this response's input items (its `first_id` or `last_id`).",
        param=param)


def page(response_id: str, items: Sequence[Mapping[str, Any]], *, after: str | None,
         before: str | None, limit: int, order: Literal["asc", "desc"]
         ) -> tuple[list[dict[str, Any]], bool]:
    """One page of listed items and whether more lie beyond it, as OpenAI's cursor lists.

    `order` is applied first (`desc`: the last input item first); `after` keeps the items
    that follow the cursor in that order, `before` those that precede it. With `before`
    alone the page is the `limit` items just before the cursor (the previous page) and
    `has_more` says whether earlier ones remain; otherwise it is the first `limit` items.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be between 1 and {MAX_LIMIT} (got {limit}).",
                             param="limit")
    if order not in ("asc", "desc"):
        raise InvalidRequest(f'order must be "asc" or "desc" (got {order!r}).', param="order")
    listed = listed_items(response_id, items)
    seq = listed if order == "asc" else listed[::-1]
    start, end = 0, len(seq)
    if after is not None:
        start = _position(seq, after, "after", response_id) + 1
    if before is not None:
        end = _position(seq, before, "before", response_id)
    window = seq[start:end]
    chosen = window[-limit:] if before is not None and after is None else window[:limit]
    return chosen, len(window) > limit

"""The input-items listing: stored items get OpenAI's item shape and stable ids, and pages
follow OpenAI's cursor semantics (order first, then after/before, then limit)."""

from __future__ import annotations

from typing import Any, Literal

import pytest

from gateway.conversation.input_items import item_id, listed_item, listed_items, page
from gateway.errors import InvalidRequest

RID = "resp_" + "a" * 32


def test_easy_message_is_listed_as_a_typed_message_with_parts() -> None:
    got = listed_item(RID, 0, {"role": "user", "content": "hi"})
    assert got == {"id": item_id(RID, 0, "message"), "type": "message", "role": "user",
                   "content": [{"type": "input_text", "text": "hi"}], "status": "completed"}
    assert got["id"].startswith("msg_") and len(got["id"]) == 4 + 32


def test_assistant_text_replayed_as_input_is_listed_as_output_text() -> None:
    got = listed_item(RID, 1, {"type": "message", "role": "assistant", "content": "ok"})
    assert got["content"] == [{"type": "output_text", "text": "ok", "annotations": []}]


@pytest.mark.parametrize(("item", "prefix"), [
    ({"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}, "fc_"),
    ({"type": "function_call_output", "call_id": "c1", "output": "42"}, "fc_"),
    ({"type": "reasoning", "summary": []}, "item_"),
])
def test_items_without_an_id_get_one_by_type(item: dict[str, Any], prefix: str) -> None:
    got = listed_item(RID, 3, item)
    assert got["id"].startswith(prefix)
    assert {k: v for k, v in got.items() if k not in ("id", "status")} == item


def test_an_id_the_client_sent_is_kept_and_parts_are_untouched() -> None:
    parts = [{"type": "input_text", "text": "a"}, {"type": "input_image", "image_url": "u"}]
    item = {"id": "fc_client", "type": "message", "role": "user", "content": parts,
            "status": "incomplete"}
    assert listed_item(RID, 0, item) == item


def test_ids_are_the_same_on_every_listing_and_differ_per_position_and_response() -> None:
    items = [{"role": "user", "content": "x"}, {"role": "user", "content": "x"}]
    a, b = listed_items(RID, items), listed_items(RID, items)
    assert [i["id"] for i in a] == [i["id"] for i in b]
    assert a[0]["id"] != a[1]["id"]
    assert listed_items("resp_other", items)[0]["id"] != a[0]["id"]


def test_listing_does_not_change_the_stored_items() -> None:
    items = [{"role": "user", "content": "x"}]
    listed_items(RID, items)
    assert items == [{"role": "user", "content": "x"}]


ITEMS = [{"id": f"m{i}", "type": "message", "role": "user", "content": []} for i in range(5)]


@pytest.mark.parametrize(("after", "before", "limit", "order", "ids", "more"), [
    (None, None, 20, "desc", ["m4", "m3", "m2", "m1", "m0"], False),
    (None, None, 20, "asc", ["m0", "m1", "m2", "m3", "m4"], False),
    (None, None, 2, "desc", ["m4", "m3"], True),
    ("m3", None, 2, "desc", ["m2", "m1"], True),
    ("m1", None, 2, "desc", ["m0"], False),
    ("m1", None, 2, "asc", ["m2", "m3"], True),
    ("m4", None, 2, "asc", [], False),
    # before alone: the page just before the cursor (the previous page)
    (None, "m1", 2, "desc", ["m3", "m2"], True),
    (None, "m3", 2, "desc", ["m4"], False),
    (None, "m3", 2, "asc", ["m1", "m2"], True),
    # both: the window between the cursors, from its start
    ("m4", "m0", 2, "desc", ["m3", "m2"], True),
    ("m1", "m3", 5, "asc", ["m2"], False),
    ("m3", "m1", 5, "asc", [], False),
])
def test_page(after: str | None, before: str | None, limit: int,
              order: Literal["asc", "desc"], ids: list[str], more: bool) -> None:
    got, has_more = page(RID, ITEMS, after=after, before=before, limit=limit, order=order)
    assert [i["id"] for i in got] == ids
    assert has_more is more


def test_paging_with_after_walks_every_item_once() -> None:
    seen: list[str] = []
    after: str | None = None
    while True:
        got, more = page(RID, ITEMS, after=after, before=None, limit=2, order="desc")
        seen += [i["id"] for i in got]
        if not more:
            break
        after = got[-1]["id"]
    assert seen == ["m4", "m3", "m2", "m1", "m0"]


def test_paging_works_with_generated_ids() -> None:
    items = [{"role": "user", "content": str(i)} for i in range(3)]
    first, more = page(RID, items, after=None, before=None, limit=1, order="asc")
    assert more
    second, _ = page(RID, items, after=first[0]["id"], before=None, limit=1, order="asc")
    assert second[0]["content"] == [{"type": "input_text", "text": "1"}]


@pytest.mark.parametrize(("kw", "param"), [
    ({"after": "nope"}, "after"),
    ({"before": "nope"}, "before"),
    ({"limit": 0}, "limit"),
    ({"limit": 101}, "limit"),
    ({"order": "up"}, "order"),
])
def test_bad_paging_arguments_are_a_400_naming_the_parameter(kw: dict[str, Any],
                                                              param: str) -> None:
    args: dict[str, Any] = {"after": None, "before": None, "limit": 20, "order": "desc", **kw}
    with pytest.raises(InvalidRequest) as e:
        page(RID, ITEMS, **args)
    assert e.value.status == 400 and e.value.param == param
    assert param in e.value.message

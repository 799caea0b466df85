"""The map of responses put and not yet written: batches, retries, the bound, chain walks."""

from __future__ import annotations

from gateway.conversation import StoredResponse
from gateway.conversation.pending import PendingResponses

NOW = 1_800_000_000


def resp(id: str, prev: str | None = None, tenant: str = "acme",
         expires_at: int | None = None) -> StoredResponse:
    return StoredResponse(id=id, tenant=tenant, model="m", created_at=NOW, status="completed",
                          previous_response_id=prev, input_items=[], output=[], response={},
                          expires_at=expires_at)


def test_a_batch_takes_everything_queued_and_stays_readable_until_written() -> None:
    p = PendingResponses()
    p.add(resp("a"))
    p.add(resp("b"))
    assert [r.id for r in p.take()] == ["a", "b"]
    p.add(resp("c"))
    assert len(p) == 3 and p.find("acme", "a", NOW) is not None
    p.written()
    assert p.find("acme", "a", NOW) is None and [r.id for r in p.take()] == ["c"]


def test_a_failed_batch_goes_back_in_front_of_newer_puts() -> None:
    p = PendingResponses()
    p.add(resp("a"))
    p.take()
    p.add(resp("b"))
    p.failed()
    assert [r.id for r in p.take()] == ["a", "b"]


def test_past_the_limit_the_oldest_queued_are_dropped_and_counted() -> None:
    p = PendingResponses(limit=2)
    for name in "abc":
        p.add(resp(name))
    assert [r.id for r in p.take()] == ["b", "c"] and p.dropped == 1
    assert p.lost() == 2 and p.dropped == 3 and len(p) == 0


def test_put_again_keeps_the_newest_copy() -> None:
    p = PendingResponses()
    p.add(resp("a"))
    p.add(resp("b"))
    p.add(resp("a", prev="b"))
    assert [(r.id, r.previous_response_id) for r in p.take()] == [("b", None), ("a", "b")]


def test_find_is_per_tenant_and_respects_expiry() -> None:
    p = PendingResponses()
    p.add(resp("a", expires_at=NOW + 1))
    assert p.find("beta", "a", NOW) is None
    assert p.find("acme", "a", NOW) is not None
    assert p.find("acme", "a", NOW + 1) is None


def test_walk_returns_the_held_part_and_where_the_database_goes_on() -> None:
    p = PendingResponses()
    p.add(resp("c", prev="b"))
    p.add(resp("d", prev="c"))
    held, rest = p.walk("acme", "d", NOW, 10)
    assert [r.id for r in held] == ["d", "c"] and rest == "b"
    assert p.walk("acme", "x", NOW, 10) == ([], "x")
    held, rest = p.walk("acme", "d", NOW, 1)
    assert [r.id for r in held] == ["d"] and rest is None  # max_turns reached here
    p.add(resp("a"))
    assert [r.id for r in p.walk("acme", "a", NOW, 10)[0]] == ["a"]
    assert p.walk("acme", "a", NOW, 10)[1] is None


def test_a_cycle_is_bounded_by_max_turns() -> None:
    p = PendingResponses()
    p.add(resp("a", prev="b"))
    p.add(resp("b", prev="a"))
    held, rest = p.walk("acme", "a", NOW, 5)
    assert len(held) == 5 and rest is None


def test_discard_says_whether_it_was_queued_or_is_being_written() -> None:
    p = PendingResponses()
    p.add(resp("a"))
    p.take()
    p.add(resp("b"))
    assert p.discard("acme", "b") == (True, False)
    assert p.discard("acme", "a") == (False, True)
    assert p.discard("acme", "z") == (False, False)

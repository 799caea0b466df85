"""`Children`: a family's child is looked up once and kept; past the bound, `labels()` still
answers (uncached), so a churn of label values costs memory only up to the bound."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter

from gateway.observability import children
from gateway.observability.children import Children


def _family() -> Counter:
    return Counter("things_total", "Things", ["a", "b"], registry=CollectorRegistry())


def test_a_child_is_kept_and_counts_into_its_series() -> None:
    family = _family()
    kids = Children(family)
    kids("x", "y").inc()
    kids("x", "y").inc(2)
    assert kids("x", "y") is kids("x", "y")
    assert family.labels("x", "y")._value.get() == 3
    assert family.labels("x", "z")._value.get() == 0


def test_past_the_bound_children_are_not_kept_but_still_count(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(children, "LIMIT", 2)
    family = _family()
    kids = Children(family)
    for v in ("1", "2", "3", "3"):
        kids(v, "b").inc()
    assert len(kids._kept) == 2
    assert family.labels("3", "b")._value.get() == 2


def test_inc_counts_as_labels_inc_does() -> None:
    family = _family()
    kids = Children(family)
    for _ in range(3):
        kids.inc("x", "y")
    kids.inc("x", "y", amount=2.5)
    assert family.labels("x", "y")._value.get() == 5.5
    with pytest.raises(ValueError):
        kids.inc("x", "y", amount=-1)


def test_a_capped_label_is_kept_by_the_value_given_and_capped_once() -> None:
    from gateway.observability.labels import OTHER, LabelCap

    family = _family()
    cap = LabelCap(1)
    calls: list[str] = []

    def counted(value: str) -> str:
        calls.append(value)
        return cap(value)

    kids = Children(family, counted, at=1)
    for tenant in ("t1", "t1", "t2", "t2", "t1"):
        kids.inc("x", tenant)
    assert family.labels("x", "t1")._value.get() == 3
    assert family.labels("x", OTHER)._value.get() == 2
    # t1 is kept (the cap's choice for it never changes); t2 read `_other`, so it is asked
    # again: a reload may raise the limit, and then t2 gets its own series.
    assert calls == ["t1", "t2", "t2"]
    cap.limit = 2
    kids.inc("x", "t2")
    assert family.labels("x", "t2")._value.get() == 1

"""A metric family's children, kept by their label values.

`prometheus_client`'s `labels()` takes the family's lock and builds its key on every call: per
request, for every series a request touches, that is a few microseconds of the event loop.
The child for a set of values never changes, so it is looked up once and kept.

`inc` counts into a child's value directly: `Counter.inc` checks, on every call, that the
child is observable (a child from `labels()` always is) and takes no other path for a
non-negative amount without an exemplar (prometheus_client 0.2x, `metrics.py`).

A family with a capped label (a tenant, `labels.LabelCap`) is kept by the value as given, so a
known tenant costs no call to the cap: the cap runs when the child is first looked up. Only a
value the cap kept is kept here — the cap's choice for it never changes — while one that read
`_other` asks the cap again next time (a reload may raise the cap's limit).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.observability.labels import OTHER

# Past this many kept children (label values that churn: many models, tenants past their
# cap), `labels()` answers as it would without the map, so memory stays bounded.
LIMIT = 50_000


class Children:
    __slots__ = ("_at", "_cap", "_family", "_kept", "_values")

    def __init__(self, family: Any, cap: Callable[[str], str] | None = None,
                 at: int = 0) -> None:
        """`cap`: applied to the label value at position `at` (the tenant)."""
        self._family = family
        self._kept: dict[tuple[str, ...], Any] = {}
        # Counters: the kept children's values (what `Counter.inc` adds to, under its lock).
        self._values: dict[tuple[str, ...], Any] = {}
        self._cap = cap
        self._at = at

    def __call__(self, *values: str) -> Any:
        child = self._kept.get(values)
        if child is None:
            labels = values
            if self._cap is not None:
                at = self._at
                capped = self._cap(values[at])
                labels = (*values[:at], capped, *values[at + 1:])
                if capped is OTHER:  # not kept: see the module's docstring
                    return self._family.labels(*labels)
            child = self._family.labels(*labels)
            if len(self._kept) < LIMIT:
                self._kept[values] = child
        return child

    def inc(self, *values: str, amount: float = 1) -> None:
        """`labels(*values).inc(amount)` of a counter family, as one call (see the docstring)."""
        value = self._values.get(values)
        if value is None or amount < 0:
            child = self(*values)
            if values in self._kept:
                self._values[values] = child._value
            child.inc(amount)  # a negative amount raises there, as it always did
            return
        value.inc(amount)

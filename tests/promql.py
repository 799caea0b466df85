"""PromQL in dashboards and scalers: the metric names an expression reads, and the names a
gateway's `/metrics` exposes — so a test can say a query reads only what the gateway exports."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import promql_parser
from prometheus_client.parser import text_string_to_metric_families

# Grafana's built-in range variables are not PromQL; any duration parses the same way.
_RANGE_VARS = re.compile(r"\$(__rate_interval|__interval|__range)|\$\{(__rate_interval|"
                         r"__interval|__range)\}")


def metric_names(expr: str) -> set[str]:
    """Every metric name a PromQL expression selects (raises on a syntax error)."""
    tree = promql_parser.parse(_RANGE_VARS.sub("5m", expr))
    names: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {expr!r}"
            names.add(node.name)
        return True

    promql_parser.walk(tree, visit)
    return names


_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count",
                                                             "_created"),
             "summary": ("", "_sum", "_count"), "gaugehistogram": ("_bucket", "_gsum",
                                                                    "_gcount")}


def exported_names(exposition: str) -> set[str]:
    """Every sample name an exposition's families can have (`_bucket`, `_sum`, `_count`,
    `_total`), also of a labelled family with no series yet (its HELP and TYPE are there)."""
    out: set[str] = set()
    for fam in text_string_to_metric_families(exposition):
        out.update(s.name for s in fam.samples)
        out.update(fam.name + suffix for suffix in _SUFFIXES.get(fam.type, ("",)))
    return out


def dashboard_exprs(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, expr) of every target of every panel, rows' panels included, and of
    every templating query."""
    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(dashboard.get("panels", [])):
        for t in p.get("targets", []):
            if t.get("expr"):
                yield p.get("title", "?"), t["expr"]
    for v in dashboard.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"label_values\((.+),\s*\w+\)", q or "")
        if m:
            yield f"variable {v.get('name')}", m.group(1)

"""Figures for the console's pages as plotly.js figure specs (`{"data": [...], "layout": {...}}`).

The browser draws them with the `plotly.min.js` bundle that the `plotly` package ships, served
by the gateway itself (`/ui/static/plotly.min.js`); this module only says what to draw, in
plotly's own trace vocabulary. Money is drawn as floats (a picture), never computed as them:
the tables beside each chart carry the exact decimal strings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from decimal import Decimal
from typing import Any

Figure = dict[str, Any]
# Charts follow the page width (390 px phones included); the height stays readable.
_LAYOUT: dict[str, Any] = {
    "autosize": True, "height": 360, "margin": {"l": 56, "r": 16, "t": 40, "b": 48},
    "legend": {"orientation": "h", "y": -0.2}, "font": {"size": 12},
}


def stacked_bars(title: str, days: Sequence[date], series: Mapping[str, Mapping[date, float]],
                 y_title: str) -> Figure:
    """One bar per day, stacked by series (tenant, model or provider)."""
    x = [d.isoformat() for d in days]
    data = [{"type": "bar", "name": name, "x": x, "y": [values.get(d, 0.0) for d in days]}
            for name, values in series.items()]
    layout = {**_LAYOUT, "title": {"text": title}, "barmode": "stack",
              "xaxis": {"type": "date", "tickformat": "%b %d"},
              "yaxis": {"title": {"text": y_title}, "rangemode": "tozero"}}
    return {"data": data, "layout": layout}


def burn_down(title: str, actual: Sequence[tuple[date, Decimal]],
              forecast: Sequence[tuple[date, Decimal]], limit: Decimal | None,
              thresholds: Sequence[float]) -> Figure:
    """Cumulative spend this month, the linear forecast to month end (dashed), the monthly
    budget and each alert threshold as horizontal lines."""
    data: list[dict[str, Any]] = [
        {"type": "scatter", "mode": "lines+markers", "name": "spent (cumulative)",
         "x": [d.isoformat() for d, _ in actual], "y": [float(v) for _, v in actual]},
        {"type": "scatter", "mode": "lines", "name": "forecast",
         "line": {"dash": "dash"},
         "x": [d.isoformat() for d, _ in forecast], "y": [float(v) for _, v in forecast]},
    ]
    shapes: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    if limit is not None:
        lines = [(1.0, "budget", "#c62828")]
        lines += [(a, f"alert {a:.0%}", "#ef6c00") for a in thresholds if a < 1.0]
        for fraction, label, color in lines:
            y = float(limit) * fraction
            shapes.append({"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": y, "y1": y,
                           "line": {"color": color, "dash": "dot", "width": 1.5}})
            annotations.append({"xref": "paper", "x": 0, "y": y, "xanchor": "left",
                                "yanchor": "bottom", "showarrow": False, "text": label,
                                "font": {"color": color}})
    layout = {**_LAYOUT, "title": {"text": title}, "shapes": shapes, "annotations": annotations,
              "xaxis": {"type": "date", "tickformat": "%b %d"},
              "yaxis": {"title": {"text": "USD"}, "rangemode": "tozero"}}
    return {"data": data, "layout": layout}

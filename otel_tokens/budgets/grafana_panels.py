"""Grafana panel primitives for the generated dashboards: plain dicts in Grafana's JSON model.

Kept apart from `render_grafana` so the dashboards there read as a list of *what* is shown,
while the JSON details every panel repeats (datasource ref, legend, reduce options) live once here.
A `Layout` hands out panel ids and grid positions in build order, so the same dashboard
definition always yields the same ids and positions: the committed JSON never drifts by itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: The provisioned Prometheus datasource; a fixed uid lets dashboards reference it without lookup.
DATASOURCE_UID = "otel-tokens-prometheus"
DATASOURCE_REF: dict[str, str] = {"type": "prometheus", "uid": DATASOURCE_UID}

GRID_WIDTH = 24

JsonDict = dict[str, Any]


@dataclass(frozen=True)
class Query:
    """One PromQL target of a panel; `instant` for panels that show one value per series."""

    expr: str
    legend: str = ""
    instant: bool = False


@dataclass
class Layout:
    """Places panels left to right, wrapping at the grid width, numbering them 1, 2, 3…"""

    panels: list[JsonDict] = field(default_factory=list)
    _x: int = 0
    _y: int = 0
    _row_height: int = 0

    def add(self, panel: JsonDict, width: int, height: int) -> None:
        if self._x + width > GRID_WIDTH:
            self._newline()
        panel["id"] = len(self.panels) + 1
        panel["gridPos"] = {"h": height, "w": width, "x": self._x, "y": self._y}
        self.panels.append(panel)
        self._x += width
        self._row_height = max(self._row_height, height)

    def row(self, title: str) -> None:
        """A row header; Grafana wants rows full width at x=0, with their panels following them."""
        if self._x:
            self._newline()
        self.add({"collapsed": False, "panels": [], "title": title, "type": "row"}, GRID_WIDTH, 1)
        self._newline()

    def _newline(self) -> None:
        self._y += self._row_height
        self._x = 0
        self._row_height = 0


def _targets(queries: list[Query]) -> list[JsonDict]:
    # refIds A, B, C… in query order: stable, and what Grafana itself assigns.
    return [
        {
            "datasource": DATASOURCE_REF,
            "expr": q.expr,
            "instant": q.instant,
            "legendFormat": q.legend or "__auto",
            "range": not q.instant,
            "refId": chr(ord("A") + i),
        }
        for i, q in enumerate(queries)
    ]


def _base(kind: str, title: str, description: str, queries: list[Query], defaults: JsonDict) -> JsonDict:
    return {
        "datasource": DATASOURCE_REF,
        "description": description,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "targets": _targets(queries),
        "title": title,
        "type": kind,
    }


def _reduce_last() -> JsonDict:
    return {"calcs": ["lastNotNull"], "fields": "", "values": False}


def thresholds(*steps: tuple[float | None, str]) -> JsonDict:
    """Absolute threshold steps; the first step's value must be None (Grafana's "base")."""
    return {"mode": "absolute", "steps": [{"color": color, "value": value} for value, color in steps]}


def timeseries(
    title: str, description: str, queries: list[Query], unit: str = "short", *, stacked: bool = False
) -> JsonDict:
    custom: JsonDict = {"fillOpacity": 10, "lineWidth": 1, "showPoints": "never"}
    if stacked:
        custom["stacking"] = {"group": "A", "mode": "normal"}
    panel = _base("timeseries", title, description, queries, {"custom": custom, "unit": unit})
    panel["options"] = {
        "legend": {"calcs": [], "displayMode": "list", "placement": "bottom", "showLegend": True},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return panel


def stat(title: str, description: str, query: Query, unit: str = "short") -> JsonDict:
    panel = _base("stat", title, description, [query], {"unit": unit})
    panel["options"] = {
        "colorMode": "value",
        "graphMode": "area",
        "justifyMode": "auto",
        "orientation": "auto",
        "reduceOptions": _reduce_last(),
        "textMode": "auto",
    }
    return panel


def gauge(
    title: str, description: str, query: Query, *, unit: str, maximum: float, steps: JsonDict
) -> JsonDict:
    defaults = {"max": maximum, "min": 0, "thresholds": steps, "unit": unit}
    panel = _base("gauge", title, description, [query], defaults)
    panel["options"] = {
        "orientation": "auto",
        "reduceOptions": _reduce_last(),
        "showThresholdLabels": False,
        "showThresholdMarkers": True,
    }
    return panel


def bar_ranking(title: str, description: str, query: Query, unit: str) -> JsonDict:
    """A horizontal bar gauge of instant values: the natural display of a `topk()`."""
    panel = _base("bargauge", title, description, [query], {"min": 0, "unit": unit})
    panel["options"] = {
        "displayMode": "gradient",
        "orientation": "horizontal",
        "reduceOptions": _reduce_last(),
        "showUnfilled": True,
    }
    return panel


def query_variable(name: str, label: str, query: str, *, multi: bool) -> JsonDict:
    """A Prometheus `label_values` template variable, refreshed when the time range changes."""
    variable: JsonDict = {
        "datasource": DATASOURCE_REF,
        "includeAll": multi,
        "label": label,
        "multi": multi,
        "name": name,
        "query": {"qryType": 1, "query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,
        "sort": 1,
        "type": "query",
    }
    if multi:
        # "All" as a regex, so `=~"$task"` matches every value, including ones not yet listed.
        variable["allValue"] = ".*"
    return variable

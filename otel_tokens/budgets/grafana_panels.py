"""A small typed builder for Grafana dashboards: panels, queries, variables, layout, in Grafana's
JSON model (the shape `@grafana/schema`'s `Dashboard` type checks in tests/grafana_check).

Why our own and not grafana-foundation-sdk (evaluated: its Python builders do cover dashboards,
timeseries/stat/gauge/bargauge panels and Prometheus queries, and its output passes the same
`tsc` schema check): its auto-layout placed a 12-wide panel at x=18 (past the 24-column grid), it
leaves panel ids unset and query `refId`s empty, it is marked alpha, and its releases use version
epochs per Grafana version, so an unpinned `pip install` picks the Grafana 10.1 build. The
dashboards here need four panel kinds and a grid; this module is that, typed, and nothing more.

Kept apart from `render_grafana` so the dashboards there read as a list of *what* is shown, while
the JSON details every panel repeats (datasource ref, legend, reduce options) live once here. A
`Layout` hands out panel ids and grid positions in build order, so the same dashboard definition
always yields the same ids and positions: the committed JSON never drifts by itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "DATASOURCE_REF",
    "DATASOURCE_UID",
    "GRID_WIDTH",
    "Dashboard",
    "JsonDict",
    "Layout",
    "Panel",
    "Query",
    "QueryVariable",
    "Thresholds",
    "bar_ranking",
    "gauge",
    "stat",
    "timeseries",
]

#: The provisioned Prometheus datasource; a fixed uid lets dashboards reference it without lookup.
DATASOURCE_UID = "otel-tokens-prometheus"
DATASOURCE_REF: dict[str, str] = {"type": "prometheus", "uid": DATASOURCE_UID}

GRID_WIDTH = 24

JsonDict = dict[str, Any]
PanelKind = Literal["timeseries", "stat", "gauge", "bargauge"]


@dataclass(frozen=True)
class Query:
    """One PromQL target of a panel; `instant` for panels that show one value per series."""

    expr: str
    legend: str = ""
    instant: bool = False

    def to_dict(self, index: int) -> JsonDict:
        # refIds A, B, C… in query order: stable, and what Grafana itself assigns.
        return {
            "datasource": DATASOURCE_REF,
            "expr": self.expr,
            "instant": self.instant,
            "legendFormat": self.legend or "__auto",
            "range": not self.instant,
            "refId": chr(ord("A") + index),
        }


@dataclass(frozen=True)
class Thresholds:
    """Absolute threshold steps from a base colour: `Thresholds("green", (80, "orange"), ...)`."""

    base: str
    steps: tuple[tuple[float, str], ...] = ()

    def to_dict(self) -> JsonDict:
        steps: list[JsonDict] = [{"color": self.base, "value": None}]  # the base step has no value
        steps += [{"color": color, "value": value} for value, color in self.steps]
        return {"mode": "absolute", "steps": steps}


@dataclass(frozen=True)
class Panel:
    """A visualisation: what it shows (queries), in which unit, and how it is drawn."""

    kind: PanelKind
    title: str
    description: str
    queries: Sequence[Query]
    unit: str = "short"
    stacked: bool = False
    minimum: float | None = None
    maximum: float | None = None
    thresholds: Thresholds | None = None

    def to_dict(self) -> JsonDict:
        return {
            "datasource": DATASOURCE_REF,
            "description": self.description,
            "fieldConfig": {"defaults": self._defaults(), "overrides": []},
            "options": _OPTIONS[self.kind](),
            "targets": [q.to_dict(i) for i, q in enumerate(self.queries)],
            "title": self.title,
            "type": self.kind,
        }

    def _defaults(self) -> JsonDict:
        defaults: JsonDict = {"unit": self.unit}
        if self.kind == "timeseries":
            custom: JsonDict = {"fillOpacity": 10, "lineWidth": 1, "showPoints": "never"}
            if self.stacked:
                custom["stacking"] = {"group": "A", "mode": "normal"}
            defaults["custom"] = custom
        if self.minimum is not None:
            defaults["min"] = self.minimum
        if self.maximum is not None:
            defaults["max"] = self.maximum
        if self.thresholds is not None:
            defaults["thresholds"] = self.thresholds.to_dict()
        return defaults


def _reduce_last() -> JsonDict:
    return {"calcs": ["lastNotNull"], "fields": "", "values": False}


def _timeseries_options() -> JsonDict:
    return {
        "legend": {"calcs": [], "displayMode": "list", "placement": "bottom", "showLegend": True},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }


def _stat_options() -> JsonDict:
    return {
        "colorMode": "value",
        "graphMode": "area",
        "justifyMode": "auto",
        "orientation": "auto",
        "reduceOptions": _reduce_last(),
        "textMode": "auto",
    }


def _gauge_options() -> JsonDict:
    return {
        "orientation": "auto",
        "reduceOptions": _reduce_last(),
        "showThresholdLabels": False,
        "showThresholdMarkers": True,
    }


def _bargauge_options() -> JsonDict:
    return {
        "displayMode": "gradient",
        "orientation": "horizontal",
        "reduceOptions": _reduce_last(),
        "showUnfilled": True,
    }


_OPTIONS: dict[str, Callable[[], JsonDict]] = {
    "timeseries": _timeseries_options,
    "stat": _stat_options,
    "gauge": _gauge_options,
    "bargauge": _bargauge_options,
}


def timeseries(
    title: str, description: str, queries: Sequence[Query], unit: str = "short", *, stacked: bool = False
) -> Panel:
    return Panel("timeseries", title, description, queries, unit, stacked=stacked)


def stat(title: str, description: str, query: Query, unit: str = "short") -> Panel:
    return Panel("stat", title, description, [query], unit)


def gauge(
    title: str, description: str, query: Query, *, unit: str, maximum: float, steps: Thresholds
) -> Panel:
    return Panel("gauge", title, description, [query], unit, minimum=0, maximum=maximum, thresholds=steps)


def bar_ranking(title: str, description: str, query: Query, unit: str) -> Panel:
    """A horizontal bar gauge of instant values: the natural display of a `topk()`."""
    return Panel("bargauge", title, description, [query], unit, minimum=0)


@dataclass(frozen=True)
class QueryVariable:
    """A Prometheus `label_values` template variable, refreshed when the time range changes.

    `multi` variables offer "All" as the regex `.*`, so `=~"$var"` matches every value, including
    ones not listed yet.
    """

    name: str
    label: str
    query: str
    multi: bool

    def to_dict(self) -> JsonDict:
        variable: JsonDict = {
            "datasource": DATASOURCE_REF,
            "includeAll": self.multi,
            "label": self.label,
            "multi": self.multi,
            "name": self.name,
            "query": {
                "qryType": 1,
                "query": self.query,
                "refId": "PrometheusVariableQueryEditor-VariableQuery",
            },
            "refresh": 2,
            "sort": 1,
            "type": "query",
        }
        if self.multi:
            variable["allValue"] = ".*"
        return variable


@dataclass
class Layout:
    """Places panels left to right, wrapping at the grid width, numbering them 1, 2, 3…"""

    panels: list[JsonDict] = field(default_factory=list)
    _x: int = 0
    _y: int = 0
    _row_height: int = 0

    def add(self, panel: Panel, width: int, height: int) -> None:
        self._place(panel.to_dict(), width, height)

    def row(self, title: str) -> None:
        """A row header; Grafana wants rows full width at x=0, with their panels following them."""
        if self._x:
            self._newline()
        self._place({"collapsed": False, "panels": [], "title": title, "type": "row"}, GRID_WIDTH, 1)
        self._newline()

    def _place(self, panel: JsonDict, width: int, height: int) -> None:
        if not 0 < width <= GRID_WIDTH:
            raise ValueError(f"panel {panel.get('title')!r}: width {width} outside 1..{GRID_WIDTH}")
        if self._x + width > GRID_WIDTH:
            self._newline()
        panel["id"] = len(self.panels) + 1
        panel["gridPos"] = {"h": height, "w": width, "x": self._x, "y": self._y}
        self.panels.append(panel)
        self._x += width
        self._row_height = max(self._row_height, height)

    def _newline(self) -> None:
        self._y += self._row_height
        self._x = 0
        self._row_height = 0


@dataclass(frozen=True)
class Dashboard:
    """A whole dashboard: laid-out panels, template variables, and links to its siblings by tag."""

    uid: str
    title: str
    description: str
    layout: Layout
    timezone: str
    tags: Sequence[str]
    schema_version: int
    variables: Sequence[QueryVariable] = ()

    def variable_names(self) -> set[str]:
        return {v.name for v in self.variables}

    def to_dict(self) -> JsonDict:
        return {
            "annotations": {"list": []},
            "description": self.description,
            "editable": False,
            "graphTooltip": 1,
            "links": [
                {
                    "asDropdown": False,
                    "icon": "dashboard",
                    # Carries this dashboard's variables along; a target ignores ones it lacks.
                    "includeVars": True,
                    "keepTime": True,
                    "tags": ["otel-tokens"],
                    "targetBlank": False,
                    "title": "otel-tokens",
                    "tooltip": "",
                    "type": "dashboards",
                }
            ],
            "panels": self.layout.panels,
            "refresh": "30s",
            "schemaVersion": self.schema_version,
            "tags": list(self.tags),
            "templating": {"list": [v.to_dict() for v in self.variables]},
            "time": {"from": "now-6h", "to": "now"},
            "timepicker": {},
            "timezone": self.timezone,
            "title": self.title,
            "uid": self.uid,
            "version": 1,
        }

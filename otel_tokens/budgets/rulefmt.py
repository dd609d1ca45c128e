"""Typed Prometheus rule files, after Prometheus' own `model/rulefmt`.

`RuleGroup`, `AlertingRule` and `RecordingRule` mirror the Go structs Prometheus parses rule files
into, with the same field names in the same order, so a renderer cannot emit a misspelt key or an
alert without labels; `to_dict()` gives the YAML mapping `promtool check rules` reads. The YAML
dumper writes multi-line PromQL as `|` blocks so the committed rule files stay readable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

__all__ = ["AlertingRule", "RecordingRule", "Rule", "RuleFile", "RuleGroup", "dump_yaml"]


@dataclass(frozen=True)
class RecordingRule:
    """`record: name` / `expr`: a query Prometheus evaluates and stores under a new name."""

    record: str
    expr: str
    labels: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"record": self.record, "expr": self.expr}
        if self.labels:
            out["labels"] = dict(self.labels)
        return out


@dataclass(frozen=True)
class AlertingRule:
    """An alert: fires for each series `expr` returns once it has for `for_`; annotations are Go
    templates (see `otel_tokens.budgets.gotemplate`)."""

    alert: str
    expr: str
    for_: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "alert": self.alert,
            "expr": self.expr,
            "for": self.for_,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
        }


Rule = RecordingRule | AlertingRule


@dataclass(frozen=True)
class RuleGroup:
    """Rules evaluated together, in order, every `interval` (Prometheus' global one when None)."""

    name: str
    rules: Sequence[Rule]
    interval: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.interval is not None:
            out["interval"] = self.interval
        out["rules"] = [rule.to_dict() for rule in self.rules]
        return out

    def alerts(self) -> dict[str, AlertingRule]:
        """The group's alerting rules by name."""
        return {r.alert: r for r in self.rules if isinstance(r, AlertingRule)}


@dataclass(frozen=True)
class RuleFile:
    groups: Sequence[RuleGroup]

    def to_dict(self) -> dict[str, Any]:
        return {"groups": [g.to_dict() for g in self.groups]}


class _Dumper(yaml.SafeDumper):
    """Block style, multi-line strings as `|` literals so PromQL stays readable."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump_yaml(data: Any) -> str:
    """YAML in the given key order (Prometheus' own order reads best), no line wrapping."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000)

"""PromQL expressions built from typed parts instead of formatted strings.

The renderers compose queries from metric and label names (`otel_tokens.metric_names`) with these
builders, so quoting of label values, the spelling of `sum by (...)` and number formatting live in
one place and no query is assembled from brace-escaped f-strings. The builders return plain PromQL
text: that is what rule files and dashboards carry, and what `promtool` checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "Matcher",
    "aggregate",
    "eq",
    "increase",
    "label_replace",
    "max_by",
    "neq",
    "num",
    "rate",
    "regex",
    "same_as_alert",
    "selector",
    "sum_by",
    "topk",
]

MatchOp = Literal["=", "!=", "=~", "!~"]


@dataclass(frozen=True)
class Matcher:
    """One label matcher, `label op "value"`, with the value quoted as PromQL requires."""

    label: str
    value: str
    op: MatchOp = "="
    #: 1-based: the value is filled in later by Go's `printf` from its argument at this position
    #: (`%[n]q`), for an alert annotation's query about the firing series (see
    #: `otel_tokens.budgets.gotemplate.query_value`).
    placeholder: int = 0

    def __str__(self) -> str:
        value = f"%[{self.placeholder}]q" if self.placeholder else quote(self.value)
        return f"{self.label}{self.op}{value}"


def quote(value: str) -> str:
    """A PromQL double-quoted string: backslashes, quotes and newlines escaped."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def eq(label: str, value: str) -> Matcher:
    return Matcher(label, value, "=")


def neq(label: str, value: str) -> Matcher:
    return Matcher(label, value, "!=")


def regex(label: str, value: str) -> Matcher:
    return Matcher(label, value, "=~")


def same_as_alert(label: str, position: int) -> Matcher:
    """`label` equal to the firing alert's own `label` value, filled in at notification time from
    the `position`-th (1-based) label passed to `gotemplate.query_value`."""
    if position < 1:
        raise ValueError(f"placeholder positions start at 1, got {position}")
    return Matcher(label, "", "=", placeholder=position)


def selector(metric: str, *matchers: Matcher) -> str:
    """`metric{a="x", b=~"y"}`, or the bare metric name without matchers."""
    if not matchers:
        return metric
    return metric + "{" + ", ".join(str(m) for m in matchers) + "}"


def _range(expr: str, window: str, offset: str | None) -> str:
    return f"{expr}[{window}]" + (f" offset {offset}" if offset else "")


def rate(series: str, window: str, *, offset: str | None = None) -> str:
    return f"rate({_range(series, window, offset)})"


def increase(series: str, window: str, *, offset: str | None = None) -> str:
    return f"increase({_range(series, window, offset)})"


def aggregate(op: str, by: Sequence[str], expr: str) -> str:
    """`op by (a, b) (expr)`; without grouping labels, `op(expr)` over everything."""
    if not by:
        return f"{op}({expr})"
    return f"{op} by ({', '.join(by)}) ({expr})"


def sum_by(by: Sequence[str], expr: str) -> str:
    """Sums over every label not in `by` — including `instance`, which is what makes counters and
    ledger figures from several collectors add up to the fleet's total."""
    return aggregate("sum", by, expr)


def max_by(by: Sequence[str], expr: str) -> str:
    return aggregate("max", by, expr)


def topk(k: int, expr: str) -> str:
    return f"topk({k}, {expr})"


def label_replace(expr: str, label: str, value: str) -> str:
    """`expr` with `label` set to the constant `value` (PromQL's only way to label a constant)."""
    return f"label_replace({expr}, {quote(label)}, {quote(value)}, {quote('')}, {quote('')})"


def num(x: float) -> str:
    """A PromQL number without float noise: 3.0 → 3, 1/12 → 0.08333333333."""
    return f"{x:.10g}"

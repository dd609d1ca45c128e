"""Usage rows from counter samples: tokens by type, cost and requests grouped by one label.

Pure. Both data sources hand over the same thing — samples of `llm_tokens_total`,
`llm_cost_usd_total`, `llm_requests_total` (and the task histograms' `_sum`/`_count`) with their
labels — so `usage`, `top`, the report and the status page group and filter them here, once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from otel_tokens import metric_names as mn

__all__ = [
    "GROUP_BY",
    "Sample",
    "TaskCost",
    "UsageRow",
    "UsageTable",
    "cache_hit_ratio",
    "parse_filters",
    "task_costs",
    "top_rows",
    "usage_table",
]

#: The labels `--by` accepts (user only when the collector exports it as a dimension).
GROUP_BY: tuple[str, ...] = (mn.AGENT, mn.TASK, mn.MODEL, mn.USER, mn.PROVIDER)
USAGE_SERIES: tuple[str, ...] = (mn.TOKENS, mn.COST, mn.REQUESTS)
_TASK_COST_SUM, _TASK_COST_COUNT = mn.histogram_series(mn.TASK_COST)[1:]
TASK_SERIES: tuple[str, ...] = (_TASK_COST_SUM, _TASK_COST_COUNT)


@dataclass(frozen=True)
class Sample:
    """One series' value: a counter's total (or its increase over `--since`)."""

    labels: Mapping[str, str]
    value: float


Samples = Mapping[str, Sequence[Sample]]


@dataclass
class UsageRow:
    key: str
    tokens: dict[str, float] = field(default_factory=lambda: dict.fromkeys(mn.TOKEN_TYPES, 0.0))
    cost: float = 0.0
    requests: float = 0.0

    @property
    def total_tokens(self) -> float:
        return sum(self.tokens.values())

    def add(self, other: UsageRow) -> None:
        for kind, value in other.tokens.items():
            self.tokens[kind] = self.tokens.get(kind, 0.0) + value
        self.cost += other.cost
        self.requests += other.requests

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key, "tokens": dict(self.tokens), "total_tokens": self.total_tokens,
            "cost_usd": self.cost, "requests": self.requests,
        }  # fmt: skip


@dataclass(frozen=True)
class UsageTable:
    by: str
    rows: list[UsageRow]  # most expensive first
    total: UsageRow

    def to_dict(self) -> dict[str, Any]:
        return {"by": self.by, "rows": [r.to_dict() for r in self.rows], "total": self.total.to_dict()}


def parse_filters(pairs: Sequence[str]) -> dict[str, str]:
    """`["agent=support", "model=gpt-4o"]` → a dict; a malformed pair raises naming it."""
    filters: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"--filter wants KEY=VALUE (e.g. agent=support), got {pair!r}")
        if key.strip() not in GROUP_BY:
            raise ValueError(f"--filter {pair!r}: KEY must be one of {', '.join(GROUP_BY)}")
        filters[key.strip()] = value.strip()
    return filters


def _matches(labels: Mapping[str, str], filters: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in filters.items())


def _check_labels(samples: Samples, needed: Sequence[str]) -> None:
    """A label missing from every series is a dimension the collector does not export: say so
    instead of printing one row called "unknown"."""
    series = [s for name in USAGE_SERIES for s in samples.get(name, ())]
    for label in needed:
        if series and not any(label in s.labels for s in series):
            raise ValueError(
                f"the metrics carry no {label!r} label: the collector does not export it as a dimension "
                f"(start it with --dimensions {','.join((*mn.DEFAULT_DIMENSIONS, label))})"
            )


def usage_table(samples: Samples, by: str, filters: Mapping[str, str] | None = None) -> UsageTable:
    """Group every usage series by `by` (after `filters`), most expensive row first."""
    filters = dict(filters or {})
    _check_labels(samples, [by, *filters])
    rows: dict[str, UsageRow] = {}

    def row(labels: Mapping[str, str]) -> UsageRow:
        key = labels.get(by, mn.UNKNOWN)
        return rows.setdefault(key, UsageRow(key))

    for name in USAGE_SERIES:
        for s in samples.get(name, ()):
            if not _matches(s.labels, filters):
                continue
            r = row(s.labels)
            if name == mn.TOKENS:
                kind = s.labels.get(mn.TOKEN_TYPE, "input")
                r.tokens[kind] = r.tokens.get(kind, 0.0) + s.value
            elif name == mn.COST:
                r.cost += s.value
            else:
                r.requests += s.value
    ordered = sorted(rows.values(), key=lambda r: (-r.cost, -r.total_tokens, r.key))
    total = UsageRow("total")
    for r in ordered:
        total.add(r)
    return UsageTable(by, ordered, total)


def top_rows(table: UsageTable, n: int) -> list[tuple[UsageRow, float]]:
    """The `n` most expensive rows with each one's share of the total cost (of tokens when nothing
    was priced)."""
    by_cost = table.total.cost > 0
    whole = table.total.cost if by_cost else table.total.total_tokens
    ordered = table.rows if by_cost else sorted(table.rows, key=lambda r: (-r.total_tokens, r.key))
    return [(r, (r.cost if by_cost else r.total_tokens) / whole if whole else 0.0) for r in ordered[:n]]


def cache_hit_ratio(row: UsageRow) -> float | None:
    """Cache reads over all input (fresh + cache read + cache write), as the recording rule says."""
    prompt = row.tokens["input"] + row.tokens["cache_read"] + row.tokens["cache_write"]
    return row.tokens["cache_read"] / prompt if prompt else None


@dataclass(frozen=True)
class TaskCost:
    task: str
    completed: float
    cost: float

    @property
    def per_task(self) -> float:
        return self.cost / self.completed if self.completed else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "completed": self.completed, "cost_usd": self.cost,
                "cost_per_task_usd": self.per_task}  # fmt: skip


def task_costs(samples: Samples, filters: Mapping[str, str] | None = None) -> list[TaskCost]:
    """Cost per completed task by task type (`llm_task_cost_usd`), dearest per task first."""
    filters = dict(filters or {})
    cost: dict[str, float] = {}
    count: dict[str, float] = {}
    for name, into in ((_TASK_COST_SUM, cost), (_TASK_COST_COUNT, count)):
        for s in samples.get(name, ()):
            if _matches(s.labels, filters):
                task = s.labels.get(mn.TASK, mn.UNKNOWN)
                into[task] = into.get(task, 0.0) + s.value
    rows = [TaskCost(t, count.get(t, 0.0), cost.get(t, 0.0)) for t in count if count.get(t)]
    return sorted(rows, key=lambda r: (-r.per_task, r.task))

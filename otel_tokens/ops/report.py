"""`otel-tokens report`: one report of a period as a JSON document, Markdown and an HTML page.

`gather()` asks the source (progress on stderr); `build()` is pure and makes the JSON-ready
document every format is rendered from, so the three never disagree. Charts over time (cost by
agent, usage by hour of day) need history, which only a Prometheus source has; from a collector
the report says so in place of those charts and shows totals since the collector started.
Hours of day are UTC.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from otel_tokens import metric_names as mn
from otel_tokens.humanize import format_amount, format_tokens, format_usd
from otel_tokens.ops.html import percent
from otel_tokens.ops.outlook import Outlook, format_duration
from otel_tokens.ops.source import DataSource, NoBudgets
from otel_tokens.ops.usage import (
    TASK_SERIES,
    USAGE_SERIES,
    Sample,
    TaskCost,
    UsageTable,
    cache_hit_ratio,
    task_costs,
    usage_table,
)

__all__ = ["PERIODS", "build", "gather", "markdown"]

#: period → (length in seconds, Prometheus duration, chart step in seconds)
PERIODS: dict[str, tuple[float, str, float]] = {
    "day": (86400.0, "1d", 3600.0),
    "week": (7 * 86400.0, "7d", 6 * 3600.0),
    "month": (30 * 86400.0, "30d", 86400.0),
}
TOP_TASKS = 10
NO_HISTORY = "needs history: run the report with --prometheus URL"


@dataclass(frozen=True)
class Inputs:
    """What the source answered; `None` where it cannot answer (history from a collector)."""

    period: str
    note: str
    samples: Mapping[str, Sequence[Sample]]
    outlooks: list[Outlook] | None
    budgets_note: str | None
    cost_history: dict[str, list[tuple[float, float]]] | None
    token_history: dict[str, list[tuple[float, float]]] | None
    now: float
    #: The first point of the cost timeline (the grid ends at `now` rounded up to a whole step).
    timeline_start: float | None = None


def gather(source: DataSource, period: str) -> Inputs:
    length, duration, step = PERIODS[period]
    now = time.time()
    since = duration if source.has_history else None
    samples = source.samples((*USAGE_SERIES, *TASK_SERIES), since, {})
    try:
        outlooks, budgets_note = source.outlooks(), None
    except NoBudgets as exc:
        outlooks, budgets_note = None, str(exc)
    # Points on whole steps (UTC): a point at t holds the step before t, so hours of day come out
    # right and the last point covers the current, unfinished step.
    end, hour_end = math.ceil(now / step) * step, math.ceil(now / 3600) * 3600
    cost = source.history(mn.COST, mn.AGENT, end - length, end, step)
    tokens = source.history(mn.TOKENS, mn.AGENT, hour_end - length, hour_end, 3600.0)
    note = source.scope_note(since)
    return Inputs(period, note, samples, outlooks, budgets_note, cost, tokens, now, end - length)


def _rows(table: UsageTable) -> list[dict[str, Any]]:
    return [r.to_dict() | {"cache_hit_ratio": cache_hit_ratio(r)} for r in table.rows]


def _hourly(history: Mapping[str, Sequence[tuple[float, float]]]) -> list[float]:
    """Tokens by UTC hour of day; a point at t holds the hour before t."""
    hours = [0.0] * 24
    for points in history.values():
        for t, value in points:
            hours[datetime.fromtimestamp(t - 3600, timezone.utc).hour] += value
    return hours


def _timeline(inputs: Inputs) -> dict[str, Any]:
    """Cost per step by agent on the period's full grid (steps without use are 0, not missing)."""
    length, _, step = PERIODS[inputs.period]
    start = inputs.timeline_start if inputs.timeline_start is not None else inputs.now - length
    times = [start + k * step for k in range(int(length // step) + 1)]
    series: dict[str, list[float]] = {}
    for agent, points in sorted((inputs.cost_history or {}).items()):
        values = [0.0] * len(times)
        for t, value in points:
            k = round((t - start) / step)
            if 0 <= k < len(values):
                values[k] += value
        series[agent] = values
    return {"step_seconds": step, "times": times, "series": series}


def build(inputs: Inputs) -> dict[str, Any]:
    """The report document (JSON-ready); every format renders this."""
    by_agent = usage_table(inputs.samples, mn.AGENT)
    by_model = usage_table(inputs.samples, mn.MODEL)
    tasks: list[TaskCost] = task_costs(inputs.samples)[:TOP_TASKS]
    hourly = _hourly(inputs.token_history) if inputs.token_history is not None else None
    peaks = None
    if hourly is not None:
        peaks = [h for h in sorted(range(24), key=lambda h: -hourly[h]) if hourly[h] > 0][:3]
    return {
        "period": inputs.period,
        "generated_at": inputs.now,
        "source": inputs.note,
        "totals": by_agent.total.to_dict() | {"cache_hit_ratio": cache_hit_ratio(by_agent.total)},
        "by_agent": _rows(by_agent),
        "by_model": _rows(by_model),
        "budgets": None if inputs.outlooks is None else [o.to_dict() for o in inputs.outlooks],
        "budgets_note": inputs.budgets_note,
        "tasks": [t.to_dict() for t in tasks],
        "cost_over_time": None if inputs.cost_history is None else _timeline(inputs),
        "hourly_tokens": hourly,
        "peak_hours_utc": peaks,
        "history_note": None if inputs.cost_history is not None else NO_HISTORY,
    }


# --- Markdown -------------------------------------------------------------------------------------


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: int = 1) -> list[str]:
    """A GitHub table; columns from `right` on are right-aligned (figures)."""
    align = ["---" if i < right else "---:" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines


def _usage_md(rows: Sequence[Mapping[str, Any]], by: str) -> list[str]:
    return _md_table(
        [by, *mn.TOKEN_TYPES, "cost", "cache hit"],
        [
            [r["key"], *(format_tokens(r["tokens"][k]) for k in mn.TOKEN_TYPES), format_usd(r["cost_usd"]),
             percent(r["cache_hit_ratio"])]
            for r in rows
        ],
    )  # fmt: skip


def _budgets_md(doc: Mapping[str, Any]) -> list[str]:
    budgets = doc["budgets"]
    if budgets is None:
        return [f"_{doc['budgets_note']}_"]
    rows = []
    for b in budgets:
        unit, rate = b["unit"], b["rate_per_hour"]
        rows.append([
            b["name"], b["window"], format_amount(b["used"], unit), format_amount(b["limit"], unit),
            percent(b["ratio"]), f"{b['warn_at']:.0%}", b["state"],
            "-" if rate is None else format_amount(rate, unit),
            "-" if b["projected"] is None else format_amount(b["projected"], unit),
            "-" if rate is None else format_duration(b["seconds_left"]),
        ])  # fmt: skip
    headers = ["budget", "window", "used", "limit", "%", "warn at", "state", "burn/h", "at end", "left"]
    return _md_table(headers, rows, right=2)  # the state column reads fine right-aligned too


def markdown(doc: Mapping[str, Any]) -> str:
    at = datetime.fromtimestamp(doc["generated_at"], timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    totals = doc["totals"]
    lines = [
        f"# otel-tokens report: {doc['period']} to {at}",
        "",
        f"Figures: {doc['source']}.",
        "",
        f"**{format_usd(totals['cost_usd'])}** for **{format_tokens(totals['total_tokens'])} tokens** in "
        f"{format_tokens(totals['requests'])} requests; "
        f"cache hit ratio {percent(totals['cache_hit_ratio'])}.",
        "",
        "## Budgets",
        "",
        *_budgets_md(doc),
        "",
        "## Cost by agent",
        "",
        *_usage_md(doc["by_agent"], "agent"),
        "",
        "## Cost by model",
        "",
        *_usage_md(doc["by_model"], "model"),
        "",
        "## Cost per completed task, by task type",
        "",
    ]
    tasks = doc["tasks"]
    if tasks:
        lines += _md_table(
            ["task", "completed", "cost", "per task"],
            [[t["task"], format_tokens(t["completed"]), format_usd(t["cost_usd"]),
              format_usd(t["cost_per_task_usd"])] for t in tasks],
        )  # fmt: skip
    else:
        lines.append("_no task completed (tasks complete when an `attribute(task_id=...)` scope exits)_")
    lines += ["", "## Peak hours (UTC)", ""]
    peaks = doc["peak_hours_utc"]
    if peaks is None:
        lines.append(f"_{doc['history_note']}_")
    else:
        hourly = doc["hourly_tokens"]
        lines.append(", ".join(f"{h:02d}:00 ({format_tokens(hourly[h])} tokens)" for h in peaks) or "_none_")
    return "\n".join(lines) + "\n"

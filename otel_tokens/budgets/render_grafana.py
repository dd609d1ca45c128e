"""Grafana provisioning and the two generated dashboards (overview, per-agent drill-down).

The dashboards are data derived from the budget file — one gauge per budget, its thresholds at the
file's warn and limit — so they are rendered with the rules rather than drawn by hand, and a test
fails when the committed JSON drifts from the budget file. Output is canonical JSON (sorted keys,
two-space indent, trailing newline) with panel ids assigned in build order.

Every query reads only metrics the collector exports (see `tests/test_grafana_dashboards.py`):
token and cost counters, the request histogram, the exact budget ledger gauges and self-metrics —
plus the one series the rules record for the forecast, so the forecast panel shows exactly what the
forecast alert checks. Queries sum over collector instances (`budget_queries`), and a counter that
has had no events yet reads 0 rather than "No data" (`tests/test_dashboards_live.py`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from otel_tokens import metric_names as mn
from otel_tokens.budgets import budget_queries as bq
from otel_tokens.budgets.grafana_panels import (
    DATASOURCE_UID,
    Dashboard,
    JsonDict,
    Layout,
    Panel,
    Query,
    QueryVariable,
    Thresholds,
    bar_ranking,
    gauge,
    stat,
    timeseries,
)
from otel_tokens.budgets.promql import (
    Matcher,
    eq,
    increase,
    label_replace,
    regex,
    selector,
    sum_by,
    topk,
)
from otel_tokens.budgets.promql import rate as _rate
from otel_tokens.budgets.render_prometheus import cache_hit_ratio
from otel_tokens.budgets.rulefmt import dump_yaml
from otel_tokens.budgets.spec import BudgetFile
from otel_tokens.humanize import format_usd, short_number

__all__ = [
    "AGENT_DASHBOARD_UID",
    "DASHBOARDS_DIR",
    "DATASOURCE_UID",
    "OVERVIEW_DASHBOARD_UID",
    "BudgetGauge",
    "agent_dashboard",
    "budget_gauges",
    "dashboard_json",
    "dashboard_provider_yaml",
    "datasource_yaml",
    "overview_dashboard",
]

OVERVIEW_DASHBOARD_UID = "otel-tokens-overview"
AGENT_DASHBOARD_UID = "otel-tokens-agent"
#: Where the provider reads dashboards inside the Grafana container (docker-compose mounts it).
DASHBOARDS_DIR = "/var/lib/grafana/dashboards"
#: Grafana's JSON model version the dashboards are written for (Grafana 11/12 read it unchanged).
SCHEMA_VERSION = 39
_TAGS = ["llm", "otel-tokens"]

#: Grafana picks a rate window that always holds enough scrapes for the zoom level.
RATE_INTERVAL = "$__rate_interval"
#: The dashboard's whole time range, for "how much in range" panels.
RANGE = "$__range"
#: What every panel shows for a metric that has simply had no events yet (instead of "No data").
NONE = "none"


def rate(series: str) -> str:
    return _rate(series, RATE_INTERVAL)


def _or_zero(expr: str, *labels: str) -> str:
    """`expr`, or a single 0 when it has no series at all (`on()`: only then): a counter with labels
    has no series until its first event, and "no errors yet" must read 0, not "No data"."""
    zero = "vector(0)"
    for label in labels:
        zero = label_replace(zero, label, NONE)
    return f"{expr} or on () {zero}"


def _var(label: str) -> Matcher:
    """`label=~"$label"`: narrowed by the dashboard variable of the same name."""
    return regex(label, "$" + label)


@dataclass(frozen=True)
class BudgetGauge:
    """What a budget gauge needs from the budget file: which ledger series, and its two thresholds."""

    name: str
    limit: float
    warn_at: float  # fraction of the limit, e.g. 0.8
    usd: bool  # limit in US dollars rather than tokens
    window: str
    forecast: bool = False  # whether the rules record a forecast for it


def budget_gauges(spec: BudgetFile) -> list[BudgetGauge]:
    """One gauge per budget, in file order (the order the author grouped them in)."""
    return [
        BudgetGauge(
            b.name, b.limit.amount, b.warn_at, b.limit.unit == "usd", b.window, forecast=b.forecast.enabled
        )
        for b in spec.budgets
    ]


def _provisioning(header: str, body: JsonDict) -> str:
    return f"# {header}\n" + dump_yaml(body)


def datasource_yaml(header: str, prometheus_url: str = "http://prometheus:9090") -> str:
    """Datasource provisioning with a fixed uid, the uid every generated panel refers to."""
    datasource = {
        "name": "Prometheus",
        "type": "prometheus",
        "uid": DATASOURCE_UID,
        "access": "proxy",
        "url": prometheus_url,
        "isDefault": True,
        "editable": False,
        "jsonData": {"timeInterval": "15s"},
    }
    return _provisioning(header, {"apiVersion": 1, "datasources": [datasource]})


def dashboard_provider_yaml(header: str) -> str:
    """Dashboard provider: files under DASHBOARDS_DIR, not editable in the UI (they are generated)."""
    provider = {
        "name": "otel-tokens",
        "folder": "otel-tokens",
        "type": "file",
        "disableDeletion": True,
        "allowUiUpdates": False,
        "updateIntervalSeconds": 30,
        "options": {"path": DASHBOARDS_DIR, "foldersFromFilesStructure": False},
    }
    return _provisioning(header, {"apiVersion": 1, "providers": [provider]})


def dashboard_json(dashboard: JsonDict) -> str:
    """Canonical text of a dashboard: what is committed and compared byte for byte."""
    return json.dumps(dashboard, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _dashboard(
    uid: str,
    title: str,
    description: str,
    layout: Layout,
    timezone: str,
    variables: Sequence[QueryVariable] = (),
) -> JsonDict:
    return Dashboard(uid, title, description, layout, timezone, _TAGS, SCHEMA_VERSION, variables).to_dict()


def overview_dashboard(
    budgets: Sequence[BudgetGauge], *, description: str, timezone: str = "browser"
) -> JsonDict:
    """Fleet-wide view: spend, budgets, efficiency of the agents, and the collector's own health.

    Its one variable, `budget`, narrows the budget panels; alert annotations link here with
    `var-budget` (and with nothing else: a link may only set variables its target defines)."""
    layout = Layout()
    _spend_row(layout)
    _budget_row(layout, budgets)
    _efficiency_row(layout, by=mn.AGENT, sel=())
    _collector_row(layout)
    budget = QueryVariable(mn.BUDGET, "Budget", f"label_values({mn.BUDGET_USED}, {mn.BUDGET})", multi=True)
    title = "otel-tokens — overview"
    return _dashboard(OVERVIEW_DASHBOARD_UID, title, description, layout, timezone, [budget])


def agent_dashboard(*, description: str, timezone: str = "browser") -> JsonDict:
    """One agent at a time, narrowed by task and model through template variables."""
    sel = (_var(mn.AGENT), _var(mn.TASK), _var(mn.MODEL))
    layout = Layout()
    layout.row("Spend")
    layout.add(_tokens_by(mn.TOKEN_TYPE, sel), 12, 8)
    layout.add(_cost_by(mn.TASK, sel), 12, 8)
    layout.add(_cost_by(mn.MODEL, sel), 12, 8)
    layout.add(_requests_by_status(sel), 12, 8)
    _efficiency_row(layout, by=mn.TASK, sel=sel)
    layout.row("Task instances")
    layout.add(_input_tokens_p95(sel), 12, 8)
    layout.add(_task_instances(), 12, 8)
    layout.add(_tokens_per_completed_task(), 12, 8)
    title = "otel-tokens — agent"
    return _dashboard(AGENT_DASHBOARD_UID, title, description, layout, timezone, _agent_variables())


def _agent_variables() -> list[QueryVariable]:
    # Each variable narrows the next, so the task list only shows this agent's tasks.
    agent, task = _var(mn.AGENT), _var(mn.TASK)
    return [
        QueryVariable(mn.AGENT, "Agent", f"label_values({mn.TOKENS}, {mn.AGENT})", multi=False),
        QueryVariable(mn.TASK, "Task", f"label_values({selector(mn.TOKENS, agent)}, {mn.TASK})", multi=True),
        QueryVariable(
            mn.MODEL, "Model", f"label_values({selector(mn.TOKENS, agent, task)}, {mn.MODEL})", multi=True
        ),
    ]


def _legend(*labels: str, sep: str = " ") -> str:
    """A Grafana legend template naming each series by `labels`: `{{agent}} / {{task}}`."""
    return sep.join("{{" + label + "}}" for label in labels)


def _spend_row(layout: Layout) -> None:
    layout.row("Spend")
    burn = Query(sum_by((), rate(mn.TOKENS)))
    layout.add(stat("Burn rate (tokens/s)", "All token types, all agents.", burn, "short"), 6, 5)
    cost = Query(f"{sum_by((), rate(mn.COST))} * 3600")
    layout.add(stat("Cost per hour", "Spend rate in US dollars per hour.", cost, "currencyUSD"), 6, 5)
    spent = Query(sum_by((), increase(mn.COST, RANGE)))
    layout.add(
        stat("Cost in range", "Dollars spent over the dashboard time range.", spent, "currencyUSD"), 6, 5
    )
    failed = sum_by((), rate(selector(mn.REQUESTS, eq(mn.STATUS, "error"))))
    # No request in the window: nothing failed either (0, not 0/0 = NaN).
    errors = Query(_or_zero(f"({_or_zero(failed)}) / ({sum_by((), rate(mn.REQUESTS))} > 0)"))
    text = "Share of LLM requests that failed (0 until one does)."
    layout.add(stat("Error ratio", text, errors, "percentunit"), 6, 5)
    layout.add(_tokens_by(mn.TOKEN_TYPE, ()), 12, 8)
    layout.add(_cost_by(mn.AGENT, ()), 12, 8)
    layout.add(_cost_by(mn.MODEL, ()), 12, 8)
    layout.add(_requests_by_status(()), 12, 8)
    top = Query(
        topk(10, sum_by((mn.AGENT, mn.TASK), increase(mn.COST, RANGE))),
        _legend(mn.AGENT, mn.TASK, sep=" / "),
        True,
    )
    layout.add(
        bar_ranking("Top spenders", "The ten agent/task pairs that cost most in range.", top, "currencyUSD"),
        12,
        8,
    )


def _tokens_by(label: str, sel: Sequence[Matcher]) -> Panel:
    q = Query(sum_by((label,), rate(selector(mn.TOKENS, *sel))), _legend(label))
    return timeseries(f"Tokens/s by {label}", "Token burn rate; token types are disjoint.", [q], stacked=True)


def _cost_by(label: str, sel: Sequence[Matcher]) -> Panel:
    q = Query(f"{sum_by((label,), rate(selector(mn.COST, *sel)))} * 3600", _legend(label))
    return timeseries(f"Cost by {label}", "US dollars per hour.", [q], "currencyUSD", stacked=True)


def _requests_by_status(sel: Sequence[Matcher]) -> Panel:
    q = Query(sum_by((mn.STATUS,), rate(selector(mn.REQUESTS, *sel))), _legend(mn.STATUS))
    return timeseries("Requests by status", "LLM requests per second.", [q], "reqps", stacked=True)


def _budget_row(layout: Layout, budgets: Sequence[BudgetGauge]) -> None:
    layout.row("Budgets")
    for budget in budgets:
        layout.add(_budget_gauge(budget), 6, 6)
    ratio = Query(bq.usage_ratio(_var(mn.BUDGET)), f"{_legend(mn.BUDGET)} ({_legend(mn.WINDOW)})")
    text = "Exact share of each budget used, from the collectors' ledgers (summed over collectors)."
    layout.add(timeseries("Budget usage", text, [ratio], "percentunit"), 12, 8)
    forecast = Query(selector(bq.FORECAST_RECORD, _var(mn.BUDGET)), _legend(mn.BUDGET))
    text = (
        "What the BudgetForecast alert checks (the rules record it): use projected to the end of the "
        "window at the current burn rate, as a share of the limit — for a calendar period, use now plus "
        "the burn rate until it ends; for a rolling window, the burn rate over one whole window. Above "
        "100% the budget runs out before the window does."
    )
    layout.add(timeseries("Forecast: use at window end", text, [forecast], "percentunit"), 12, 8)


def _budget_gauge(budget: BudgetGauge) -> Panel:
    steps = Thresholds("green", ((budget.limit * budget.warn_at, "orange"), (budget.limit, "red")))
    query = Query(bq.used(budget.name), budget.name, instant=True)
    limit = format_usd(budget.limit) if budget.usd else f"{short_number(budget.limit)} tokens"
    text = f"Used of {limit} per {budget.window}; warns at {budget.warn_at:.0%}."
    unit = "currencyUSD" if budget.usd else "short"
    # Headroom past the limit so an overspent budget still shows how far over it is.
    return gauge(budget.name, text, query, unit=unit, maximum=budget.limit * 1.25, steps=steps)


def _efficiency_row(layout: Layout, *, by: str, sel: Sequence[Matcher]) -> None:
    layout.row("Efficiency")
    cache = Query(cache_hit_ratio((by,), RATE_INTERVAL, *sel), _legend(by))
    text = "cache_read / (input + cache_read + cache_write): the share of prompt tokens served from cache."
    layout.add(timeseries("Prompt-cache hit ratio", text, [cache], "percentunit"), 12, 8)
    avg = Query(_average(mn.INPUT_HISTOGRAM, by, sel), _legend(by))
    text = "Average input tokens per request; a steady climb means the context is never trimmed."
    layout.add(timeseries("Context growth", text, [avg]), 12, 8)


def _average(histogram: str, by: str, sel: Sequence[Matcher]) -> str:
    """A histogram's mean observation per `by`: rate of its sum over rate of its count."""
    _, total, count = mn.histogram_series(histogram)
    return f"{sum_by((by,), rate(selector(total, *sel)))} / {sum_by((by,), rate(selector(count, *sel)))}"


def _input_tokens_p95(sel: Sequence[Matcher]) -> Panel:
    bucket, _, _ = mn.histogram_series(mn.INPUT_HISTOGRAM)
    per_bucket = sum_by(("le", mn.TASK), rate(selector(bucket, *sel)))
    q = Query(f"histogram_quantile(0.95, {per_bucket})", f"p95 {_legend(mn.TASK)}")
    return timeseries("Input tokens per request (p95)", "Large prompts by task.", [q])


def _task_instances() -> Panel:
    instances = selector(mn.TASK_INSTANCE_TOKENS, _var(mn.AGENT), _var(mn.TASK))
    q = Query(topk(10, sum_by(bq.BY_TASK_INSTANCE, instances)), _legend(mn.TASK, mn.TASK_ID), True)
    text = "Tokens of the largest running or offending task instances, from the collectors' ledgers."
    return bar_ranking("Largest task instances", text, q, "short")


def _tokens_per_completed_task() -> Panel:
    # llm_task_tokens has no model label: narrowing by $model would hide every series.
    sel = (_var(mn.AGENT), _var(mn.TASK))
    q = Query(_average(mn.TASK_TOKENS, mn.TASK, sel), _legend(mn.TASK))
    text = "Average tokens a task instance used, all its calls included, over the tasks that completed."
    return timeseries("Tokens per completed task", text, [q])


def _collector_row(layout: Layout) -> None:
    layout.row("Collector")
    rejected = sum_by((mn.REASON,), rate(mn.SPANS_REJECTED))
    spans = [
        Query(sum_by((), rate(mn.SPANS_RECEIVED)), "received"),
        Query(_or_zero(rejected, mn.REASON), f"rejected: {_legend(mn.REASON)}"),
        Query(sum_by((), rate(mn.DUPLICATES_DROPPED)), "duplicates dropped"),
    ]
    layout.add(
        timeseries("Spans", "Spans received, rejected and deduplicated per second.", spans, "ops"), 8, 8
    )
    overflowed = sum_by((mn.METRIC,), increase(mn.SERIES_OVERFLOW, RANGE))
    overflow = Query(_or_zero(overflowed, mn.METRIC), _legend(mn.METRIC), True)
    text = "Records folded into the overflow series because a metric hit its series limit (none: 0)."
    layout.add(bar_ranking("Series overflow", text, overflow, "short"), 8, 8)
    unpriced_models = sum_by((mn.PROVIDER, mn.MODEL), increase(mn.UNPRICED, RANGE))
    unpriced = Query(_or_zero(unpriced_models, mn.MODEL), _legend(mn.PROVIDER, mn.MODEL), True)
    text = "Calls whose model has no known price: their cost is missing from every cost panel (none: 0)."
    layout.add(bar_ranking("Unpriced models", text, unpriced, "short"), 8, 8)

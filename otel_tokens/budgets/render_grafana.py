"""Grafana provisioning and the two generated dashboards (overview, per-agent drill-down).

The dashboards are data derived from the budget file — one gauge per budget, its thresholds at the
file's warn and limit — so they are rendered with the rules rather than drawn by hand, and a test
fails when the committed JSON drifts from the budget file. Output is canonical JSON (sorted keys,
two-space indent, trailing newline) with panel ids assigned in build order.

Every query reads only metrics the collector exports (see `tests/test_grafana_dashboards.py`):
token and cost counters, the request histogram, the exact budget ledger gauges and self-metrics.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from otel_tokens.budgets.grafana_panels import (
    DATASOURCE_UID,
    JsonDict,
    Layout,
    Query,
    bar_ranking,
    gauge,
    query_variable,
    stat,
    thresholds,
    timeseries,
)
from otel_tokens.budgets.spec import BudgetFile

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

_RATE = "[$__rate_interval]"
_CACHE_RATIO = (
    'sum by ({by}) (rate(llm_tokens_total{{token_type="cache_read"{more}}}' + _RATE + "))"
    " / sum by ({by}) (rate(llm_tokens_total{{"
    'token_type=~"input|cache_read|cache_write"{more}}}' + _RATE + "))"
)
# From the ledger's exact figures (one window per budget, so `sum by (budget)` is that window).
_FORECAST = (
    "(sum by (budget) (llm_budget_used)"
    " + sum by (budget) (rate(llm_budget_consumed_total[1h]))"
    " * sum by (budget) (llm_budget_window_remaining_seconds))"
    " / sum by (budget) (llm_budget_limit)"
)
_AVG_INPUT = (
    "sum by ({by}) (rate(llm_request_input_tokens_sum{{{sel}}}" + _RATE + "))"
    " / sum by ({by}) (rate(llm_request_input_tokens_count{{{sel}}}" + _RATE + "))"
)


@dataclass(frozen=True)
class BudgetGauge:
    """What a budget gauge needs from the budget file: which ledger series, and its two thresholds."""

    name: str
    limit: float
    warn_at: float  # fraction of the limit, e.g. 0.8
    usd: bool  # limit in US dollars rather than tokens
    window: str


def budget_gauges(spec: BudgetFile) -> list[BudgetGauge]:
    """One gauge per budget, in file order (the order the author grouped them in)."""
    return [
        BudgetGauge(b.name, b.limit.amount, b.warn_at, b.limit.unit == "usd", b.window) for b in spec.budgets
    ]


def datasource_yaml(header: str, prometheus_url: str = "http://prometheus:9090") -> str:
    """Datasource provisioning with a fixed uid, the uid every generated panel refers to."""
    return (
        f"# {header}\n"
        "apiVersion: 1\n"
        "datasources:\n"
        "  - name: Prometheus\n"
        "    type: prometheus\n"
        f"    uid: {DATASOURCE_UID}\n"
        "    access: proxy\n"
        f"    url: {prometheus_url}\n"
        "    isDefault: true\n"
        "    editable: false\n"
        "    jsonData:\n"
        "      timeInterval: 15s\n"
    )


def dashboard_provider_yaml(header: str) -> str:
    """Dashboard provider: files under DASHBOARDS_DIR, not editable in the UI (they are generated)."""
    return (
        f"# {header}\n"
        "apiVersion: 1\n"
        "providers:\n"
        "  - name: otel-tokens\n"
        "    folder: otel-tokens\n"
        "    type: file\n"
        "    disableDeletion: true\n"
        "    allowUiUpdates: false\n"
        "    updateIntervalSeconds: 30\n"
        "    options:\n"
        f"      path: {DASHBOARDS_DIR}\n"
        "      foldersFromFilesStructure: false\n"
    )


def dashboard_json(dashboard: JsonDict) -> str:
    """Canonical text of a dashboard: what is committed and compared byte for byte."""
    return json.dumps(dashboard, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _dashboard(uid: str, title: str, description: str, layout: Layout, timezone: str) -> JsonDict:
    return {
        "annotations": {"list": []},
        "description": description,
        "editable": False,
        "graphTooltip": 1,
        "links": [
            {
                "asDropdown": False,
                "icon": "dashboard",
                "includeVars": True,
                "keepTime": True,
                "tags": ["otel-tokens"],
                "targetBlank": False,
                "title": "otel-tokens",
                "tooltip": "",
                "type": "dashboards",
            }
        ],
        "panels": layout.panels,
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": _TAGS,
        "templating": {"list": []},
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": timezone,
        "title": title,
        "uid": uid,
        "version": 1,
    }


def overview_dashboard(
    budgets: Sequence[BudgetGauge], *, description: str, timezone: str = "browser"
) -> JsonDict:
    """Fleet-wide view: spend, budgets, efficiency of the agents, and the collector's own health."""
    layout = Layout()
    _spend_row(layout)
    _budget_row(layout, budgets)
    _efficiency_row(layout, by="agent", sel="")
    _collector_row(layout)
    return _dashboard(OVERVIEW_DASHBOARD_UID, "otel-tokens — overview", description, layout, timezone)


def agent_dashboard(*, description: str, timezone: str = "browser") -> JsonDict:
    """One agent at a time, narrowed by task and model through template variables."""
    sel = 'agent=~"$agent", task=~"$task", model=~"$model"'
    layout = Layout()
    layout.row("Spend")
    layout.add(_tokens_by("token_type", sel), 12, 8)
    layout.add(_cost_by("task", sel), 12, 8)
    layout.add(_cost_by("model", sel), 12, 8)
    layout.add(_requests_by_status(sel), 12, 8)
    _efficiency_row(layout, by="task", sel=sel)
    layout.row("Task instances")
    layout.add(_input_tokens_p95(sel), 12, 8)
    layout.add(_task_instances(), 12, 8)
    layout.add(_tokens_per_completed_task(), 12, 8)
    dashboard = _dashboard(AGENT_DASHBOARD_UID, "otel-tokens — agent", description, layout, timezone)
    dashboard["templating"] = {"list": _agent_variables()}
    return dashboard


def _agent_variables() -> list[JsonDict]:
    # Each variable narrows the next, so the task list only shows this agent's tasks.
    return [
        query_variable("agent", "Agent", "label_values(llm_tokens_total, agent)", multi=False),
        query_variable("task", "Task", 'label_values(llm_tokens_total{agent=~"$agent"}, task)', multi=True),
        query_variable(
            "model",
            "Model",
            'label_values(llm_tokens_total{agent=~"$agent", task=~"$task"}, model)',
            multi=True,
        ),
    ]


def _spend_row(layout: Layout) -> None:
    layout.row("Spend")
    burn = Query("sum(rate(llm_tokens_total" + _RATE + "))")
    layout.add(stat("Burn rate (tokens/s)", "All token types, all agents.", burn, "short"), 6, 5)
    cost = Query("sum(rate(llm_cost_usd_total" + _RATE + ")) * 3600")
    layout.add(stat("Cost per hour", "Spend rate in US dollars per hour.", cost, "currencyUSD"), 6, 5)
    spent = Query("sum(increase(llm_cost_usd_total[$__range]))")
    layout.add(
        stat("Cost in range", "Dollars spent over the dashboard time range.", spent, "currencyUSD"), 6, 5
    )
    errors = Query(
        'sum(rate(llm_requests_total{status="error"}' + _RATE + "))"
        " / sum(rate(llm_requests_total" + _RATE + "))"
    )
    layout.add(stat("Error ratio", "Share of LLM requests that failed.", errors, "percentunit"), 6, 5)
    layout.add(_tokens_by("token_type", ""), 12, 8)
    layout.add(_cost_by("agent", ""), 12, 8)
    layout.add(_cost_by("model", ""), 12, 8)
    layout.add(_requests_by_status(""), 12, 8)
    top = Query(
        "topk(10, sum by (agent, task) (increase(llm_cost_usd_total[$__range])))",
        "{{agent}} / {{task}}",
        True,
    )
    layout.add(
        bar_ranking("Top spenders", "The ten agent/task pairs that cost most in range.", top, "currencyUSD"),
        12,
        8,
    )


def _tokens_by(label: str, sel: str) -> JsonDict:
    q = Query(f"sum by ({label}) (rate(llm_tokens_total{{{sel}}}" + _RATE + "))", f"{{{{{label}}}}}")
    return timeseries(f"Tokens/s by {label}", "Token burn rate; token types are disjoint.", [q], stacked=True)


def _cost_by(label: str, sel: str) -> JsonDict:
    q = Query(f"sum by ({label}) (rate(llm_cost_usd_total{{{sel}}}" + _RATE + ")) * 3600", f"{{{{{label}}}}}")
    return timeseries(f"Cost by {label}", "US dollars per hour.", [q], "currencyUSD", stacked=True)


def _requests_by_status(sel: str) -> JsonDict:
    q = Query(f"sum by (status) (rate(llm_requests_total{{{sel}}}" + _RATE + "))", "{{status}}")
    return timeseries("Requests by status", "LLM requests per second.", [q], "reqps", stacked=True)


def _budget_row(layout: Layout, budgets: Sequence[BudgetGauge]) -> None:
    layout.row("Budgets")
    for budget in budgets:
        layout.add(_budget_gauge(budget), 6, 6)
    ratio = Query("max by (budget, window) (llm_budget_usage_ratio)", "{{budget}} ({{window}})")
    layout.add(
        timeseries(
            "Budget usage",
            "Exact share of each budget used, from the collector's ledger.",
            [ratio],
            "percentunit",
        ),
        12,
        8,
    )
    layout.add(
        timeseries(
            "Forecast: use at window end",
            "Exact use now plus the last hour's burn rate until the window ends, as a share of the limit; "
            "above 100% the budget runs out before the window does.",
            [Query(_FORECAST, "{{budget}}")],
            "percentunit",
        ),
        12,
        8,
    )


def _budget_gauge(budget: BudgetGauge) -> JsonDict:
    steps = thresholds((None, "green"), (budget.limit * budget.warn_at, "orange"), (budget.limit, "red"))
    query = Query(f'max(llm_budget_used{{budget="{budget.name}"}})', budget.name, instant=True)
    text = f"Used of {budget.limit:g} per {budget.window}; warns at {budget.warn_at:.0%}."
    unit = "currencyUSD" if budget.usd else "short"
    # Headroom past the limit so an overspent budget still shows how far over it is.
    return gauge(budget.name, text, query, unit=unit, maximum=budget.limit * 1.25, steps=steps)


def _efficiency_row(layout: Layout, *, by: str, sel: str) -> None:
    layout.row("Efficiency")
    cache = Query(_CACHE_RATIO.format(by=by, more=", " + sel if sel else ""), f"{{{{{by}}}}}")
    layout.add(
        timeseries(
            "Prompt-cache hit ratio",
            "cache_read / (input + cache_read + cache_write): the share of prompt tokens served from cache.",
            [cache],
            "percentunit",
        ),
        12,
        8,
    )
    avg = Query(_AVG_INPUT.format(by=by, sel=sel), f"{{{{{by}}}}}")
    layout.add(
        timeseries(
            "Context growth",
            "Average input tokens per request; a steady climb means the context is never trimmed.",
            [avg],
        ),
        12,
        8,
    )


def _input_tokens_p95(sel: str) -> JsonDict:
    q = Query(
        f"histogram_quantile(0.95, sum by (le, task) (rate(llm_request_input_tokens_bucket{{{sel}}}"
        + _RATE
        + ")))",
        "p95 {{task}}",
    )
    return timeseries("Input tokens per request (p95)", "Large prompts by task.", [q])


def _task_instances() -> JsonDict:
    q = Query(
        'topk(10, llm_task_instance_tokens{agent=~"$agent", task=~"$task"})', "{{task}} {{task_id}}", True
    )
    text = "Tokens of the largest running or offending task instances, from the collector's ledger."
    return bar_ranking("Largest task instances", text, q, "short")


def _tokens_per_completed_task() -> JsonDict:
    # llm_task_tokens has no model label: narrowing by $model would hide every series.
    sel = 'agent=~"$agent", task=~"$task"'
    q = Query(
        f"sum by (task) (rate(llm_task_tokens_sum{{{sel}}}" + _RATE + "))"
        f" / sum by (task) (rate(llm_task_tokens_count{{{sel}}}" + _RATE + "))",
        "{{task}}",
    )
    text = "Average tokens a task instance used, all its calls included, over the tasks that completed."
    return timeseries("Tokens per completed task", text, [q])


def _collector_row(layout: Layout) -> None:
    layout.row("Collector")
    spans = [
        Query("sum(rate(otel_tokens_spans_received_total" + _RATE + "))", "received"),
        Query(
            "sum by (reason) (rate(otel_tokens_spans_rejected_total" + _RATE + "))", "rejected: {{reason}}"
        ),
        Query("sum(rate(otel_tokens_duplicates_dropped_total" + _RATE + "))", "duplicates dropped"),
    ]
    layout.add(
        timeseries("Spans", "Spans received, rejected and deduplicated per second.", spans, "ops"), 8, 8
    )
    overflow = Query(
        "sum by (metric) (increase(otel_tokens_series_overflow_total[$__range]))", "{{metric}}", True
    )
    text = "Records folded into the overflow series because a metric hit its series limit."
    layout.add(bar_ranking("Series overflow", text, overflow, "short"), 8, 8)
    unpriced = Query(
        "sum by (provider, model) (increase(otel_tokens_unpriced_records_total[$__range]))",
        "{{provider}} {{model}}",
        True,
    )
    text = "Calls whose model has no known price: their cost is missing from every cost panel."
    layout.add(bar_ranking("Unpriced models", text, unpriced, "short"), 8, 8)

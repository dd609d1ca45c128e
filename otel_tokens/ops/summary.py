"""`/api/v1/summary`: what the status page and `otel-tokens status` read from a collector.

One JSON document, built from the collector's own registry (the very samples `/metrics` serves)
and its budget ledger: live totals by token type and cost, the top spenders by agent and by model,
every budget's outlook (burn rate, projection, time left) and the alerts the ledger implies now.

The burn rate is the ledger's use over each budget's trailing rate window (the forecast rule's
`lookback`, default 1h) divided by the part of it the ledger has counted — with a data dir, across
restarts (`outlook.trailing_rate`); under `MIN_RATE_SECONDS` of it there is no rate yet. Prometheus
gives its rate over the last hour (`otel-tokens status --prometheus`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry

from otel_tokens.budgets.ledger import BudgetLedger, BudgetStatus, RecentUse
from otel_tokens.budgets.spec import Budget
from otel_tokens.ops.outlook import Outlook, outlook, trailing_rate
from otel_tokens.ops.usage import TASK_SERIES, USAGE_SERIES, Sample, cache_hit_ratio, top_rows, usage_table

__all__ = ["SUMMARY_PATH", "TOP_N", "registry_samples", "summary"]

#: Where the collector serves this document.
SUMMARY_PATH = "/api/v1/summary"
TOP_N = 5


def registry_samples(registry: CollectorRegistry, names: Iterable[str]) -> dict[str, list[Sample]]:
    """The registry's current samples of `names` — what a scrape of /metrics would parse to."""
    wanted = set(names)
    found: dict[str, list[Sample]] = {name: [] for name in wanted}
    for family in registry.collect():
        for s in family.samples:
            if s.name in wanted:
                found[s.name].append(Sample(dict(s.labels), float(s.value)))
    return found


def summary(
    registry: CollectorRegistry, ledger: BudgetLedger | None, *, started_at: float, now: float
) -> dict[str, Any]:
    """The whole document; `budgets` and `alerts` are null when the collector tracks no budgets."""
    samples = registry_samples(registry, (*USAGE_SERIES, *TASK_SERIES))
    by_agent = usage_table(samples, "agent")
    by_model = usage_table(samples, "model")
    totals = by_agent.total.to_dict() | {"cache_hit_ratio": cache_hit_ratio(by_agent.total)}
    document: dict[str, Any] = {
        "generated_at": now,
        "started_at": started_at,
        "totals": totals,
        "top_agents": [_top(row, share) for row, share in top_rows(by_agent, TOP_N)],
        "top_models": [_top(row, share) for row, share in top_rows(by_model, TOP_N)],
        "budgets": None,
        "alerts": None,
    }
    if ledger is not None:
        specs = ledger.budget_file.budgets
        statuses, recent = ledger.status(), ledger.recent_use()
        outlooks = [_outlook(s, r, now) for s, r in zip(statuses, recent, strict=True)]
        document["budgets"] = [o.to_dict() for o in outlooks]
        document["alerts"] = _alerts(outlooks, specs, ledger)
    return document


def _top(row: Any, share: float) -> dict[str, Any]:
    return {"key": row.key, "cost_usd": row.cost, "tokens": row.total_tokens, "share": share}


def _outlook(status: BudgetStatus, recent: RecentUse, now: float) -> Outlook:
    """The standing at the burn rate over the trailing window (None: not enough data yet)."""
    rate = trailing_rate(recent.amount, recent.counted_seconds)
    return outlook(dataclasses.asdict(status), rate, now)


def _alerts(outlooks: list[Outlook], specs: list[Budget], ledger: BudgetLedger) -> list[dict[str, Any]]:
    """The alerts whose conditions hold now by the exact ledger (BudgetWarning and BudgetExceeded
    as the generated rules define them, RunawayTask per task instance) — before any `for:` delay
    and whether or not Prometheus and Alertmanager are running."""
    alerts: list[dict[str, Any]] = []
    for o, spec in zip(outlooks, specs, strict=True):
        if o.state == "exceeded":
            alerts.append(_alert("BudgetExceeded", spec.severity, o.name, f"{o.ratio:.0%} of its limit used"))
        elif o.state == "warning":
            alerts.append(
                _alert("BudgetWarning", spec.warn_severity, o.name, f"{o.ratio:.0%} of its limit used")
            )
        limit = spec.per_task_instance
        if limit is None:
            continue
        for task_id, agent, task, tokens in ledger.task_instances(spec.name):
            if tokens >= limit.runaway_factor * limit.tokens:
                what = f"task {task} ({agent}) instance {task_id}: {tokens:,.0f} tokens"
                alerts.append(_alert("RunawayTask", limit.severity, o.name, what))
    return alerts


def _alert(name: str, severity: str, budget: str, summary: str) -> dict[str, Any]:
    return {"alert": name, "severity": severity, "budget": budget, "summary": summary}

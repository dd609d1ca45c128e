"""Stop orders as the guard reads them: firing alerts that stop a task instance or pause agents.

The collector turns Alertmanager's webhook into orders (`otel_tokens/collector/stop_orders.py`)
and serves them with the budget status; a state source (`CollectorBudgetState`) hands them to the
guard, which checks each call against them before anything else (`find_stop`):

- `kill_agent_task`: the call's `task_id` is the order's → stopped; other instances go on;
- `pause_noncritical`: the call matches the order's scope (the alert's agent/task/user/model/
  provider labels) and its agent is not critical (`attribute(critical=True)`, or listed in the
  budget file's `guard.critical_agents`) → stopped.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from otel_tokens import metric_names as mn
from otel_tokens import semconv as sc
from otel_tokens.guard.errors import TaskStopped
from otel_tokens.metric_names import UNKNOWN
from otel_tokens.record import Attribution

__all__ = ["KILL_AGENT_TASK", "PAUSE_NONCRITICAL", "StopDecision", "StopOrder", "find_stop", "parse_orders"]

KILL_AGENT_TASK = mn.KILL_AGENT_TASK
PAUSE_NONCRITICAL = mn.PAUSE_NONCRITICAL
#: The `otel_tokens.guard.outcome` of a stopped call (and the `action` label it is counted under).
STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class StopOrder:
    kind: str
    alert: str
    since: str
    task_id: str | None = None
    scope: Mapping[str, str] = field(default_factory=dict)
    budget: str | None = None
    summary: str = ""

    def error(self, attribution: Attribution) -> TaskStopped:
        if self.kind == KILL_AGENT_TASK:
            key = f"task_id={attribution.task_id}"
        else:
            key = f"agent={attribution.agent or UNKNOWN}"
        return TaskStopped(
            key=key, reason=self.kind, detail=self.summary, budget=self.budget, alert=self.alert,
            agent=attribution.agent, since=self.since,
        )  # fmt: skip


def parse_orders(items: Any) -> tuple[StopOrder, ...]:
    """Orders from the collector's JSON; anything malformed is skipped (a newer collector may add
    kinds this guard does not know)."""
    orders: list[StopOrder] = []
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, dict) or item.get("kind") not in (KILL_AGENT_TASK, PAUSE_NONCRITICAL):
            continue
        raw_scope = item.get("scope")
        scope: dict[Any, Any] = raw_scope if isinstance(raw_scope, dict) else {}
        orders.append(
            StopOrder(
                kind=item["kind"],
                alert=str(item.get("alert", "")),
                since=str(item.get("since", "")),
                task_id=item.get("task_id") if isinstance(item.get("task_id"), str) else None,
                scope={str(k): str(v) for k, v in scope.items()},
                budget=item.get("budget") if isinstance(item.get("budget"), str) else None,
                summary=str(item.get("summary", "")),
            )
        )
    return tuple(orders)


def _labels(attribution: Attribution, model: str, provider: str) -> dict[str, str]:
    a = attribution
    return {
        mn.AGENT: a.agent or UNKNOWN, mn.TASK: a.task or UNKNOWN, mn.USER: a.user or UNKNOWN,
        mn.MODEL: model, mn.PROVIDER: provider or UNKNOWN,
    }  # fmt: skip


def find_stop(
    orders: Iterable[StopOrder],
    attribution: Attribution,
    *,
    model: str,
    provider: str,
    critical: bool,
    critical_agents: Collection[str],
) -> StopOrder | None:
    """The first order that stops this call, or None."""
    labels: dict[str, str] | None = None
    for order in orders:
        if order.kind == KILL_AGENT_TASK:
            if attribution.task_id is not None and order.task_id == attribution.task_id:
                return order
            continue
        if critical or (attribution.agent is not None and attribution.agent in critical_agents):
            continue
        labels = labels or _labels(attribution, model, provider)
        if all(labels.get(k) == v for k, v in order.scope.items()):
            return order
    return None


@dataclass(frozen=True, slots=True)
class StopDecision:
    """The span event of a stopped call (same event name and keys as a budget decision)."""

    order: StopOrder

    @property
    def outcome(self) -> str:
        return STOPPED

    def attributes(self) -> dict[str, str | float]:
        attributes: dict[str, str | float] = {
            sc.OTEL_TOKENS_GUARD_ACTION: self.order.kind, sc.OTEL_TOKENS_GUARD_OUTCOME: STOPPED,
            sc.OTEL_TOKENS_GUARD_BUDGET: self.order.budget or UNKNOWN,
            sc.OTEL_TOKENS_GUARD_SCOPE: f"alert={self.order.alert}",
        }  # fmt: skip
        return attributes

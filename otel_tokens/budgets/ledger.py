"""The exact budget ledger: what each budget has used in its window, from every counted record.

PromQL's `increase()` extrapolates (DESIGN.md), so budget alerts and the in-process guard read
these figures instead. The ledger subscribes to the pipeline after dedupe, counts each record into
every budget whose scope matches, and exports gauges for Prometheus:

- `llm_budget_used{budget,window,unit}`, `llm_budget_limit{budget,window,unit}`,
  `llm_budget_usage_ratio{budget,window}` (used / limit);
- `llm_budget_window_remaining_seconds{budget,window}` (to the calendar period's end; a rolling
  window's length) and the counter `llm_budget_consumed_total{budget,unit}` (never rolls off), which
  the spike and forecast rules take rates of — exact scope and token-type filtering included;
- `llm_task_instance_tokens{budget,agent,task,task_id}` for the top-N task instances by tokens, and
  `llm_task_instance_limit{budget}`: instance ids stay off every other metric.

A call counts when the collector learns of it (the injected clock), not at the span's own
timestamp: clock skew between agents cannot move use into another window, and a late span cannot
reopen a closed calendar period.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Literal, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from otel_tokens.budgets.instances import InstanceTable
from otel_tokens.budgets.spec import Budget, BudgetFile
from otel_tokens.budgets.windows import CalendarWindow, RollingWindow, Window
from otel_tokens.record import UsageRecord

__all__ = [
    "BudgetLedger",
    "BudgetLedgerCollector",
    "BudgetStatus",
    "State",
    "budget_window",
    "instance_amount",
    "record_amount",
    "record_labels",
    "scope_matches",
]

State = Literal["ok", "warning", "exceeded"]
UNKNOWN = "unknown"


@dataclass(frozen=True)
class BudgetStatus:
    """One budget's standing now; what the guard, `/api/v1/budgets` and the CLI read."""

    name: str
    window: str
    unit: str
    used: float
    limit: float
    ratio: float
    warn_at: float
    severity: str
    action: str
    downgrade_to: str | None
    state: State
    remaining_seconds: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class _Pipeline(Protocol):
    registry: CollectorRegistry

    def add_listener(self, fn: Callable[[UsageRecord], None]) -> None: ...


def record_labels(record: UsageRecord) -> dict[str, str]:
    """The values scopes match against; unattributed calls are `unknown`, as on the metrics."""
    a = record.attribution
    return {
        "agent": a.agent or UNKNOWN,
        "task": a.task or UNKNOWN,
        "user": a.user or UNKNOWN,
        "model": record.model,
        "provider": record.provider or UNKNOWN,
    }


# What a budget counts of a record. The in-process guard (`otel_tokens.guard`) uses the same four
# functions, so a call is matched, measured and windowed alike in the agent and in the collector.
def scope_matches(matchers: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """True when every key the budget's scope sets (`Scope.matchers()`) equals the call's label."""
    return all(labels[key] == value for key, value in matchers.items())


def record_amount(spec: Budget, record: UsageRecord) -> float:
    """Tokens (restricted to `token_types`, from the disjoint split) or USD of one record."""
    limit = spec.limit
    if limit.unit == "usd":
        return record.cost_usd or 0.0
    counts = record.tokens.disjoint()
    return float(sum(counts[t] for t in limit.token_types) if limit.token_types else sum(counts.values()))


def instance_amount(spec: Budget, amount: float, record: UsageRecord) -> float:
    """Tokens a record adds to its task instance (per-instance limits are in tokens even when the
    budget's limit is in USD)."""
    return amount if spec.limit.unit == "tokens" else float(record.tokens.total)


def budget_window(budget_file: BudgetFile, spec: Budget) -> Window:
    """A fresh window for `spec`: a calendar period in the file's zone, or a rolling duration."""
    if spec.is_calendar:
        return CalendarWindow(spec.window, budget_file.zone)
    return RollingWindow(spec.window_seconds)


class _BudgetAccount:
    """One budget's window, lifetime total and task instances. Not locked: the ledger locks."""

    def __init__(self, budget: BudgetFile, spec: Budget, top_n: int, idle_seconds: float) -> None:
        self.spec = spec
        self.matchers = spec.scope.matchers()
        self.window: Window = budget_window(budget, spec)
        self.consumed = 0.0
        self.instances = (
            InstanceTable(top_n=top_n, idle_seconds=idle_seconds) if spec.per_task_instance else None
        )

    def matches(self, labels: dict[str, str]) -> bool:
        return scope_matches(self.matchers, labels)

    def amount(self, record: UsageRecord) -> float:
        return record_amount(self.spec, record)

    def observe(self, record: UsageRecord, labels: dict[str, str], now: float) -> None:
        amount = self.amount(record)
        self.window.add(amount, now)
        self.consumed += amount
        task_id = record.attribution.task_id
        if self.instances is not None and task_id:
            tokens = instance_amount(self.spec, amount, record)
            self.instances.add(task_id, labels["agent"], labels["task"], tokens, now)

    def status(self, now: float) -> BudgetStatus:
        spec = self.spec
        used, limit = self.window.used(now), spec.limit.amount
        ratio = used / limit
        state: State = "exceeded" if ratio >= 1 else "warning" if ratio >= spec.warn_at else "ok"
        return BudgetStatus(
            name=spec.name, window=spec.window, unit=spec.limit.unit, used=used, limit=limit,
            ratio=ratio, warn_at=spec.warn_at, severity=spec.severity, action=spec.action,
            downgrade_to=spec.downgrade_to, state=state, remaining_seconds=self.window.remaining_seconds(now),
        )  # fmt: skip


class BudgetLedger:
    """Exact per-window use of every budget in a budget file. Thread-safe; clock injected."""

    def __init__(
        self,
        budget_file: BudgetFile,
        clock: Callable[[], float] = time.time,
        *,
        instances_top_n: int = 20,
        instance_idle_seconds: float = 3600.0,
    ) -> None:
        self.budget_file = budget_file
        self._clock = clock
        self._lock = threading.Lock()
        self._accounts = [
            _BudgetAccount(budget_file, b, instances_top_n, instance_idle_seconds)
            for b in budget_file.budgets
        ]

    def observe(self, record: UsageRecord) -> None:
        """Count one deduplicated record into every budget whose scope it matches."""
        labels = record_labels(record)
        with self._lock:
            now = self._clock()
            for account in self._accounts:
                if account.matches(labels):
                    account.observe(record, labels, now)

    def status(self) -> list[BudgetStatus]:
        """Every budget's standing, in file order."""
        with self._lock:
            now = self._clock()
            return [account.status(now) for account in self._accounts]

    def task_instances(self, budget: str) -> list[tuple[str, str, str, float]]:
        """The top task instances of `budget` as (task_id, agent, task, tokens), largest first."""
        with self._lock:
            now = self._clock()
            for account in self._accounts:
                if account.spec.name == budget:
                    return account.instances.top(now) if account.instances else []
        raise KeyError(f"no budget named {budget!r}")

    def attach(self, pipeline: _Pipeline) -> BudgetLedgerCollector:
        """Count every record the pipeline counts and export the gauges on its registry."""
        pipeline.add_listener(self.observe)
        collector = BudgetLedgerCollector(self)
        pipeline.registry.register(collector)
        return collector

    def _snapshot(self) -> list[tuple[BudgetStatus, float, Budget, list[tuple[str, str, str, float]]]]:
        with self._lock:
            now = self._clock()
            return [
                (a.status(now), a.consumed, a.spec, a.instances.top(now) if a.instances else [])
                for a in self._accounts
            ]


class BudgetLedgerCollector(Collector):
    """prometheus_client collector: fresh metric families from a ledger snapshot on every scrape."""

    def __init__(self, ledger: BudgetLedger) -> None:
        self._ledger = ledger

    def describe(self) -> list[Metric]:
        # Families without samples: registration checks names without taking a snapshot.
        return list(self._families().values())

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        for status, consumed, spec, instances in self._ledger._snapshot():
            _add_budget(families, status, consumed, spec, instances)
        yield from families.values()

    @staticmethod
    def _families() -> dict[str, Metric]:
        g, c = GaugeMetricFamily, CounterMetricFamily
        bwu, bw = ["budget", "window", "unit"], ["budget", "window"]
        return {
            "used": g("llm_budget_used", "Exact use of the budget in its current window.", labels=bwu),
            "limit": g("llm_budget_limit", "The budget's limit per window.", labels=bwu),
            "ratio": g("llm_budget_usage_ratio", "used / limit (1 = exhausted).", labels=bw),
            "remaining": g(
                "llm_budget_window_remaining_seconds",
                "Seconds to the calendar period's end; a rolling window's length.",
                labels=bw,
            ),
            "consumed": c(
                "llm_budget_consumed",
                "Everything ever counted toward the budget (no roll-off).",
                labels=["budget", "unit"],
            ),
            "instance": g(
                "llm_task_instance_tokens",
                "Tokens of the top task instances of a budget.",
                labels=["budget", "agent", "task", "task_id"],
            ),
            "instance_limit": g(
                "llm_task_instance_limit", "Per-task-instance token limit of a budget.", labels=["budget"]
            ),
        }


def _add_budget(
    families: dict[str, Metric],
    status: BudgetStatus,
    consumed: float,
    spec: Budget,
    instances: list[tuple[str, str, str, float]],
) -> None:
    budget, window, unit = status.name, status.window, status.unit
    _sample(families["used"], [budget, window, unit], status.used)
    _sample(families["limit"], [budget, window, unit], status.limit)
    _sample(families["ratio"], [budget, window], status.ratio)
    _sample(families["remaining"], [budget, window], status.remaining_seconds)
    _sample(families["consumed"], [budget, unit], consumed)
    if spec.per_task_instance is not None:
        _sample(families["instance_limit"], [budget], float(spec.per_task_instance.tokens))
        for task_id, agent, task, tokens in instances:
            _sample(families["instance"], [budget, agent, task, task_id], tokens)


def _sample(family: Metric, labels: list[str], value: float) -> None:
    family.add_metric(labels, value)  # type: ignore[attr-defined]

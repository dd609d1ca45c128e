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

Besides its window, each budget keeps a trailing window of its use over the forecast rule's
`lookback` (default 1h) and since when this ledger has counted without a gap in its state (start-up,
or the oldest time a restored data dir kept): the status page's burn rate (`recent_use`) is a rate
over the last `lookback`, not an average over the collector's uptime.

A call counts when the collector learns of it (the injected clock), not at the span's own
timestamp: clock skew between agents cannot move use into another window, and a late span cannot
reopen a closed calendar period.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from otel_tokens import metric_names as names
from otel_tokens.budgets.reservations import HoldBook, ReservationError
from otel_tokens.budgets.spec import Budget, BudgetFile, parse_duration
from otel_tokens.budgets.windows import CalendarWindow, RollingWindow, Window
from otel_tokens.metric_names import TOKEN_TYPES, UNKNOWN
from otel_tokens.record import UsageRecord
from otel_tokens.task_instances import TaskInstanceTable, TaskTotals

__all__ = [
    "BudgetLedger",
    "BudgetLedgerCollector",
    "BudgetStanding",
    "BudgetStatus",
    "RecentUse",
    "State",
    "budget_window",
    "instance_amount",
    "record_amount",
    "record_labels",
    "scope_matches",
    "token_type_positions",
]

State = Literal["ok", "warning", "exceeded"]


@dataclass(frozen=True)
class RecentUse:
    """A budget's use over its trailing rate window (the forecast rule's `lookback`)."""

    #: used in the last `lookback_seconds` (per-minute buckets: may include up to a minute before)
    amount: float
    lookback_seconds: float
    #: how much of that window this ledger has counted: min(lookback, now - counting since)
    counted_seconds: float


#: How many task instances a per-instance budget remembers at most (the top-N come from these).
_MAX_TRACKED_INSTANCES = 10_000


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
    #: what reservations of calls in flight hold against the budget, over every guard
    reserved: float = 0.0


@dataclass(frozen=True)
class BudgetStanding:
    """Everything the ledger exports about one budget, read at one instant."""

    status: BudgetStatus
    #: everything ever counted toward the budget (no roll-off)
    consumed: float
    spec: Budget
    #: the top task instances (per-instance budgets only), largest first
    instances: list[TaskTotals]


class _Pipeline(Protocol):
    registry: CollectorRegistry

    def add_listener(self, fn: Callable[[UsageRecord], None]) -> None: ...

    def always_admit(self, values: Mapping[str, Iterable[str]]) -> None: ...


def record_labels(record: UsageRecord) -> dict[str, str]:
    """The values scopes match against; unattributed calls are `unknown`, as on the metrics."""
    a = record.attribution
    return {
        names.AGENT: a.agent or UNKNOWN,
        names.TASK: a.task or UNKNOWN,
        names.USER: a.user or UNKNOWN,
        names.MODEL: record.model,
        names.PROVIDER: record.provider or UNKNOWN,
    }


# What a budget counts of a record. The in-process guard (`otel_tokens.guard`) uses the same
# functions, so a call is matched, measured and windowed alike in the agent and in the collector.
def scope_matches(matchers: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """True when every key the budget's scope sets (`Scope.matchers()`) equals the call's label."""
    return all(labels[key] == value for key, value in matchers.items())


def token_type_positions(spec: Budget) -> list[int] | None:
    """Positions in `TokenCounts.disjoint_counts()` of the token types the limit counts (None: all)."""
    types = spec.limit.token_types
    return [TOKEN_TYPES.index(t) for t in types] if types else None


def record_amount(spec: Budget, record: UsageRecord, positions: list[int] | None) -> float:
    """Tokens (restricted to `token_types`, from the disjoint split; `positions` from
    `token_type_positions(spec)`) or USD of one record."""
    if spec.limit.unit == "usd":
        return record.cost_usd or 0.0
    counts = record.tokens.disjoint_counts()
    return float(sum(counts[i] for i in positions) if positions is not None else sum(counts))


def instance_amount(spec: Budget, amount: float, record: UsageRecord) -> float:
    """Tokens a record adds to its task instance (per-instance limits are in tokens even when the
    budget's limit is in USD)."""
    return amount if spec.limit.unit == "tokens" else float(record.tokens.total)


def _check_instance(instance: Mapping[str, float], amounts: Mapping[str, float]) -> None:
    """A reservation's instance tokens name only budgets it reserves, with finite amounts >= 0."""
    stray = sorted(set(instance) - set(amounts))
    if stray:
        raise ReservationError(f"instance_tokens name budgets the reservation does not: {stray}")
    bad = sorted(name for name, tokens in instance.items() if not 0 <= tokens < float("inf"))
    if bad:
        raise ReservationError(f"instance_tokens must be finite and >= 0; not so for {bad}")


def budget_window(budget_file: BudgetFile, spec: Budget) -> Window:
    """A fresh window for `spec`: a calendar period in the file's zone, or a rolling duration."""
    if spec.is_calendar:
        return CalendarWindow(spec.window, budget_file.zone)
    return RollingWindow(spec.window_seconds)


class _BudgetAccount:
    """One budget's window, lifetime total and task instances. Not locked: the ledger locks."""

    def __init__(
        self, budget: BudgetFile, spec: Budget, top_n: int, idle_seconds: float, since: float
    ) -> None:
        self.spec = spec
        self.matchers = spec.scope.matchers()
        self.window: Window = budget_window(budget, spec)
        self.consumed = 0.0
        #: use over the forecast's lookback, and since when it has been counted (burn rates)
        self.recent = RollingWindow(parse_duration(spec.forecast.lookback))
        self.since = since
        self.top_n = top_n
        self.instances = (
            TaskInstanceTable(max_tracked=max(_MAX_TRACKED_INSTANCES, top_n), idle_seconds=idle_seconds)
            if spec.per_task_instance
            else None
        )
        #: positions in `disjoint_counts()` of the token types the limit counts (None: all)
        self.type_positions = token_type_positions(spec)

    def matches(self, labels: dict[str, str]) -> bool:
        return scope_matches(self.matchers, labels)

    def amount(self, record: UsageRecord) -> float:
        return record_amount(self.spec, record, self.type_positions)

    def observe(self, record: UsageRecord, labels: dict[str, str], now: float) -> None:
        amount = self.amount(record)
        self.window.add(amount, now)
        self.recent.add(amount, now)
        self.since = min(self.since, now)  # a replayed journal reaches back before start-up
        self.consumed += amount
        task_id = record.attribution.task_id
        if self.instances is not None and task_id:
            tokens = instance_amount(self.spec, amount, record)
            self.instances.add(task_id, labels[names.AGENT], labels[names.TASK], tokens, 0.0, now)

    def signature(self) -> str:
        """What the kept use depends on: a budget whose window, scope or unit changed restarts."""
        spec, limit = self.spec, self.spec.limit
        zone = getattr(self.window, "zone", None)
        return repr((spec.window, str(zone), limit.unit, limit.token_types, sorted(self.matchers.items())))

    def state(self) -> dict[str, Any]:
        return {
            "signature": self.signature(),
            "window": self.window.state(),
            "consumed": self.consumed,
            "instances": self.instances.state() if self.instances is not None else [],
            "recent": {"seconds": self.recent.seconds, "since": self.since, **self.recent.state()},
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.window.restore(state["window"])
        self.consumed = float(state["consumed"])
        recent = state.get("recent")  # absent before burn rates had a window; a new lookback restarts
        if recent is not None and float(recent["seconds"]) == self.recent.seconds:
            self.recent.restore(recent)
            self.since = float(recent["since"])
        if self.instances is not None:
            self.instances.restore(state["instances"])

    def recent_use(self, now: float) -> RecentUse:
        seconds = self.recent.seconds
        return RecentUse(self.recent.used(now), seconds, max(0.0, min(seconds, now - self.since)))

    def instance_used(self, task_id: str, now: float) -> float:
        totals = self.instances.get(task_id, now) if self.instances is not None else None
        return totals.tokens if totals is not None else 0.0

    def top_instances(self, now: float) -> list[TaskTotals]:
        return self.instances.top(self.top_n, now) if self.instances is not None else []

    def status(self, now: float, reserved: float = 0.0) -> BudgetStatus:
        spec = self.spec
        used, limit = self.window.used(now), spec.limit.amount
        ratio = used / limit
        state: State = "exceeded" if ratio >= 1 else "warning" if ratio >= spec.warn_at else "ok"
        return BudgetStatus(
            name=spec.name, window=spec.window, unit=spec.limit.unit, used=used, limit=limit,
            ratio=ratio, warn_at=spec.warn_at, severity=spec.severity, action=spec.action,
            downgrade_to=spec.downgrade_to, state=state, remaining_seconds=self.window.remaining_seconds(now),
            reserved=reserved,
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
        since = clock()
        self._accounts = [
            _BudgetAccount(budget_file, b, instances_top_n, instance_idle_seconds, since)
            for b in budget_file.budgets
        ]
        self._holds = HoldBook([b.name for b in budget_file.budgets])

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
            return self._status(self._clock())

    def _status(self, now: float) -> list[BudgetStatus]:
        self._holds.expire(now)
        totals = self._holds.totals
        return [account.status(now, totals[account.spec.name]) for account in self._accounts]

    # --- reservations of calls in flight (`budgets/reservations.py`) ---------------------------
    def reserve(
        self,
        amounts: Mapping[str, float],
        ttl_seconds: float,
        *,
        force: bool = False,
        task_id: str | None = None,
        instance_tokens: Mapping[str, float] | None = None,
    ) -> tuple[str | None, list[BudgetStatus]]:
        """Hold `amounts` (budget name → amount in its unit) for up to `ttl_seconds` when each fits
        its budget (`used + reserved + amount <= limit`), or whatever they do with `force` (a call the
        guard lets through over a `warn` budget). With `task_id`, `instance_tokens` (budget name →
        tokens) must also fit each budget's per-task-instance limit, counting what every process
        has used and holds for that instance. Returns the reservation id (None: refused) and every
        budget's standing after the decision. Raises `ReservationError` for a malformed request."""
        instance = dict(instance_tokens or {}) if task_id is not None else {}
        with self._lock:
            now = self._clock()
            holds = self._holds
            holds.expire(now)
            holds.check(amounts, ttl_seconds)
            _check_instance(instance, amounts)
            fits = force or all(
                a.window.used(now) + holds.totals[a.spec.name] + amounts[a.spec.name] <= a.spec.limit.amount
                and (task_id is None or self._instance_fits(a, task_id, instance.get(a.spec.name, 0.0), now))
                for a in self._accounts
                if a.spec.name in amounts
            )
            hold_id = holds.add(amounts, now + ttl_seconds, task_id, instance) if fits else None
            return hold_id, self._status(now)

    def _instance_fits(self, account: _BudgetAccount, task_id: str, tokens: float, now: float) -> bool:
        limit = account.spec.per_task_instance
        if limit is None or tokens <= 0:
            return True
        held = self._holds.instance_held(account.spec.name, task_id)
        return account.instance_used(task_id, now) + held + tokens <= limit.tokens

    def task_instance(self, task_id: str) -> dict[str, dict[str, float]]:
        """One task instance against every per-task-instance limit: budget name → its counted
        `used` tokens, the `reserved` tokens calls in flight hold, and the `limit`."""
        with self._lock:
            now = self._clock()
            self._holds.expire(now)
            return {
                a.spec.name: {
                    "used": a.instance_used(task_id, now),
                    "reserved": self._holds.instance_held(a.spec.name, task_id),
                    "limit": float(a.spec.per_task_instance.tokens),
                }
                for a in self._accounts
                if a.spec.per_task_instance is not None
            }

    def settle(self, hold_id: str, used: Mapping[str, float] | None, hold_seconds: float) -> bool:
        """The call of reservation `hold_id` ended: hold what it really `used` for `hold_seconds`
        (until its span has surely been counted), or drop it (`used` None: the call failed)."""
        with self._lock:
            now = self._clock()
            self._holds.expire(now)
            return self._holds.settle(hold_id, used, now + hold_seconds)

    def task_instances(self, budget: str) -> list[tuple[str, str, str, float]]:
        """The top task instances of `budget` as (task_id, agent, task, tokens), largest first."""
        with self._lock:
            now = self._clock()
            for account in self._accounts:
                if account.spec.name == budget:
                    return [
                        (t.task_id, t.agent or UNKNOWN, t.task or UNKNOWN, t.tokens)
                        for t in account.top_instances(now)
                    ]
        raise KeyError(f"no budget named {budget!r}")

    def recent_use(self) -> list[RecentUse]:
        """Every budget's use over its trailing rate window, in file order (burn rates)."""
        with self._lock:
            now = self._clock()
            return [a.recent_use(now) for a in self._accounts]

    def standings(self) -> list[BudgetStanding]:
        """Every budget's status, lifetime total and top task instances, read at one instant (what
        the exported gauges show), in file order."""
        with self._lock:
            now = self._clock()
            statuses = self._status(now)
            return [
                BudgetStanding(status, a.consumed, a.spec, a.top_instances(now))
                for status, a in zip(statuses, self._accounts, strict=True)
            ]

    def state(self) -> dict[str, dict[str, Any]]:
        """Each budget's window, lifetime total and task instances, by name, as plain values."""
        with self._lock:
            return {a.spec.name: a.state() for a in self._accounts}

    def restore(self, state: dict[str, dict[str, Any]]) -> list[str]:
        """Take back what `state()` kept; returns the budgets that start afresh instead (new, or
        their window, scope or unit changed since)."""
        fresh: list[str] = []
        with self._lock:
            for account in self._accounts:
                kept = state.get(account.spec.name)
                if kept is not None and kept["signature"] == account.signature():
                    account.restore(kept)
                else:
                    fresh.append(account.spec.name)
        return fresh

    def scope_names(self) -> dict[str, set[str]]:
        """The label values the budgets' scopes name, by label (agent, task, user, model, provider)."""
        named: dict[str, set[str]] = {}
        for account in self._accounts:
            for label, value in account.matchers.items():
                named.setdefault(label, set()).add(value)
        return named

    def attach(self, pipeline: _Pipeline) -> BudgetLedgerCollector:
        """Count every record the pipeline counts and export the gauges on its registry. The names
        the budgets match on always get series of their own in the pipeline's metrics, whatever
        fills the series limit."""
        pipeline.add_listener(self.observe)
        pipeline.always_admit(self.scope_names())
        collector = BudgetLedgerCollector(self)
        pipeline.registry.register(collector)
        return collector


class BudgetLedgerCollector(Collector):
    """prometheus_client collector: fresh metric families from a ledger snapshot on every scrape."""

    def __init__(self, ledger: BudgetLedger) -> None:
        self._ledger = ledger

    def describe(self) -> list[Metric]:
        # Families without samples: registration checks names without taking a snapshot.
        return list(self._families().values())

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        for standing in self._ledger.standings():
            _add_budget(families, standing)
        yield from families.values()

    @staticmethod
    def _families() -> dict[str, Metric]:
        g, c = GaugeMetricFamily, CounterMetricFamily
        bwu, bw = [names.BUDGET, names.WINDOW, names.UNIT], [names.BUDGET, names.WINDOW]
        return {
            "used": g(names.BUDGET_USED, "Exact use of the budget in its current window.", labels=bwu),
            "limit": g(names.BUDGET_LIMIT, "The budget's limit per window.", labels=bwu),
            "ratio": g(names.BUDGET_RATIO, "used / limit (1 = exhausted).", labels=bw),
            "remaining": g(
                names.BUDGET_WINDOW_REMAINING,
                "Seconds to the calendar period's end; a rolling window's length.",
                labels=bw,
            ),
            "consumed": c(
                names.BUDGET_CONSUMED,
                "Everything ever counted toward the budget (no roll-off).",
                labels=[names.BUDGET, names.UNIT],
            ),
            "instance": g(
                names.TASK_INSTANCE_TOKENS,
                "Tokens of the top task instances of a budget.",
                labels=[names.BUDGET, names.AGENT, names.TASK, names.TASK_ID],
            ),
            "instance_limit": g(
                names.TASK_INSTANCE_LIMIT, "Per-task-instance token limit of a budget.", labels=[names.BUDGET]
            ),
        }


def _add_budget(families: dict[str, Metric], standing: BudgetStanding) -> None:
    status, spec = standing.status, standing.spec
    budget, window, unit = status.name, status.window, status.unit
    _sample(families["used"], [budget, window, unit], status.used)
    _sample(families["limit"], [budget, window, unit], status.limit)
    _sample(families["ratio"], [budget, window], status.ratio)
    _sample(families["remaining"], [budget, window], status.remaining_seconds)
    _sample(families["consumed"], [budget, unit], standing.consumed)
    if spec.per_task_instance is not None:
        _sample(families["instance_limit"], [budget], float(spec.per_task_instance.tokens))
        for t in standing.instances:
            _sample(
                families["instance"], [budget, t.agent or UNKNOWN, t.task or UNKNOWN, t.task_id], t.tokens
            )


def _sample(family: Metric, labels: list[str], value: float) -> None:
    family.add_metric(labels, value)  # type: ignore[attr-defined]

"""Records → counters: a pure, keyed, bounded aggregator (the spanmetrics connector's shape).

Owns the metric model, not its exposition: allow-listed dimensions, a series limit per metric with
one counted overflow series, the self-metrics, and bounded per-task-instance totals (a task
instance id is never a label; the budgets code reads `task_instances()` instead). One lock with a
tiny critical section: label tuples are computed before it is taken, and a batch of records is
counted under one acquisition.

Tokens per completed task: a task instance's calls may come from several processes, so only here is
its total known. When its owner signals completion (`complete_tasks`, from the task span), the
instance's accumulated tokens and cost are observed once into the `llm_task_tokens` /
`llm_task_cost_usd` histograms (labels agent, task, status) and the instance is forgotten; the
completion's span is remembered so a re-sent task span is not observed twice. Calls counted after
their task completed still count in every counter, but in no task histogram.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from otel_tokens.record import TOKEN_TYPES, UsageRecord

if TYPE_CHECKING:
    from otel_tokens.record import TaskCompletion

__all__ = [
    "ALLOWED_DIMENSIONS",
    "OVERFLOW",
    "REJECT_REASONS",
    "UNKNOWN",
    "Aggregator",
    "MetricsConfig",
    "Series",
    "Snapshot",
    "TaskSeries",
    "TaskTotals",
    "bounded_reason",
]

UNKNOWN = "unknown"
OVERFLOW = "__overflow__"
MAX_LABEL_LENGTH = 128

#: Metric names other code and Prometheus rules depend on.
TOKENS = "llm_tokens_total"
COST = "llm_cost_usd_total"
REQUESTS = "llm_requests_total"
ESTIMATED = "llm_estimated_tokens_total"
INPUT_HISTOGRAM = "llm_request_input_tokens"
UNPRICED = "otel_tokens_unpriced_records_total"
TASK_TOKENS = "llm_task_tokens"
TASK_COST = "llm_task_cost_usd"
_DIMENSIONED = (TOKENS, COST, REQUESTS, ESTIMATED, INPUT_HISTOGRAM)
#: The task histograms' labels: a task is owned by one agent; status says whether its scope raised.
TASK_LABELS: tuple[str, ...] = ("agent", "task", "status")

#: dimension → where a UsageRecord holds its value (an `operator.attrgetter` path).
_DIMENSION_PATHS: dict[str, str] = {
    "agent": "attribution.agent",
    "task": "attribution.task",
    "model": "model",
    "provider": "provider",
    "user": "attribution.user",
    "session": "attribution.session",
    "workflow": "attribution.workflow",
    "step": "attribution.step",
    "operation": "operation",
}
ALLOWED_DIMENSIONS: frozenset[str] = frozenset(_DIMENSION_PATHS)

#: Fixed set so `otel_tokens_spans_rejected_total{reason}` stays bounded whatever a sender does.
REJECT_REASONS: frozenset[str] = frozenset(
    {
        "invalid_token_value",
        "negative_token_count",
        "token_count_too_large",
        "invalid_cost",
        "internal_error",
        "undecodable_payload",
        "payload_too_large",
        "unsupported_media_type",
        "invalid_payload",
    }
)


def _values_getter(paths: Sequence[str]) -> Callable[[UsageRecord], tuple[str | None, ...]]:
    """One C call fetching every dimension's raw value (attrgetter returns a bare value for one path)."""
    getter: Callable[[UsageRecord], Any] = attrgetter(*paths)
    if len(paths) == 1:
        return lambda record: (getter(record),)
    return getter


def bounded_reason(reason: str) -> str:
    return reason if reason in REJECT_REASONS else "invalid_payload"


@dataclass(frozen=True)
class MetricsConfig:
    """What the aggregator exposes and how much memory the pipeline may use."""

    dimensions: tuple[str, ...] = ("agent", "task", "model", "provider")
    max_series_per_metric: int = 2000
    dedupe_hold_seconds: float = 2.0
    max_held_spans: int = 10_000
    max_remembered_spans: int = 100_000
    #: Input tokens per request: powers of 4 from 256 to 1M, where context growth shows.
    input_token_buckets: tuple[float, ...] = (256, 1024, 4096, 16384, 65536, 262144, 1048576)
    max_task_instances: int = 1000
    #: Tokens per completed task: powers of 4 from 1Ki to 1Gi (a runaway loop shows up top right).
    task_token_buckets: tuple[float, ...] = tuple(float(4**n) for n in range(5, 16))
    #: USD per completed task: 1-3-10 steps from a tenth of a cent to $100.
    task_cost_buckets: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100)

    def validate(self) -> None:
        """Raise ValueError naming the first bad key, what was expected and what was given."""
        unknown = [d for d in self.dimensions if d not in ALLOWED_DIMENSIONS]
        if unknown or len(set(self.dimensions)) != len(self.dimensions):
            raise ValueError(
                f"dimensions: expected distinct names from {sorted(ALLOWED_DIMENSIONS)} "
                f"(task_id is never a label), got {list(self.dimensions)}"
            )
        for key in ("max_series_per_metric", "max_held_spans", "max_remembered_spans", "max_task_instances"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{key}: expected a positive integer, got {value!r}")
        hold = self.dedupe_hold_seconds
        if not isinstance(hold, (int, float)) or not math.isfinite(hold) or hold < 0:
            raise ValueError(f"dedupe_hold_seconds: expected a finite number >= 0, got {hold!r}")
        for key in ("input_token_buckets", "task_token_buckets", "task_cost_buckets"):
            buckets = getattr(self, key)
            if not buckets or any(b <= a for a, b in pairwise(buckets)) or buckets[0] <= 0:
                raise ValueError(f"{key}: expected positive, strictly increasing bounds, got {buckets!r}")


@dataclass(slots=True)
class Series:
    """Every dimensioned metric of one label combination (they share the key and the limit)."""

    tokens: list[int] = field(default_factory=lambda: [0] * len(TOKEN_TYPES))
    cost_usd: float = 0.0
    requests_ok: int = 0
    requests_error: int = 0
    estimated_tokens: int = 0
    input_buckets: list[int] = field(default_factory=list)  # per bucket (not cumulative), +Inf last
    input_sum: float = 0.0

    def copy(self) -> Series:
        return Series(
            list(self.tokens), self.cost_usd, self.requests_ok, self.requests_error,
            self.estimated_tokens, list(self.input_buckets), self.input_sum,
        )  # fmt: skip


@dataclass(slots=True)
class TaskSeries:
    """Both task histograms of one (agent, task, status): per-bucket counts (not cumulative, +Inf
    last) and sums; the count is the number of completed task instances."""

    token_buckets: list[int]
    cost_buckets: list[int]
    token_sum: float = 0.0
    cost_sum: float = 0.0

    def copy(self) -> TaskSeries:
        return TaskSeries(list(self.token_buckets), list(self.cost_buckets), self.token_sum, self.cost_sum)


@dataclass(slots=True)
class TaskTotals:
    """Running totals of one task instance (what per-instance budgets and runaway alerts read)."""

    task_id: str
    agent: str | None
    task: str | None
    tokens: int = 0
    cost_usd: float = 0.0
    requests: int = 0
    last_seen_ns: int = 0


@dataclass
class Snapshot:
    """A consistent copy of every counter, taken under the lock; exposition reads only this."""

    dimensions: tuple[str, ...]
    buckets: tuple[float, ...]
    series: dict[tuple[str, ...], Series]
    spans_received: int
    spans_rejected: dict[str, int]
    duplicates_dropped: int
    series_overflow: dict[str, int]
    unpriced: dict[tuple[str, str], int]
    task_series: dict[tuple[str, ...], TaskSeries] = field(default_factory=dict)
    task_token_buckets: tuple[float, ...] = ()
    task_cost_buckets: tuple[float, ...] = ()


class Aggregator:
    """Keyed counters over UsageRecords; thread-safe; memory bounded by the config."""

    def __init__(self, config: MetricsConfig | None = None) -> None:
        self.config = config if config is not None else MetricsConfig()
        self._label_values = _values_getter([_DIMENSION_PATHS[d] for d in self.config.dimensions])
        self._overflow_key = (OVERFLOW,) * len(self.config.dimensions)
        self._buckets = self.config.input_token_buckets
        self._lock = threading.Lock()
        self._series: dict[tuple[str, ...], Series] = {}
        self._spans_received = 0
        self._rejected: dict[str, int] = {}
        self._duplicates = 0
        self._overflow: dict[str, int] = {}
        self._unpriced: dict[tuple[str, str], int] = {}
        self._tasks: OrderedDict[str, TaskTotals] = OrderedDict()
        self._task_series: dict[tuple[str, ...], TaskSeries] = {}
        #: completions already observed (by task span, else task id): a re-sent span is not re-observed
        self._completed: OrderedDict[object, None] = OrderedDict()

    def key_of(self, record: UsageRecord) -> tuple[str, ...]:
        """The label values of a record, bounded in length; missing attribution is "unknown"."""
        return tuple([(v or UNKNOWN)[:MAX_LABEL_LENGTH] for v in self._label_values(record)])

    def add(self, record: UsageRecord) -> None:
        self.add_many((record,))

    def add_many(self, records: Sequence[UsageRecord], *, duplicates: int = 0) -> None:
        """Count records (already deduplicated); one lock acquisition per batch."""
        key_of = self.key_of
        keyed = [(key_of(r), r) for r in records]
        with self._lock:
            self._duplicates += duplicates
            for key, record in keyed:
                self._add_locked(key, record)

    def add_ingest_stats(self, spans_received: int, rejected: dict[str, int]) -> None:
        with self._lock:
            self._spans_received += spans_received
            for reason, n in rejected.items():
                reason = bounded_reason(reason)
                self._rejected[reason] = self._rejected.get(reason, 0) + n

    def _add_locked(self, key: tuple[str, ...], record: UsageRecord) -> None:
        series = self._series.get(key)
        if series is None:
            series = self._new_series(key)
        counts = record.tokens
        # `TokenCounts.disjoint()` without its dict (this runs per record), in TOKEN_TYPES order;
        # a test pins it to disjoint()
        fresh_input = max(counts.input - counts.cache_read - counts.cache_write, 0)
        visible_output = max(counts.output - counts.reasoning, 0)
        tokens = series.tokens
        tokens[0] += fresh_input
        tokens[1] += visible_output
        tokens[2] += counts.cache_read
        tokens[3] += counts.cache_write
        tokens[4] += counts.reasoning
        total = fresh_input + visible_output + counts.cache_read + counts.cache_write + counts.reasoning
        if record.cost_usd is not None:
            series.cost_usd += record.cost_usd
        else:
            self._count_unpriced(record)
        if record.status == "error":
            series.requests_error += 1
        else:
            series.requests_ok += 1
        if record.estimated:
            series.estimated_tokens += total
        series.input_buckets[bisect_left(self._buckets, counts.input)] += 1
        series.input_sum += counts.input
        if record.attribution.task_id:
            self._add_task_locked(record, total)

    def _new_series(self, key: tuple[str, ...]) -> Series:
        if len(self._series) >= self.config.max_series_per_metric + (self._overflow_key in self._series):
            key = self._overflow_key
            for name in _DIMENSIONED:
                self._overflow[name] = self._overflow.get(name, 0) + 1
            existing = self._series.get(key)
            if existing is not None:
                return existing
        series = Series(input_buckets=[0] * (len(self.config.input_token_buckets) + 1))
        self._series[key] = series
        return series

    def _count_unpriced(self, record: UsageRecord) -> None:
        key = (record.provider[:MAX_LABEL_LENGTH], record.model[:MAX_LABEL_LENGTH])
        if key not in self._unpriced and len(self._unpriced) >= self.config.max_series_per_metric:
            key = (OVERFLOW, OVERFLOW)
            self._overflow[UNPRICED] = self._overflow.get(UNPRICED, 0) + 1
        self._unpriced[key] = self._unpriced.get(key, 0) + 1

    def _add_task_locked(self, record: UsageRecord, tokens: int) -> None:
        task_id = record.attribution.task_id or ""
        totals = self._tasks.get(task_id)
        if totals is None:
            totals = TaskTotals(task_id, record.attribution.agent, record.attribution.task)
            self._tasks[task_id] = totals
            if len(self._tasks) > self.config.max_task_instances:
                self._tasks.popitem(last=False)  # least recently active
        else:
            self._tasks.move_to_end(task_id)
        totals.tokens += tokens
        totals.cost_usd += record.cost_usd or 0.0
        totals.requests += 1
        totals.last_seen_ns = max(totals.last_seen_ns, record.end_time_ns)

    def complete_tasks(self, completions: Iterable[TaskCompletion]) -> int:
        """Observe each completed instance's total into the task histograms, once; returns how many
        were observed. An instance with no counted call is observed as 0 (a task that needed no LLM
        call still completed)."""
        observed = 0
        with self._lock:
            for completion in completions:
                observed += self._complete_locked(completion)
        return observed

    def _complete_locked(self, completion: TaskCompletion) -> int:
        span_id = completion.span_id
        seen: object = (completion.trace_id << 64) | span_id if span_id else completion.task_id
        if seen in self._completed:
            return 0  # the same task span again (an exporter retry)
        self._completed[seen] = None
        if len(self._completed) > self.config.max_task_instances:
            self._completed.popitem(last=False)
        totals = self._tasks.pop(completion.task_id, None)
        agent = completion.agent or (totals.agent if totals is not None else None)
        task = completion.task or (totals.task if totals is not None else None)
        key = tuple([(v or UNKNOWN)[:MAX_LABEL_LENGTH] for v in (agent, task, completion.status)])
        series = self._task_series.get(key)
        if series is None:
            series = self._new_task_series(key)
        tokens = totals.tokens if totals is not None else 0
        cost = totals.cost_usd if totals is not None else 0.0
        series.token_buckets[bisect_left(self.config.task_token_buckets, tokens)] += 1
        series.token_sum += tokens
        series.cost_buckets[bisect_left(self.config.task_cost_buckets, cost)] += 1
        series.cost_sum += cost
        return 1

    def _new_task_series(self, key: tuple[str, ...]) -> TaskSeries:
        overflow_key = (OVERFLOW,) * len(TASK_LABELS)
        if len(self._task_series) >= self.config.max_series_per_metric + (overflow_key in self._task_series):
            key = overflow_key
            for name in (TASK_TOKENS, TASK_COST):
                self._overflow[name] = self._overflow.get(name, 0) + 1
            existing = self._task_series.get(key)
            if existing is not None:
                return existing
        series = TaskSeries(
            [0] * (len(self.config.task_token_buckets) + 1), [0] * (len(self.config.task_cost_buckets) + 1)
        )
        self._task_series[key] = series
        return series

    def task_instances(self) -> list[TaskTotals]:
        """Copies of the per-task-instance totals, most recently active first."""
        with self._lock:
            items = [replace(t) for t in self._tasks.values()]
        items.reverse()
        return items

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(
                dimensions=self.config.dimensions,
                buckets=self.config.input_token_buckets,
                series={k: s.copy() for k, s in self._series.items()},
                spans_received=self._spans_received,
                spans_rejected=dict(self._rejected),
                duplicates_dropped=self._duplicates,
                series_overflow=dict(self._overflow),
                unpriced=dict(self._unpriced),
                task_series={k: s.copy() for k, s in self._task_series.items()},
                task_token_buckets=self.config.task_token_buckets,
                task_cost_buckets=self.config.task_cost_buckets,
            )

    def iter_keys(self) -> Iterable[tuple[str, ...]]:
        with self._lock:
            return list(self._series)

"""Records → counters: the aggregator, the one place that locks the metric model.

What it holds, each kept by a small module of its own: the usage series by allow-listed dimensions,
the unpriced-record counts and the task histograms are each a `KeyedFamily` (keyed.py: series limit,
one counted overflow series, budgeted names always admitted, idle series expiring); the running
per-task-instance totals a `TaskInstanceTable` (task_instances.py, the same table the budget ledger
keeps); the ingest self-metrics an `IngestStats` (ingest_stats.py, locked on its own). Exposition is
exposition.py's, from `snapshot()` copies; this module knows nothing of Prometheus. One lock with a
tiny critical section: label tuples are computed before it is taken (remembered by the records' raw
values, so equal keys are one tuple), and a batch of records is counted under one acquisition, by
one loop — in C (`_otlp_scan.tally`, accelerator.py) when the compiled build is on and the
aggregator was not made with `compiled=False`, with the same arithmetic in the same order.

Tokens per completed task: a task instance's calls may come from several processes, so only here is
its total known. When its owner signals completion (`complete_tasks`, from the task span), the
instance's accumulated tokens and cost are observed once into the `llm_task_tokens` /
`llm_task_cost_usd` histograms (labels agent, task, model — the one with most of its tokens —,
status, verified) and the instance is
forgotten; the completion's span is remembered so a re-sent task span is not observed twice. Calls
counted after their task completed still count in every counter, but in no task histogram.

Cost per verified task: verdicts (`otel_tokens.verify`) arrive by task id, before the completion
(kept, bounded, until it comes) or after it; the pipeline makes a completion without a verdict wait
`verdict_wait_seconds` for one. At observation a task is `verified="passed"` when every verdict
reported for it passed, `failed` when one failed, `none` without any. A verdict for a task already
observed is counted in `otel_tokens_verdicts_late_total` and changes nothing; a re-sent verify span
(the same span) is ignored.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import astuple, dataclass, field
from itertools import pairwise
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from otel_tokens import metric_names as names
from otel_tokens.accelerator import series_tally
from otel_tokens.ingest_stats import IngestCounts, IngestStats
from otel_tokens.keyed import Key, KeyedFamily
from otel_tokens.metric_names import OVERFLOW, TASK_LABELS, UNKNOWN
from otel_tokens.record import TaskCompletion, UsageRecord, Verdict
from otel_tokens.task_instances import TaskInstanceTable

if TYPE_CHECKING:
    from otel_tokens.collector.presum import Presummed

__all__ = [
    "ALLOWED_DIMENSIONS",
    "OVERFLOW",
    "UNKNOWN",
    "Aggregator",
    "Count",
    "MetricsConfig",
    "Series",
    "Snapshot",
    "TaskSeries",
]

MAX_LABEL_LENGTH = 128

#: The metrics each family's overflow counts toward (`otel_tokens_series_overflow_total{metric}`).
_USAGE_METRICS = (names.TOKENS, names.COST, names.REQUESTS, names.ESTIMATED, names.INPUT_HISTOGRAM)
_UNPRICED_METRICS = (names.UNPRICED,)
_TASK_METRICS = (names.TASK_TOKENS, names.TASK_COST)
#: The unpriced-record counter's labels.
UNPRICED_LABELS: tuple[str, ...] = (names.PROVIDER, names.MODEL)

#: dimension → where a UsageRecord holds its value (`operator.attrgetter` paths: the first one set
#: wins). The model is `UsageRecord.model`, read as the fields it is made of: that property is a
#: Python call per record.
_DIMENSION_PATHS: dict[str, tuple[str, ...]] = {
    names.AGENT: ("attribution.agent",),
    names.TASK: ("attribution.task",),
    names.MODEL: ("request_model", "response_model"),
    names.PROVIDER: ("provider",),
    names.USER: ("attribution.user",),
    names.SESSION: ("attribution.session",),
    names.WORKFLOW: ("attribution.workflow",),
    names.STEP: ("attribution.step",),
    names.OPERATION: ("operation",),
}
ALLOWED_DIMENSIONS: frozenset[str] = frozenset(_DIMENSION_PATHS)


def _values_getter(paths: Sequence[str]) -> Callable[[UsageRecord], tuple[str | None, ...]]:
    """One C call fetching every path's raw value (attrgetter returns a bare value for one path)."""
    getter: Callable[[UsageRecord], Any] = attrgetter(*paths)
    if len(paths) == 1:
        return lambda record: (getter(record),)
    return getter


def _key_maker(dimensions: Sequence[str]) -> Callable[[tuple[str | None, ...]], Key]:
    """The key of the raw values `_values_getter` reads for `dimensions`: each dimension's first set
    value (missing: "unknown"), bounded in length."""
    spans, at = [], 0
    for dimension in dimensions:
        width = len(_DIMENSION_PATHS[dimension])
        spans.append((at, at + width))
        at += width
    if at == len(spans):  # one path per dimension (no model among them): the values themselves
        return lambda values: tuple([(v or UNKNOWN)[:MAX_LABEL_LENGTH] for v in values])

    def key(values: tuple[str | None, ...]) -> Key:
        firsts = [next((v for v in values[start:stop] if v), None) for start, stop in spans]
        return tuple([(v or UNKNOWN)[:MAX_LABEL_LENGTH] for v in firsts])

    return key


_VERIFIED = {True: names.VERIFIED_PASSED, False: names.VERIFIED_FAILED}


def _remember(table: OrderedDict[Any, Any], key: object, limit: int, value: object = None) -> None:
    """Add to a bounded table that forgets its oldest entry first."""
    table[key] = value
    if len(table) > limit:
        table.popitem(last=False)


def _plain(value: Any) -> list[Any]:
    """A family value's fields, in order (what its constructor takes back)."""
    return list(astuple(value))


def _with_verified(family: dict[str, Any]) -> dict[str, Any]:
    """Task series kept before the `model` and `verified` labels existed (agent, task, status) get
    `unknown` and `none`."""
    width = len(TASK_LABELS)

    def widen(key: list[str]) -> list[str]:
        if len(key) == width:
            return key
        agent, task, status = key
        return [agent, task, UNKNOWN, status, names.VERIFIED_NONE]

    return {
        **family,
        "entries": [[widen(key), *rest] for key, *rest in family["entries"]],
        "admitted": [widen(key) for key in family["admitted"]],
    }


def _label(value: str | None) -> str:
    return (value or UNKNOWN)[:MAX_LABEL_LENGTH]


def _take(family: KeyedFamily[Any], key: Key, records: int, now: float) -> Any:
    """`get_or_create` for `records` records of one key: a key that is not admitted sends each of
    them to the overflow series, counted one by one, as `add_many` would."""
    entry = family.entries.get(key)
    if entry is not None:
        entry.last_seen = now
        return entry
    entry = family.get_or_create(key, now)
    for _ in range(records - 1):
        if key not in family.entries:
            family.get_or_create(key, now)
    return entry


@dataclass(frozen=True)
class MetricsConfig:
    """What the aggregator exposes and how much memory it may use."""

    dimensions: tuple[str, ...] = names.DEFAULT_DIMENSIONS
    max_series_per_metric: int = 2000
    #: Extra series per metric for label values named by a budget's scope (budgets.yaml): a
    #: cardinality attack that fills the limit never pushes a budgeted agent into `__overflow__`.
    max_budgeted_series_per_metric: int = 1000
    #: A series not updated for this long is dropped from /metrics (0: never), so newcomers are not
    #: starved. A series that comes back restarts from 0; Prometheus' rate() reads that as a reset.
    series_idle_seconds: float = 3600.0
    #: Input tokens per request: powers of 4 from 256 to 1M, where context growth shows.
    input_token_buckets: tuple[float, ...] = (256, 1024, 4096, 16384, 65536, 262144, 1048576)
    max_task_instances: int = 1000
    #: Tokens per completed task: powers of 4 from 1Ki to 1Gi (a runaway loop shows up top right).
    task_token_buckets: tuple[float, ...] = tuple(float(4**n) for n in range(5, 16))
    #: USD per completed task: 1-3-10 steps from a tenth of a cent to $100.
    task_cost_buckets: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100)
    #: How long a completed task without a verdict waits for one (`otel_tokens.verify` called after
    #: the task's scope ended, or in another process) before it is observed as `verified="none"`.
    #: 0 in-process (a verdict given inside the scope always arrives first); the collector uses its
    #: dedupe hold window.
    verdict_wait_seconds: float = 0.0
    #: The resource attribute whose value is the agent of a span that names none, and has no
    #: `invoke_agent` ancestor naming one (None: no such fallback). The SDK's made-up
    #: `unknown_service...` names never count.
    agent_fallback_attribute: str | None = "service.name"

    def validate(self) -> None:
        """Raise ValueError naming the first bad key, what was expected and what was given."""
        unknown = [d for d in self.dimensions if d not in ALLOWED_DIMENSIONS]
        if unknown or len(set(self.dimensions)) != len(self.dimensions):
            raise ValueError(
                f"dimensions: expected distinct names from {sorted(ALLOWED_DIMENSIONS)} "
                f"(task_id is never a label), got {list(self.dimensions)}"
            )
        for key in ("max_series_per_metric", "max_task_instances"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{key}: expected a positive integer, got {value!r}")
        budgeted = self.max_budgeted_series_per_metric
        if not isinstance(budgeted, int) or isinstance(budgeted, bool) or budgeted < 0:
            raise ValueError(f"max_budgeted_series_per_metric: expected an integer >= 0, got {budgeted!r}")
        idle = self.series_idle_seconds
        if (
            isinstance(idle, bool)
            or not isinstance(idle, (int, float))
            or not math.isfinite(idle)
            or idle < 0
        ):
            raise ValueError(f"series_idle_seconds: expected a finite number >= 0 (0: never), got {idle!r}")
        wait = self.verdict_wait_seconds
        if (
            isinstance(wait, bool)
            or not isinstance(wait, (int, float))
            or not math.isfinite(wait)
            or wait < 0
        ):
            raise ValueError(f"verdict_wait_seconds: expected a finite number >= 0, got {wait!r}")
        fallback = self.agent_fallback_attribute
        if fallback is not None and (not isinstance(fallback, str) or not fallback.strip()):
            raise ValueError(
                f"agent_fallback_attribute: expected an attribute name or None, got {fallback!r}"
            )
        for key in ("input_token_buckets", "task_token_buckets", "task_cost_buckets"):
            buckets = getattr(self, key)
            if not buckets or any(b <= a for a, b in pairwise(buckets)) or buckets[0] <= 0:
                raise ValueError(f"{key}: expected positive, strictly increasing bounds, got {buckets!r}")


@dataclass(slots=True)
class Series:
    """Every dimensioned metric of one label combination (they share the key and the limit)."""

    tokens: list[int]  # by token type, in TOKEN_TYPES order
    input_buckets: list[int]  # per bucket (not cumulative), +Inf last
    cost_usd: float = 0.0
    requests_ok: int = 0
    requests_error: int = 0
    estimated_tokens: int = 0
    input_sum: float = 0.0
    last_seen: float = 0.0

    @classmethod
    def empty(cls, n_buckets: int) -> Series:
        return cls([0] * len(names.TOKEN_TYPES), [0] * (n_buckets + 1))

    def copy(self) -> Series:
        return Series(
            list(self.tokens), list(self.input_buckets), self.cost_usd, self.requests_ok,
            self.requests_error, self.estimated_tokens, self.input_sum, self.last_seen,
        )  # fmt: skip


@dataclass(slots=True)
class TaskSeries:
    """Both task histograms of one (agent, task, model, status, verified): per-bucket counts (not
    cumulative, +Inf last) and sums; the count is the number of completed task instances."""

    token_buckets: list[int]
    cost_buckets: list[int]
    token_sum: float = 0.0
    cost_sum: float = 0.0
    last_seen: float = 0.0

    @classmethod
    def empty(cls, n_token_buckets: int, n_cost_buckets: int) -> TaskSeries:
        return cls([0] * (n_token_buckets + 1), [0] * (n_cost_buckets + 1))

    def copy(self) -> TaskSeries:
        return TaskSeries(
            list(self.token_buckets), list(self.cost_buckets), self.token_sum, self.cost_sum, self.last_seen
        )


@dataclass(slots=True)
class Count:
    """A plain counter as a family value (the unpriced records of one provider and model)."""

    value: int = 0
    last_seen: float = 0.0


@dataclass
class Snapshot:
    """A consistent copy of every counter, taken under the lock; exposition reads only this."""

    dimensions: tuple[str, ...]
    buckets: tuple[float, ...]
    series: dict[Key, Series]
    spans_received: int
    spans_rejected: dict[str, int]
    duplicates_dropped: int
    series_overflow: dict[str, int]
    unpriced: dict[tuple[str, str], int]
    task_series: dict[Key, TaskSeries] = field(default_factory=dict)
    task_token_buckets: tuple[float, ...] = ()
    task_cost_buckets: tuple[float, ...] = ()
    verdicts_late: int = 0


class Aggregator:
    """Keyed counters over UsageRecords; thread-safe; memory bounded by the config; clock injected
    (it only dates series for idle expiry and task instances for recency)."""

    def __init__(
        self,
        config: MetricsConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        compiled: bool = True,
    ) -> None:
        self.config = config if config is not None else MetricsConfig()
        cfg = self.config
        self._clock = clock
        self._label_values = _values_getter([path for d in cfg.dimensions for path in _DIMENSION_PATHS[d]])
        self._make_key = _key_maker(cfg.dimensions)
        #: raw dimension values → the key (`_key_of_values`); replaced whole when full
        self._keys: dict[tuple[str | None, ...], Key] = {}
        self._max_keys = 4 * (cfg.max_series_per_metric + cfg.max_budgeted_series_per_metric)
        self._buckets = tuple(cfg.input_token_buckets)
        #: the compiled `_add_series` (accelerator.series_tally), unless `compiled=False`
        self._tally = series_tally(Series) if compiled else None
        self._lock = threading.Lock()
        self.ingest_stats = IngestStats()
        self._series: KeyedFamily[Series] = self._family(
            functools.partial(Series.empty, len(cfg.input_token_buckets)), len(cfg.dimensions)
        )
        self._unpriced: KeyedFamily[Count] = self._family(Count, len(UNPRICED_LABELS))
        self._task_series: KeyedFamily[TaskSeries] = self._family(
            functools.partial(TaskSeries.empty, len(cfg.task_token_buckets), len(cfg.task_cost_buckets)),
            len(TASK_LABELS),
        )
        self._tasks = TaskInstanceTable(max_tracked=cfg.max_task_instances)
        #: completions already observed (by task span, else task id): a re-sent span is not re-observed
        self._completed: OrderedDict[object, None] = OrderedDict()
        #: task id → whether every verdict so far passed, for tasks not observed yet
        self._verdicts: OrderedDict[str, bool] = OrderedDict()
        #: verify spans already applied (trace id << 64 | span id): a re-sent one is ignored
        self._verdict_spans: OrderedDict[int, None] = OrderedDict()
        #: task ids observed since their last call: a verdict for one of them is late
        self._observed_ids: OrderedDict[str, None] = OrderedDict()
        self._verdicts_late = 0
        #: Expire idle series when a scrape reads them. A durable owner turns this off and applies
        #: `expire()` as a journaled change instead, so a replay expires the same series.
        self.expire_on_snapshot = True

    def _family(self, new: Callable[[], Any], width: int) -> KeyedFamily[Any]:
        cfg = self.config
        return KeyedFamily(
            new,
            width=width,
            limit=cfg.max_series_per_metric,
            admitted_limit=cfg.max_budgeted_series_per_metric,
            idle_seconds=cfg.series_idle_seconds,
        )

    def key_of(self, record: UsageRecord) -> Key:
        """The label values of a record, bounded in length; missing attribution is "unknown"."""
        return self._key_of_values(self._label_values(record))

    def _key_of_values(self, values: tuple[str | None, ...]) -> Key:
        """`key_of` from the record's raw dimension values, remembered: records repeat a handful of
        label combinations, so most records cost one lookup here, and records of equal values share
        one key tuple (its hash computed once, compared by identity in the series dict). Bounded:
        past the limit the memo starts over."""
        key = self._keys.get(values)
        if key is None:
            key = self._make_key(values)
            if len(self._keys) >= self._max_keys:
                self._keys = {}
            self._keys[values] = key
        return key

    def always_admit(self, values: Mapping[str, Iterable[str]]) -> None:
        """Label values (by label name: agent, task, model, ...) that always get series of their own,
        beyond the series limit (the budget ledger registers its scopes' names here)."""
        cut = {label: {v[:MAX_LABEL_LENGTH] for v in vs} for label, vs in values.items()}
        with self._lock:
            for family, labels in (
                (self._series, self.config.dimensions),
                (self._unpriced, UNPRICED_LABELS),
                (self._task_series, TASK_LABELS),
            ):
                family.reserve([cut.get(label, ()) for label in labels])

    def add(self, record: UsageRecord) -> None:
        self.add_many((record,))

    def add_many(self, records: Sequence[UsageRecord]) -> None:
        """Count records (already deduplicated); one lock acquisition per batch, label keys found
        before it is taken."""
        values, keys, key_of_values = self._label_values, self._keys, self._key_of_values
        keyed = [keys.get(raw) or key_of_values(raw) for raw in map(values, records)]
        now = self._clock()
        with self._lock:
            self._add_locked(keyed, records, now)

    def _add_locked(self, keys: Sequence[Key], records: Sequence[UsageRecord], now: float) -> None:
        """Each record added to its key's series, in order (costs are floats: the order of their
        additions is the result), by the compiled `tally` when it is on (the records it does not
        mirror, and those of keys without a series yet, one at a time in Python); then, in order,
        the unpriced ones counted and the task instances' calls added to their totals (families of
        their own, so doing them after the series changes nothing)."""
        extras: list[tuple[UsageRecord, int]] = []
        tally, n = self._tally, len(records)
        if tally is None or type(now) is not float:
            self._add_series(keys, records, 0, n, now, extras)
        else:
            keys, records, i = list(keys), list(records), 0
            while (i := tally(records, keys, self._series.entries, self._buckets, now, i, extras)) < n:
                self._add_series(keys, records, i, i + 1, now, extras)
                i += 1
        observed, add_task = self._observed_ids, self._tasks.add
        for record, total in extras:
            cost = record.cost_usd
            if cost is None:
                self._unpriced.get_or_create((_label(record.provider), _label(record.model)), now).value += 1
            attribution = record.attribution
            task_id = attribution.task_id
            if task_id:  # a call of a task instance: added to its running total
                if observed:
                    observed.pop(task_id, None)  # a new run of a task id observed before
                add_task(task_id, attribution.agent, attribution.task, total, cost or 0.0, now, record.model)

    def _add_series(
        self,
        keys: Sequence[Key],
        records: Sequence[UsageRecord],
        start: int,
        stop: int,
        now: float,
        extras: list[tuple[UsageRecord, int]],
    ) -> None:
        """records[start:stop] added to their series; (record, its total tokens) of the unpriced
        ones and of task instances' calls appended to `extras`. One loop with everything inline:
        this runs per record; counts that are 0 (no cache, no reasoning: most calls) are not
        added. `tally` (_otlp_scan.c) is this loop in C, and must stay the same arithmetic."""
        entries, get_or_create = self._series.entries, self._series.get_or_create
        buckets, n_buckets = self._buckets, len(self._buckets)
        for index in range(start, stop):
            record = records[index]
            series = entries.get(keys[index])  # KeyedFamily.get_or_create's common case, inline
            if series is None:
                series = get_or_create(keys[index], now)
            else:
                series.last_seen = now
            counts = record.tokens
            # TokenCounts.disjoint_counts(), inline
            inp, cache_read, cache_write = counts.input, counts.cache_read, counts.cache_write
            reasoning = counts.reasoning
            tokens = series.tokens  # in TOKEN_TYPES order, as disjoint_counts() returns them
            fresh_input = inp - cache_read - cache_write
            if fresh_input > 0:
                tokens[0] += fresh_input
            else:
                fresh_input = 0
            visible_output = counts.output - reasoning
            if visible_output > 0:
                tokens[1] += visible_output
            else:
                visible_output = 0
            if cache_read:
                tokens[2] += cache_read
            if cache_write:
                tokens[3] += cache_write
            if reasoning:
                tokens[4] += reasoning
            total = fresh_input + visible_output + cache_read + cache_write + reasoning
            cost = record.cost_usd
            if cost is not None:
                series.cost_usd += cost
            if record.status == "error":
                series.requests_error += 1
            else:
                series.requests_ok += 1
            if record.estimated:
                series.estimated_tokens += total
            # bisect_left(buckets, inp), its common case first: the smallest bucket
            series.input_buckets[0 if inp <= buckets[0] else bisect_left(buckets, inp, 1, n_buckets)] += 1
            series.input_sum += inp
            if cost is None or record.attribution.task_id:
                extras.append((record, total))

    # --- an ingest worker's batch, summed there (collector/presum.py) ---------------------------
    def add_presummed(self, presummed: Presummed) -> None:
        """Count a batch as an ingest worker summed it (`collector/presum.py`): what `add_many` of
        its records would have counted. One clock read, one lock; each family's keys met in the
        same order, every record beyond the series limit counted toward the overflow one by one;
        costs added one by one in record order (several keys may share the overflow series), so the
        float sums are the same too."""
        _, series_rows, (cost_series, costs), unpriced_rows, task_rows = presummed
        now = self._clock()
        with self._lock:
            targets: list[Series] = []
            for key, n, tokens, ok, error, estimated, buckets, input_sum in series_rows:
                series = _take(self._series, key, n, now)
                targets.append(series)
                totals = series.tokens
                for i, count in enumerate(tokens):
                    totals[i] += count
                series.requests_ok += ok
                series.requests_error += error
                series.estimated_tokens += estimated
                counted = series.input_buckets
                for i, count in enumerate(buckets):
                    counted[i] += count
                series.input_sum += input_sum
            for at, cost in zip(cost_series, costs, strict=True):
                targets[at].cost_usd += cost
            for label, n in unpriced_rows:
                _take(self._unpriced, label, n, now).value += n
            for task_id, agent, task, total, cost_usd, model in task_rows:
                if self._observed_ids:
                    self._observed_ids.pop(task_id, None)
                self._tasks.add(task_id, agent, task, total, cost_usd, now, model)

    def add_verdicts(self, verdicts: Iterable[Verdict]) -> None:
        """Remember each task's verdicts until it is observed (all passed → passed)."""
        limit = self.config.max_task_instances
        with self._lock:
            for verdict in verdicts:
                if verdict.span_id:
                    seen = (verdict.trace_id << 64) | verdict.span_id
                    if seen in self._verdict_spans:
                        continue
                    _remember(self._verdict_spans, seen, limit)
                if verdict.task_id in self._observed_ids:
                    self._verdicts_late += 1
                    continue
                passed = self._verdicts.pop(verdict.task_id, True) and verdict.passed
                _remember(self._verdicts, verdict.task_id, limit, passed)

    def has_verdict(self, task_id: str) -> bool:
        """Whether a verdict for this (not yet observed) task has arrived."""
        with self._lock:
            return task_id in self._verdicts

    def complete_tasks(self, completions: Iterable[TaskCompletion]) -> int:
        """Observe each completed instance's total into the task histograms, once; returns how many
        were observed. An instance with no counted call is observed as 0 (a task that needed no LLM
        call still completed)."""
        observed = 0
        now = self._clock()
        with self._lock:
            for completion in completions:
                observed += self._complete_locked(completion, now)
        return observed

    def _complete_locked(self, completion: TaskCompletion, now: float) -> int:
        span_id = completion.span_id
        seen: object = (completion.trace_id << 64) | span_id if span_id else completion.task_id
        if seen in self._completed:
            return 0  # the same task span again (an exporter retry)
        self._completed[seen] = None
        if len(self._completed) > self.config.max_task_instances:
            self._completed.popitem(last=False)
        totals = self._tasks.pop(completion.task_id)
        agent = completion.agent or (totals.agent if totals is not None else None)
        task = completion.task or (totals.task if totals is not None else None)
        verdict = self._verdicts.pop(completion.task_id, None)
        _remember(self._observed_ids, completion.task_id, self.config.max_task_instances)
        verified = names.VERIFIED_NONE if verdict is None else _VERIFIED[verdict]
        model = totals.main_model() if totals is not None else None
        key = (_label(agent), _label(task), _label(model), completion.status, verified)
        series = self._task_series.get_or_create(key, now)
        tokens = totals.tokens if totals is not None else 0
        cost = totals.cost_usd if totals is not None else 0.0
        cfg = self.config
        series.token_buckets[bisect_left(cfg.task_token_buckets, tokens)] += 1
        series.token_sum += tokens
        series.cost_buckets[bisect_left(cfg.task_cost_buckets, cost)] += 1
        series.cost_sum += cost
        return 1

    def snapshot(self) -> Snapshot:
        """Copies of every counter (idle series expired first, so they leave /metrics)."""
        ingest = self.ingest_stats.snapshot()
        now = self._clock()
        with self._lock:
            overflow: dict[str, int] = {}
            for family, metrics in (
                (self._series, _USAGE_METRICS),
                (self._unpriced, _UNPRICED_METRICS),
                (self._task_series, _TASK_METRICS),
            ):
                if self.expire_on_snapshot:
                    family.expire(now)
                if family.overflowed:
                    overflow.update(dict.fromkeys(metrics, family.overflowed))
            return Snapshot(
                dimensions=self.config.dimensions,
                buckets=self.config.input_token_buckets,
                series={k: s.copy() for k, s in self._series.entries.items()},
                spans_received=ingest.spans_received,
                spans_rejected=ingest.spans_rejected,
                duplicates_dropped=ingest.duplicates_dropped,
                series_overflow=overflow,
                unpriced={(k[0], k[1]): c.value for k, c in self._unpriced.entries.items()},
                task_series={k: s.copy() for k, s in self._task_series.entries.items()},
                task_token_buckets=self.config.task_token_buckets,
                task_cost_buckets=self.config.task_cost_buckets,
                verdicts_late=self._verdicts_late,
            )

    # --- durable state (the collector's store snapshots and restores it) ---------------------------
    def _families(self) -> dict[str, KeyedFamily[Any]]:
        return {"series": self._series, "unpriced": self._unpriced, "task_series": self._task_series}

    def sweep_due(self, now: float) -> bool:
        """Some family's periodic idle-series sweep is due (see `expire`)."""
        with self._lock:
            return any(f.sweep_due(now) for f in self._families().values())

    def expire(self, now: float) -> int:
        """Drop idle series in every family now; returns how many (0 when expiry is off)."""
        with self._lock:
            return sum(f.expire(now) for f in self._families().values())

    def state(self) -> dict[str, Any]:
        """Every counter as plain JSON-able values (fresh copies), with the shape they depend on."""
        ingest = self.ingest_stats.snapshot()
        with self._lock:
            return {
                "shape": self._shape(),
                "families": {name: f.state(_plain) for name, f in self._families().items()},
                "tasks": self._tasks.state(),
                "completed": list(self._completed),
                "ingest": [ingest.spans_received, ingest.spans_rejected, ingest.duplicates_dropped],
                "verdicts": [
                    list(self._verdicts.items()),
                    list(self._verdict_spans),
                    list(self._observed_ids),
                ],
                "verdicts_late": self._verdicts_late,
            }

    def restore(self, state: dict[str, Any]) -> None:
        """Replace every counter by `state()` of an aggregator of the same shape (dimensions and
        bucket bounds); raises ValueError naming what differs, leaving the counters untouched."""
        if state["shape"] != self._shape():
            raise ValueError(f"counters were kept for {state['shape']}, this collector has {self._shape()}")
        values = {"series": Series, "unpriced": Count, "task_series": TaskSeries}
        families = dict(state["families"])
        families["task_series"] = _with_verified(families["task_series"])
        verdicts, verdict_spans, observed = state.get("verdicts", ([], [], []))
        with self._lock:
            for name, family in self._families().items():
                family.restore(families[name], values[name])
            self._tasks.restore(state["tasks"])
            self._completed = OrderedDict.fromkeys(state["completed"])
            self._verdicts = OrderedDict((task_id, bool(passed)) for task_id, passed in verdicts)
            self._verdict_spans = OrderedDict.fromkeys(verdict_spans)
            self._observed_ids = OrderedDict.fromkeys(observed)
            self._verdicts_late = int(state.get("verdicts_late", 0))
        received, rejected, duplicates = state["ingest"]
        self.ingest_stats.restore(IngestCounts(received, dict(rejected), duplicates))

    def _shape(self) -> dict[str, list[Any]]:
        c = self.config
        return {
            "dimensions": list(c.dimensions),
            "input_token_buckets": list(c.input_token_buckets),
            "task_token_buckets": list(c.task_token_buckets),
            "task_cost_buckets": list(c.task_cost_buckets),
        }

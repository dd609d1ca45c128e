"""An ingest worker's batch summed per series, so the main process counts it per series, not per call.

`collector --workers N`: the main process is the serial part, and counting a record
(`Aggregator._add_locked`: label key, disjoint token counts, bucket, cost, task-instance share) was
most of what it did per span. A worker knows every record of its batch before the main process
dedupes them, so it sums them here — per series in order of first appearance, as plain values
(pickled cheaply); when the main process's deduper counts the whole batch (new calls, the common
case), `Aggregator.add_presummed` adds the sums and the result is what `add_many` of the records
would have counted, to the last bit of every float (tests/test_worker_wire.py holds the two to the
same `Aggregator.state()`, beyond the series limit and with every dimension). Otherwise (a resend
in the batch) the main process counts the records one by one.

Pure: a function of the collector's `MetricsConfig` (the same in worker and main process) and the
records, given as the columns worker_wire.py packs anyway (`Presum.columns`) or as records.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from itertools import repeat
from operator import attrgetter, eq, sub
from typing import Any

from otel_tokens import metric_names as names
from otel_tokens.aggregate import MAX_LABEL_LENGTH, MetricsConfig
from otel_tokens.keyed import Key
from otel_tokens.metric_names import UNKNOWN
from otel_tokens.record import UsageRecord

__all__ = ["Presum", "Presummed"]

#: One task-instance share: (task id, agent, task, tokens, cost or 0, model), in record order.
PresumTask = tuple[str, str | None, str | None, int, float, str]
#: One series: (key, records, tokens by type, requests ok, requests error, estimated tokens, input
#: buckets, input tokens).
PresumSeries = tuple[Key, int, list[int], int, int, int, list[int], int]
#: A batch summed: (records, its series, each priced record's series (an index into them) and cost
#: in record order, unpriced records by (provider, model), the task-instance shares).
Presummed = tuple[
    int,
    list[PresumSeries],
    tuple[list[int], list[float]],
    list[tuple[tuple[str, str], int]],
    list[PresumTask],
]

#: The columns `Presum.columns` reads: a record's fields, its tokens' and its attribution's.
FIELDS = ("provider", "request_model", "response_model", "operation", "status", "estimated", "cost_usd")
TOKENS = ("input", "output", "cache_read", "cache_write", "reasoning")
ATTRIBUTION = ("agent", "task", "task_id", "user", "session", "step", "workflow")
_values = attrgetter(*FIELDS, *(f"tokens.{f}" for f in TOKENS), *(f"attribution.{f}" for f in ATTRIBUTION))
#: dimension → the column its label comes from (the aggregator's paths; "model": `UsageRecord.model`)
_DIMENSION_COLUMNS: dict[str, str] = {names.AGENT: "agent", names.TASK: "task", names.MODEL: "model",
    names.PROVIDER: "provider", names.USER: "user", names.SESSION: "session", names.WORKFLOW: "workflow",
    names.STEP: "step", names.OPERATION: "operation"}  # fmt: skip


def _label(value: str | None) -> str:
    return (value or UNKNOWN)[:MAX_LABEL_LENGTH]


class Presum:
    """Sums batches for an aggregator of `config` (its dimensions and input buckets)."""

    def __init__(self, config: MetricsConfig) -> None:
        self._dimensions = [_DIMENSION_COLUMNS[d] for d in config.dimensions]
        self._buckets = config.input_token_buckets

    def records(self, records: Sequence[UsageRecord]) -> Presummed:
        """The batch's records summed (see `columns`)."""
        names_ = (*FIELDS, *TOKENS, *ATTRIBUTION)
        if not records:
            return self.columns(0, {name: () for name in names_})
        return self.columns(
            len(records), dict(zip(names_, zip(*map(_values, records), strict=True), strict=True))
        )

    def columns(self, n: int, columns: Mapping[str, Sequence[Any]]) -> Presummed:
        """`n` records given as full columns by field name (`FIELDS`, `TOKENS`, `ATTRIBUTION`),
        summed as `Aggregator._add_locked` counts each, a column at a time where a C loop (`map`)
        can do the work."""
        pairs = list(zip(columns["request_model"], columns["response_model"], strict=True))
        models = list(map({p: p[0] or p[1] or UNKNOWN for p in set(pairs)}.__getitem__, pairs))
        keys = _keys(n, [models if d == "model" else columns[d] for d in self._dimensions])
        index: dict[Key, int] = {}
        group_of = [index.setdefault(key, len(index)) for key in keys]
        inputs, cache_read, cache_write, reasoning = (
            columns["input"], columns["cache_read"], columns["cache_write"], columns["reasoning"]
        )  # fmt: skip
        fresh = list(map(max, map(sub, map(sub, inputs, cache_read), cache_write), repeat(0, n)))
        visible = list(map(max, map(sub, columns["output"], reasoning), repeat(0, n)))
        totals = list(map(sum, zip(fresh, visible, cache_read, cache_write, reasoning, strict=True)))
        buckets = list(map(bisect_left, repeat(self._buckets, n), inputs))
        errors = list(map(eq, columns["status"], repeat("error", n)))
        sums = self._sum_series(
            len(index), zip(group_of, fresh, visible, cache_read, cache_write, reasoning, totals, buckets,
                            inputs, errors, columns["estimated"], strict=True),
        )  # fmt: skip
        costs = columns["cost_usd"]
        priced = [i for i, c in enumerate(costs) if c is not None]
        unpriced: dict[tuple[str, str], int] = {}
        for i in (i for i, c in enumerate(costs) if c is None) if len(priced) < n else ():
            label = (_label(columns["provider"][i]), _label(models[i]))
            unpriced[label] = unpriced.get(label, 0) + 1
        tasks: list[PresumTask] = [
            (task_id, agent, task, total, cost or 0.0, model)
            for task_id, agent, task, total, cost, model in zip(
                columns["task_id"], columns["agent"], columns["task"], totals, costs, models, strict=True
            )
            if task_id
        ]
        summed: list[PresumSeries] = [
            (key, s[0], s[1], s[2], s[3], s[4], s[5], s[6]) for key, s in zip(index, sums, strict=True)
        ]
        cost_series = list(map(group_of.__getitem__, priced))
        return (n, summed, (cost_series, list(map(costs.__getitem__, priced))), list(unpriced.items()), tasks)

    def _sum_series(self, n_series: int, rows: Iterable[tuple[Any, ...]]) -> list[list[Any]]:
        """Per series: records, tokens by type, requests ok, error, estimated tokens, input buckets
        and input tokens (the part of `_add_locked` a record's numbers make)."""
        n_buckets = len(self._buckets) + 1
        sums: list[list[Any]] = [[0, [0, 0, 0, 0, 0], 0, 0, 0, [0] * n_buckets, 0] for _ in range(n_series)]
        for g, f, v, r, w, z, total, b, i, error, est in rows:
            s = sums[g]
            s[0] += 1
            t = s[1]
            t[0] += f
            t[1] += v
            t[2] += r
            t[3] += w
            t[4] += z
            s[3 if error else 2] += 1
            if est:
                s[4] += total
            s[5][b] += 1
            s[6] += i
        return sums


def _keys(n: int, columns: list[Sequence[Any]]) -> list[Key]:
    """`Aggregator.key_of` of each record from its dimensions' columns: each distinct value bounded
    once."""
    labels = [list(map({v: _label(v) for v in set(c)}.__getitem__, c)) for c in columns]
    return list(zip(*labels, strict=True)) if labels else [()] * n

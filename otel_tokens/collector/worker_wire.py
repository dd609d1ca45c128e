"""How an ingest worker's extracted batch crosses the pipe to the main process, cheaply.

The pipe pickles what it is given, and pickling is the part of a worker batch's trip that costs:
a slotted dataclass runs Python code per object both ways (`__getstate__`/`__setstate__`), which
cost more than extracting the record had (measured: pickling records whole, or as tuples still
holding their `TokenCounts` and `Attribution` objects, ~14 µs a span between the two processes,
against ~8-10 µs to decode and extract it). So records cross as plain values only:

- a record's *shape* — everything but its ids, times, cost and tokens: provider, models, operation,
  attribution, status, flags — is sent once per batch and referred to by index (calls of one task
  step share it; where every call has its own, as in the benchmark's payload, nothing is lost);
- each record is one flat tuple of ints and a float: its shape's index, trace/span/parent ids,
  start/end times, cost, and its token counts.

Pickle handles both in C. The main process builds each shape's `Attribution` once (it is frozen,
so the batch's records share it) and each record from its shape's positional template; the
records it holds are then exactly the ones the worker extracted (a test sends one with every field
set). A `UsageRecord` subclass, should one ever reach a worker's gate, travels whole.

The rest of a `Batch` — counts, rejections, completions, verdicts, a worker's scan for the main
process's ancestor walks — is small and pickled as it is. Unfinished walks travel as their record's
index, so the main process tracks the very record object its deduper holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from operator import attrgetter
from typing import Any

from otel_tokens.ancestry import Walk
from otel_tokens.pipeline import Batch
from otel_tokens.record import ATTRIBUTION_FIELDS, Attribution, TokenCounts, UsageRecord

__all__ = [
    "PackedBatch",
    "PackedRecords",
    "PackedWalk",
    "StatsDelta",
    "pack_batch",
    "pack_records",
    "unpack_batch",
    "unpack_records",
]

#: (clamped by reason, enrichment failures by step) counted since the worker last sent them.
StatsDelta = tuple[dict[str, int], dict[str, int]]

_FIELDS = [f.name for f in fields(UsageRecord)]
#: What differs from call to call, sent per record (in this order, after the shape's index).
_PER_RECORD = ("trace_id", "span_id", "parent_span_id", "start_time_ns", "end_time_ns", "cost_usd")
#: What is sent once per batch for all the records that share it (every other field but these two).
_NESTED = ("tokens", "attribution")
_SHAPE_FIELDS = tuple(f for f in _FIELDS if f not in _PER_RECORD and f not in _NESTED)
_shape_of: Callable[[UsageRecord], tuple[Any, ...]] = attrgetter(*_SHAPE_FIELDS)
_attribution_of: Callable[[Attribution], tuple[Any, ...]] = attrgetter(*ATTRIBUTION_FIELDS)
_tokens_of: Callable[[TokenCounts], tuple[int, ...]] = attrgetter(*[f.name for f in fields(TokenCounts)])
_ids_of: Callable[[UsageRecord], tuple[Any, ...]] = attrgetter(*_PER_RECORD)
#: Where a record's constructor takes each part (positional: the cheapest call).
_AT = {name: i for i, name in enumerate(_FIELDS)}
_SHAPE_AT = [_AT[f] for f in _SHAPE_FIELDS]
_TOKENS_AT, _ATTRIBUTION_AT = _AT["tokens"], _AT["attribution"]
(_TRACE_AT, _SPAN_AT, _PARENT_AT, _START_AT, _END_AT, _COST_AT) = (_AT[f] for f in _PER_RECORD)

#: A shape: its own fields (`_SHAPE_FIELDS`) and its attribution's (`ATTRIBUTION_FIELDS`).
Shape = tuple[tuple[Any, ...], tuple[Any, ...]]
#: A record: (shape index, the `_PER_RECORD` values, its token counts).
Row = tuple[int, tuple[Any, ...], tuple[int, ...]]
#: Records as they cross the pipe: ("rows", (shapes, rows)), or ("objects", the records themselves).
PackedRecords = tuple[str, Any]
#: An unfinished ancestor walk as it crosses the pipe: (its record's index in the batch, frontier,
#: agent, workflow, deadline).
PackedWalk = tuple[int, int, str | None, str | None, float]
#: A `RemoteGate.batch` request: the batch without records or walks, its records, its walks, and the
#: worker's extractor stats since its last batch.
PackedBatch = tuple[Batch, PackedRecords, list[PackedWalk], StatsDelta | None]


def pack_records(records: list[UsageRecord]) -> PackedRecords:
    """Records as shapes (once each) and flat rows of plain values (see the module docstring)."""
    if any(type(r) is not UsageRecord for r in records):  # a subclass: keep it whole
        return ("objects", records)
    try:
        return ("rows", _rows(records))
    except TypeError:  # a field holding something unhashable (a list for a tuple): send it whole
        return ("objects", records)


def _rows(records: list[UsageRecord]) -> tuple[list[Shape], list[Row]]:
    shapes: dict[Shape, int] = {}
    rows: list[Row] = []
    append = rows.append
    for r in records:
        shape = (_shape_of(r), _attribution_of(r.attribution))
        index = shapes.get(shape)
        if index is None:
            index = shapes[shape] = len(shapes)
        append((index, _ids_of(r), _tokens_of(r.tokens)))
    return list(shapes), rows


def unpack_records(packed: PackedRecords) -> list[UsageRecord]:
    """The records `pack_records` was given, equal field by field."""
    kind, items = packed
    if kind == "objects":
        return list(items)
    shapes, rows = items
    templates = [_template(own, attribution) for own, attribution in shapes]
    records: list[UsageRecord] = []
    append = records.append
    for index, (trace, span, parent, start, end, cost), tokens in rows:
        values = templates[index].copy()
        values[_TRACE_AT] = trace
        values[_SPAN_AT] = span
        values[_PARENT_AT] = parent
        values[_START_AT] = start
        values[_END_AT] = end
        values[_COST_AT] = cost
        values[_TOKENS_AT] = TokenCounts(*tokens)
        append(UsageRecord(*values))
    return records


def _template(own: tuple[Any, ...], attribution: tuple[Any, ...]) -> list[Any]:
    """A shape's constructor arguments, the per-record ones left to fill; one shared Attribution."""
    values: list[Any] = [None] * len(_FIELDS)
    for at, value in zip(_SHAPE_AT, own, strict=True):
        values[at] = value
    values[_ATTRIBUTION_AT] = Attribution(*attribution)
    return values


def pack_walks(records: list[UsageRecord], walks: list[Walk]) -> list[PackedWalk]:
    if not walks:
        return []
    at = {id(r): i for i, r in enumerate(records)}
    return [
        (at[id(w.record)], w.frontier, w.agent, w.workflow, w.deadline) for w in walks if id(w.record) in at
    ]


def unpack_walks(records: list[UsageRecord], packed: list[PackedWalk]) -> list[Walk]:
    walks = []
    for index, frontier, agent, workflow, deadline in packed:
        walk = Walk(records[index], deadline)
        walk.frontier, walk.agent, walk.workflow = frontier, agent, workflow
        walks.append(walk)
    return walks


def pack_batch(batch: Batch, stats: StatsDelta | None) -> PackedBatch:
    """The request for one batch; takes the records and walks out of `batch` (it is not reused)."""
    walks, batch.walks = pack_walks(batch.records, batch.walks), []
    records, batch.records = pack_records(batch.records), []
    return (batch, records, walks, stats)


def unpack_batch(payload: PackedBatch) -> tuple[Batch, StatsDelta | None]:
    """A batch request as the main process applies it: the batch with its records rebuilt and its
    unfinished walks pointing at them; and the worker's stats delta."""
    batch, records, walks, delta = payload
    batch.records = unpack_records(records)
    batch.walks = unpack_walks(batch.records, walks)
    return batch, delta

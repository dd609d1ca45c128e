"""How an ingest worker's extracted batch crosses the pipe to the main process, cheaply.

The main process of `collector --workers N` is the serial part: every span any worker decoded is
deduplicated and counted there, so whatever it does per span caps the whole collector. Measured on
the benchmark's payload, in process: it spent 5.5 µs a span (unpickling 0.8, rebuilding records
2.1 — Attribution's frozen `__init__` alone 0.55 —, dedupe 1.0, counting 1.7), as much as one
process doing everything; now ~2.4 µs. Three things do it:

- **Records cross as columns.** The pipe pickles what it is given, and pickling objects runs
  Python code per object both ways. So a batch's records cross as one column of plain values per
  field (a column whose values are all the same as a single value), rebuilt with `map` over the
  columns — no Python loop per record; an `Attribution` through its slots' setters, as its frozen
  `__init__` would, at half the cost. The records rebuilt are exactly the ones the worker extracted
  (a test sends one with every field set). A `UsageRecord` subclass, should one ever reach a
  worker's gate, travels whole.
- **Counts cross summed.** The worker adds the batch up per series from those columns
  (`collector/presum.py`: label keys, disjoint token counts, buckets, costs in record order,
  task shares); when the main process's deduper counts every record of the batch — the common
  case, a batch of new calls — it adds those sums (`Aggregator.add_presummed`, per series, not per
  record); otherwise (a resend) it counts the records as one process would. Not summed: batches
  with foreign spans that have a parent, which the deduper holds anyway.
- **Records are rebuilt only when needed.** A summed batch also crosses as its dedupe keys' columns
  (trace, span and parent ids, `ours`), its record columns pickled apart. Without a data dir the
  main process builds key stubs — all the deduper reads of a span it will not hold — and
  `Batch.materialize` rebuilds the whole records only for a listener (the budget ledger) or a batch
  not counted whole; with a data dir the journal needs them, so they are rebuilt at once.

The rest of a `Batch` — counts, rejections, completions, verdicts, a worker's scan for the main
process's ancestor walks — is small and pickled as it is. Unfinished walks travel as their record's
index, so the main process tracks the very record object its deduper holds.
"""

from __future__ import annotations

import pickle
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import fields
from itertools import repeat
from operator import attrgetter
from typing import Any

from otel_tokens.ancestry import Walk
from otel_tokens.collector.presum import Presummed
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

_FIELDS = tuple(f.name for f in fields(UsageRecord))
_TOKEN_FIELDS = tuple(f.name for f in fields(TokenCounts))
_record_of: Callable[[UsageRecord], tuple[Any, ...]] = attrgetter(*_FIELDS)
_attribution_of: Callable[[UsageRecord], Attribution] = attrgetter("attribution")
_attribution_values: Callable[[Attribution], tuple[Any, ...]] = attrgetter(*ATTRIBUTION_FIELDS)
_tokens_of: Callable[[UsageRecord], TokenCounts] = attrgetter("tokens")
_token_values: Callable[[TokenCounts], tuple[int, ...]] = attrgetter(*_TOKEN_FIELDS)
_TOKENS_AT, _ATTRIBUTION_AT = _FIELDS.index("tokens"), _FIELDS.index("attribution")
#: Fields holding a string or None (see `_text_column`); the nested ones, sent as their own columns.
_TEXT = frozenset(
    {"provider", "request_model", "operation", "response_model", "status", "error_type", "service_tier"}
)
_TEXT_AT = frozenset(i for i, name in enumerate(_FIELDS) if name in _TEXT)
_NESTED_AT = (_TOKENS_AT, _ATTRIBUTION_AT)
#: What the main process's deduper reads of a record it will not hold (see `unpack_batch`).
_KEY_FIELDS = ("trace_id", "span_id", "parent_span_id", "ours")
_KEY_AT = tuple(_FIELDS.index(name) for name in _KEY_FIELDS)
_SPAN_AT, _PARENT_AT, _OURS_AT = _KEY_AT[1:]
_KEY_SETTERS = tuple(getattr(UsageRecord, name).__set__ for name in _KEY_FIELDS)
#: Each Attribution slot's setter (a frozen dataclass's `__init__` sets its slots the same way).
_ATTRIBUTION_SETTERS = tuple(getattr(Attribution, name).__set__ for name in ATTRIBUTION_FIELDS)

#: One field's values across a batch's records; a 1-tuple when they are all the same value.
Column = tuple[Any, ...]
#: Records as they cross the pipe: ("columns", (count, record columns, token columns, attribution
#: columns)), ("keyed", (count, their dedupe keys' columns, the former pickled)), or ("objects",
#: the records themselves).
PackedRecords = tuple[str, Any]
#: An unfinished ancestor walk as it crosses the pipe: (its record's index in the batch, frontier,
#: agent, workflow, deadline).
PackedWalk = tuple[int, int, str | None, str | None, float]
#: A `RemoteGate.batch` request: the batch without records, walks or sums, its records, its walks,
#: the worker's extractor stats since its last batch, and the records summed (`collector/presum.py`).
PackedBatch = tuple[Batch, PackedRecords, list[PackedWalk], StatsDelta | None, Presummed | None]
#: What sums a batch's records per series from their columns (`Presum.columns`).
Presum = Callable[[int, Mapping[str, Sequence[Any]]], Presummed]


def pack_records(records: list[UsageRecord]) -> PackedRecords:
    """Records as columns of plain values (see the module docstring)."""
    if not records or any(type(r) is not UsageRecord for r in records):  # a subclass: keep it whole
        return ("objects", records)
    columns = list(zip(*map(_record_of, records), strict=True))
    tokens = [_column(c) for c in zip(*map(_token_values, map(_tokens_of, records)), strict=True)]
    attributions = [
        _text_column(c) for c in zip(*map(_attribution_values, map(_attribution_of, records)), strict=True)
    ]
    sent = [
        (None,) if at in _NESTED_AT else _text_column(c) if at in _TEXT_AT else _column(c)
        for at, c in enumerate(columns)
    ]
    return ("columns", (len(records), sent, tokens, attributions))


def _column(values: tuple[Any, ...]) -> Column:
    """`values`, or the one value they all are. Equal is not enough (1 == 1.0 == True): of the
    same type too, so the record rebuilt is the record sent."""
    if len(values) > 1 and values.count(values[0]) == len(values) and len(set(map(type, values))) == 1:
        return values[:1]
    return values


def _text_column(values: tuple[Any, ...]) -> Column:
    """`_column` of strings (or None): no type to tell apart, equal strings are interchangeable."""
    return values[:1] if values.count(values[0]) == len(values) else values


def unpack_records(packed: PackedRecords) -> list[UsageRecord]:
    """The records `pack_records` was given, equal field by field."""
    kind, items = packed
    if kind == "objects":
        return list(items)
    n, columns, token_columns, attribution_columns = items
    values = [_expand(c, n) for c in columns]
    values[_TOKENS_AT] = map(TokenCounts, *[_expand(c, n) for c in token_columns])
    values[_ATTRIBUTION_AT] = _attributions(n, attribution_columns)
    return list(map(UsageRecord, *values))


def _expand(column: Column, n: int) -> Iterable[Any]:
    return column if len(column) == n else repeat(column[0], n)


def _attributions(n: int, columns: list[Column]) -> Iterable[Attribution]:
    """The records' attributions: one shared object when they are all the same (frozen: safe to
    share), else one each, built a column at a time."""
    if n != 1 and all(len(c) == 1 for c in columns):
        return repeat(Attribution(*(c[0] for c in columns)), n)
    built = list(map(object.__new__, repeat(Attribution, n)))
    for setter, column in zip(_ATTRIBUTION_SETTERS, columns, strict=True):
        deque(map(setter, built, _expand(column, n)), maxlen=0)
    return built


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


def pack_batch(batch: Batch, stats: StatsDelta | None, presum: Presum | None = None) -> PackedBatch:
    """The request for one batch; takes the records and walks out of `batch` (it is not reused).
    `presum`: sums the records per series for the main process, from their columns (see the module
    docstring); a summed batch's records also travel as their dedupe keys, their columns pickled
    apart."""
    records = batch.records
    walks, batch.walks = pack_walks(records, batch.walks), []
    packed, batch.records = pack_records(records), []
    if presum is None or packed[0] != "columns":
        return (batch, packed, walks, stats, None)
    n, columns, tokens, attributions = packed[1]
    if _held_likely(n, columns):
        return (batch, packed, walks, stats, None)
    named = zip(
        (*_FIELDS, *_TOKEN_FIELDS, *ATTRIBUTION_FIELDS), (*columns, *tokens, *attributions), strict=True
    )
    try:
        summed = presum(n, {name: c if len(c) == n else c * n for name, c in named})
    except TypeError:  # a label holding something unhashable: the main process counts the records
        return (batch, packed, walks, stats, None)
    if 0 not in columns[_SPAN_AT]:  # every record has a span id (else it is deduped by content)
        keys = tuple(columns[at] for at in _KEY_AT)  # the keys' columns, as packed
        packed = ("keyed", (n, keys, pickle.dumps(packed, pickle.HIGHEST_PROTOCOL)))
    return (batch, packed, walks, stats, summed)


def _held_likely(n: int, columns: list[Column]) -> bool:
    """A foreign span with a parent: the main process's deduper holds it (so the batch is not
    counted whole), unless its memory of held spans is full or holding is off."""
    ours, parents = columns[_OURS_AT], columns[_PARENT_AT]
    if len(ours) == 1 and ours[0]:  # all ours (the common case): none held
        return False
    return any(not o and p for o, p in zip(_expand(ours, n), _expand(parents, n), strict=False))


def unpack_batch(payload: PackedBatch, *, keys_only: bool = False) -> tuple[Batch, StatsDelta | None]:
    """A batch request as the main process applies it: the batch with its records rebuilt, its
    unfinished walks pointing at them and its sums; and the worker's stats delta.

    `keys_only` (the main process without a data dir): a summed batch's records are built with
    their dedupe keys alone (trace, span and parent ids, `ours`: all the deduper reads of a span it
    will not hold — and it holds none of a summed batch), and `Batch.materialize` builds the whole
    ones when the pipeline needs them: a listener, or a batch the deduper did not count whole."""
    batch, records, walks, delta, summed = payload
    kind, items = records
    if kind != "keyed":
        batch.records = unpack_records(records)
    elif keys_only:
        n, keys, blob = items
        batch.records = _stubs(n, keys)
        batch.materialize = _Materialize(batch.records, blob)
    else:
        batch.records = unpack_records(pickle.loads(items[2]))
    batch.walks = unpack_walks(batch.records, walks)
    batch.presummed = summed
    return batch, delta


def _stubs(n: int, keys: tuple[Column, ...]) -> list[UsageRecord]:
    """Records holding their dedupe keys alone, built a column at a time."""
    stubs: list[UsageRecord] = list(map(object.__new__, repeat(UsageRecord, n)))
    for setter, column in zip(_KEY_SETTERS, keys, strict=True):
        deque(map(setter, stubs, _expand(column, n)), maxlen=0)
    return stubs


class _Materialize:
    """The whole records standing behind a batch's key stubs (see `unpack_batch`)."""

    def __init__(self, stubs: list[UsageRecord], blob: bytes) -> None:
        self._stubs = stubs
        self._blob = blob

    def __call__(self, stubs: list[UsageRecord]) -> list[UsageRecord]:
        whole = unpack_records(pickle.loads(self._blob))
        at = {id(stub): i for i, stub in enumerate(self._stubs)}
        return [whole[at[id(stub)]] for stub in stubs]

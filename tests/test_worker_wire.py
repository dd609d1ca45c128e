"""What an ingest worker sends the main process (`collector --workers N`) counts as one process would.

The wire (collector/worker_wire.py) carries a batch's records as columns and, summed per series by
the worker (collector/presum.py), their counts; the main process adds those sums when its deduper
counts the whole batch. What a user would check, without processes: the records rebuilt are the
records sent, and the counters — every field the aggregator keeps, overflow and task instances
included — are the same as counting the records one by one.
"""

from __future__ import annotations

import pickle
import random
from dataclasses import fields

import pytest

from otel_tokens import metric_names as mn
from otel_tokens.aggregate import ALLOWED_DIMENSIONS, Aggregator, MetricsConfig
from otel_tokens.collector.presum import Presum
from otel_tokens.collector.worker_wire import pack_batch, pack_records, unpack_batch, unpack_records
from otel_tokens.pipeline import Batch, Pipeline
from otel_tokens.record import Attribution, TaskCompletion, TokenCounts, UsageRecord

CLOCK = 1_767_225_600.0


def _records(n: int, seed: int = 3) -> list[UsageRecord]:
    """Varied records: priced and unpriced, ok and error, estimated, with and without a task
    instance, several providers, models, agents and steps; a shared attribution now and then."""
    rnd = random.Random(seed)
    shared = Attribution("planner", "triage", "run-1", "u1", "s1", "plan", "wf")
    out = []
    for i in range(n):
        attribution = shared if i % 5 == 0 else Attribution(
            agent=rnd.choice(["planner", "coder", None]), task=rnd.choice(["triage", "fix", None]),
            task_id=rnd.choice([f"run-{rnd.randrange(6)}", None]), user=f"u{rnd.randrange(3)}",
            session=rnd.choice([None, "s1", "s2"]), step=str(rnd.randrange(4)),
            workflow=rnd.choice([None, "wf"]),
        )  # fmt: skip
        out.append(
            UsageRecord(
                provider=rnd.choice(["openai", "anthropic"]),
                request_model=rnd.choice(["gpt-4o", "claude-sonnet-4-5", ""]),
                response_model=rnd.choice([None, "gpt-4o-2024-08-06"]),
                operation=rnd.choice(["chat", "embeddings"]),
                tokens=TokenCounts(
                    rnd.randrange(5000),
                    rnd.randrange(900),
                    rnd.randrange(300),
                    rnd.randrange(200),
                    rnd.randrange(100),
                    0,
                ),
                estimated=rnd.random() < 0.2,
                cost_usd=None if rnd.random() < 0.2 else rnd.random() / 7,
                attribution=attribution,
                status="error" if rnd.random() < 0.1 else "ok",
                error_type=None,
                trace_id=rnd.getrandbits(128),
                span_id=rnd.getrandbits(64) or 1,
                parent_span_id=rnd.choice([None, rnd.getrandbits(64)]),
                start_time_ns=i,
                end_time_ns=i + 5,
                ours=True,
            )
        )
    return out


def _crossed(records: list[UsageRecord]) -> list[UsageRecord]:
    return unpack_records(pickle.loads(pickle.dumps(pack_records(records), protocol=5)))


def test_records_cross_as_columns_and_come_back_equal_field_by_field() -> None:
    records = _records(300)
    got = _crossed(records)
    assert got == records
    assert all(type(r.tokens) is TokenCounts and type(r.attribution) is Attribution for r in got)
    assert [hash(r.attribution) for r in got] == [hash(r.attribution) for r in records]


@pytest.mark.parametrize("n", [1, 2, 7])
def test_columns_of_one_value_and_of_equal_values_of_other_types_come_back_as_they_were(n: int) -> None:
    """A column of one value is sent once; 1, 1.0 and True are equal but not the same value."""
    same = [UsageRecord("openai", "gpt-4o", cost_usd=0.5, trace_id=1, span_id=i + 1) for i in range(n)]
    assert _crossed(same) == same
    mixed = [UsageRecord("openai", "gpt-4o", cost_usd=c, trace_id=1, span_id=2) for c in (1, 1.0, True)]
    assert [type(r.cost_usd) for r in _crossed(mixed)] == [int, float, bool]


class Tagged(UsageRecord):
    """A UsageRecord subclass (an extension's record) crosses whole, its own fields too."""

    __slots__ = ("tag",)


def test_a_subclass_travels_whole_and_an_odd_value_comes_back_as_it_was() -> None:
    tagged = Tagged("openai", "gpt-4o")
    tagged.tag = "x"
    assert pack_records([tagged])[0] == "objects"
    (got,) = _crossed([tagged])
    assert isinstance(got, Tagged) and got.tag == "x" and got == tagged
    odd = UsageRecord("openai", "gpt-4o", service_tier=["flex"])  # type: ignore[arg-type]
    assert _crossed([odd, odd]) == [odd, odd]


EVERY_DIMENSION = tuple(sorted(ALLOWED_DIMENSIONS))


def _config(limit: int = 2000, dimensions: tuple[str, ...] = mn.DEFAULT_DIMENSIONS) -> MetricsConfig:
    return MetricsConfig(dimensions=dimensions, max_series_per_metric=limit)


@pytest.mark.parametrize(
    ("limit", "dimensions"),
    [(2000, mn.DEFAULT_DIMENSIONS), (3, mn.DEFAULT_DIMENSIONS), (2000, EVERY_DIMENSION)],
    ids=["within the limit", "beyond the series limit", "every dimension"],
)
def test_presummed_counts_equal_counting_record_by_record(limit: int, dimensions: tuple[str, ...]) -> None:
    """Every counter the aggregator keeps (its whole `state()`): tokens by type, cost to the last
    bit, requests, estimated tokens, input buckets, unpriced records, task instances, overflow."""
    one_by_one, summed = (Aggregator(_config(limit, dimensions), clock=lambda: CLOCK) for _ in range(2))
    for agg in (one_by_one, summed):
        agg.always_admit({mn.AGENT: ["coder"]})
        agg.complete_tasks([TaskCompletion("run-2", "fix", "coder")])  # run-2 observed: a new run follows
    batches = [_records(200, seed) for seed in range(4)]
    for batch in batches:
        one_by_one.add_many(batch)
        summed.add_presummed(pickle.loads(pickle.dumps(Presum(summed.config).records(batch), protocol=5)))
    assert summed.state() == one_by_one.state()
    if limit == 3:
        assert summed.state()["families"]["series"]["overflowed"] > 0


def _pipelines() -> tuple[Pipeline, Pipeline]:
    return Pipeline(clock=lambda: CLOCK), Pipeline(clock=lambda: CLOCK)


def _batch(records: list[UsageRecord]) -> Batch:
    batch = Batch(by_content=True)
    batch.records = list(records)
    batch.spans_received = len(records)
    return batch


def _via_wire(
    main: Pipeline, worker: Pipeline, records: list[UsageRecord], keys_only: bool = True
) -> tuple[int, bool]:
    """(records counted, whether the worker sent its sums)."""
    packed = pack_batch(_batch(records), None, Presum(worker.config).columns)
    got, _ = unpack_batch(pickle.loads(pickle.dumps(packed, protocol=5)), keys_only=keys_only)
    return main.gate.batch(got).records_counted, got.presummed is not None


@pytest.mark.parametrize(
    "keys_only", [True, False], ids=["no data dir: key stubs", "data dir: whole records"]
)
def test_the_main_process_counts_a_worker_batch_as_one_process_would_with_resends(keys_only: bool) -> None:
    """Whole new batches are added from the worker's sums; a batch with a resend in it (the deduper
    drops a record) is counted record by record: either way the page is the same as one process's,
    which counts the same batches record by record. A listener (the budget ledger) sees every
    counted record whole, as one process's listener does."""
    alone, main = _pipelines()
    seen: dict[str, list[UsageRecord]] = {"alone": [], "main": []}
    alone.add_listener(seen["alone"].append)
    main.add_listener(seen["main"].append)
    worker = Pipeline(clock=lambda: CLOCK)
    batches = [_records(150, 1), _records(150, 2), [*_records(150, 2)[:40], *_records(60, 5)]]
    counted = [_via_wire(main, worker, b, keys_only) for b in batches]
    assert counted == [(150, True), (150, True), (60, True)]  # the third: 40 resent, 60 new
    for batch in [_records(150, 1), _records(150, 2), [*_records(150, 2)[:40], *_records(60, 5)]]:
        alone.gate.batch(_batch(batch))
    assert main.aggregator.state() == alone.aggregator.state()
    assert _counted_requests(main) == 360
    assert seen["main"] == seen["alone"] and len(seen["main"]) == 360


def test_without_listeners_a_whole_batch_is_counted_from_its_keys_and_sums_alone() -> None:
    """The main process's common case: no record is rebuilt whole, and the page is still exact."""
    alone, main = _pipelines()
    worker = Pipeline(clock=lambda: CLOCK)
    packed = pack_batch(_batch(_records(200, 4)), None, Presum(worker.config).columns)
    got, _ = unpack_batch(pickle.loads(pickle.dumps(packed, protocol=5)), keys_only=True)
    assert packed[1][0] == "keyed" and got.materialize is not None
    with pytest.raises(AttributeError):
        got.records[0].tokens  # noqa: B018 - a key stub: nothing but its dedupe keys
    assert main.gate.batch(got).records_counted == 200
    alone.gate.batch(_batch(_records(200, 4)))
    assert main.aggregator.state() == alone.aggregator.state()


def test_a_worker_batch_of_held_foreign_spans_is_counted_when_released() -> None:
    """Foreign spans with a parent wait in the deduper for their twins: nothing is summed for them
    (they are not counted with their batch), and the flush counts them all."""
    _, main = _pipelines()
    worker = Pipeline(clock=lambda: CLOCK)
    foreign = [r for r in _records(100, 7) if r.parent_span_id]
    for r in foreign:
        r.ours = False
    assert _via_wire(main, worker, foreign) == (0, False) and main.held_spans == len(foreign)
    main.flush(CLOCK + 10)
    assert _counted_requests(main) == len(foreign)


def _counted_requests(pipeline: Pipeline) -> int:
    series = pipeline.aggregator.snapshot().series.values()
    return sum(s.requests_ok + s.requests_error for s in series)


def test_every_record_field_is_a_column() -> None:
    """A field added to UsageRecord later crosses too (the wire reads the dataclass's fields)."""
    record = _records(1)[0]
    (got,) = _crossed([record])
    assert [f.name for f in fields(UsageRecord) if getattr(got, f.name) != getattr(record, f.name)] == []


@pytest.mark.parametrize("n", [1, 3])
def test_key_stubs_of_one_trace_and_of_a_single_record_keep_their_keys(n: int) -> None:
    """Columns of one value (a trace's calls, a batch of one) expand back to every record."""
    records = [
        UsageRecord("openai", "gpt-4o", trace_id=5, span_id=i + 1, parent_span_id=9, ours=True)
        for i in range(n)
    ]
    packed = pack_batch(_batch(records), None, Presum(MetricsConfig()).columns)
    got, _ = unpack_batch(pickle.loads(pickle.dumps(packed, protocol=5)), keys_only=True)
    keys = [(r.trace_id, r.span_id, r.parent_span_id, r.ours) for r in got.records]
    assert keys == [(5, i + 1, 9, True) for i in range(n)]
    assert got.materialize is not None and got.materialize(got.records) == records

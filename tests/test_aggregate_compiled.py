"""The compiled series tally (`_otlp_scan.tally`) counts exactly what the aggregator's Python loop
counts: the same records into an aggregator with it and one without give the same state, to the last
bit of every float, and the same /metrics page.

The records are random and odd on purpose: costs that need every bit, counts that are 0, negative,
huge (beyond what the C code adds itself) or contradictory, estimated and failed calls, unpriced
ones, task instances (including a task id reused after its completion), a record subclass, keys
beyond the series limit (the overflow series), label values longer than a label may be, a series
restored from state with integer and very large values, and batches of one record.

Without the extension built these tests skip (as tests/test_accelerator.py's do); the label keys,
remembered by the records' raw values, are checked against their definition on both paths.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from otel_tokens import metric_names as mn
from otel_tokens.accelerator import series_tally
from otel_tokens.aggregate import ALLOWED_DIMENSIONS, MAX_LABEL_LENGTH, Aggregator, MetricsConfig, Series
from otel_tokens.exposition import TokenMetricsCollector
from otel_tokens.record import Attribution, TaskCompletion, TokenCounts, UsageRecord

compiled_only = pytest.mark.skipif(series_tally(Series) is None, reason="the compiled tally is not built")


@dataclass(slots=True)
class TaggedRecord(UsageRecord):
    """A UsageRecord subclass (the pipeline accepts them): added in Python, in order."""

    tag: str = ""


def count(rnd: random.Random) -> int:
    kind = rnd.random()
    if kind < 0.5:
        return rnd.randint(0, 50_000)
    if kind < 0.7:
        return 0
    if kind < 0.8:
        return rnd.randint(0, 10**9)
    if kind < 0.9:
        return -rnd.randint(1, 1000)
    return rnd.choice((2**61, 2**70, 3**45))  # beyond what the C code adds itself


def record(rnd: random.Random, i: int) -> UsageRecord:
    cost = rnd.choice((None, rnd.random() * 10 ** rnd.randint(-9, 3), 0.1, 1e-17, 0.0))
    cls = TaggedRecord if rnd.random() < 0.03 else UsageRecord
    return cls(
        provider=rnd.choice(("openai", "anthropic", "x" * 300)),
        request_model=rnd.choice(("gpt-4o", "o3", "claude-sonnet-4-5", "m" * 200, "")),
        response_model=rnd.choice((None, "gpt-4o-2024-08-06")),
        tokens=TokenCounts(*(count(rnd) for _ in range(5))),
        cost_usd=cost,
        attribution=Attribution(
            agent=rnd.choice((None, "coder", "reviewer", f"agent-{rnd.randrange(40)}")),
            task=rnd.choice((None, "fix", "triage")),
            task_id=rnd.choice((None, None, "", f"run-{rnd.randrange(30)}")),
        ),
        status=rnd.choice(("ok", "ok", "error")),  # type: ignore[arg-type]
        estimated=rnd.random() < 0.2,
        span_id=i,
    )


def run(compiled: bool, batches: list[list[UsageRecord]], restored: dict[str, object] | None) -> Aggregator:
    clock = iter(float(t) for t in range(1, 10_000))
    config = MetricsConfig(max_series_per_metric=60, max_task_instances=20, series_idle_seconds=0)
    agg = Aggregator(config, clock=lambda: next(clock), compiled=compiled)
    if restored is not None:
        agg.restore(copy.deepcopy(restored))  # restore keeps the lists it is given
    for n, batch in enumerate(batches):
        agg.add_many(batch)
        if n % 7 == 3:  # some task instances complete; a later call reuses the id
            agg.complete_tasks(
                [TaskCompletion(task_id=f"run-{n % 30}", task="fix", agent="coder", span_id=n)]
            )
    return agg


def page(agg: Aggregator) -> bytes:
    registry = CollectorRegistry()
    registry.register(TokenMetricsCollector(agg))
    return generate_latest(registry)


@compiled_only
@pytest.mark.parametrize("seed", range(4))
def test_the_compiled_tally_counts_what_the_python_loop_counts(seed: int) -> None:
    rnd = random.Random(seed)
    records = [record(rnd, i) for i in range(3000)]
    batches: list[list[UsageRecord]] = []
    while records:
        size = rnd.choice((1, 2, 50, 512))
        batches.append(records[:size])
        del records[:size]
    python, compiled = run(False, batches, None), run(True, batches, None)
    assert python._tally is None and compiled._tally is not None
    assert repr(compiled.state()) == repr(python.state())  # repr: floats to the last bit
    assert page(compiled) == page(python)
    assert compiled.state()["families"]["series"]["overflowed"] > 0  # the overflow series was hit


@compiled_only
def test_restored_series_of_other_number_types_add_up_the_same() -> None:
    """Counters restored from a store (JSON: an int where a float was 0, very large counts) are
    added to as Python adds to them."""
    rnd = random.Random(9)
    seeded = Aggregator(compiled=False, clock=lambda: 1.0)
    seeded.add_many([record(rnd, i) for i in range(200)])
    state = seeded.state()
    for entry in state["families"]["series"]["entries"]:
        entry[1] = [2**65 + v for v in entry[1]]  # tokens beyond 64 bits
        entry[3] = int(entry[3])  # cost_usd as JSON may give it back
        entry[7] = int(entry[7])  # input_sum
    batches = [[record(rnd, i) for i in range(k, k + 100)] for k in range(0, 1000, 100)]
    python, compiled = run(False, batches, state), run(True, batches, state)
    assert repr(compiled.state()) == repr(python.state())
    assert page(compiled) == page(python)


def test_label_keys_are_the_records_label_values() -> None:
    """Each dimension's label is the record's value (model: `UsageRecord.model`), "unknown" when
    missing, cut to the label length; the memo of keys by raw values gives the same, for every
    dimension and a few orders of them, also once the memo was full and started over."""
    rnd = random.Random(2)
    records = [record(rnd, i) for i in range(400)]
    dims = sorted(ALLOWED_DIMENSIONS)
    for dimensions in (mn.DEFAULT_DIMENSIONS, tuple(dims), tuple(reversed(dims)), (mn.MODEL,), (mn.USER,)):
        agg = Aggregator(
            MetricsConfig(dimensions=dimensions, max_series_per_metric=2, max_budgeted_series_per_metric=0)
        )
        for r in records * 2:
            expected = tuple(
                (
                    (r.model if d == mn.MODEL else getattr(r.attribution, d, None) or getattr(r, d, None))
                    or "unknown"
                )[:MAX_LABEL_LENGTH]
                for d in dimensions
            )
            assert agg.key_of(r) == expected, (dimensions, r)

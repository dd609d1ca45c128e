"""Restore is exact: a store's snapshot plus its journal rebuild the very state that was running.

In process, with the real SQLite store in a temporary data dir and an injected clock, so windows,
hold deadlines and the dedupe memory's times are checked to the second. "Crash" here is closing the
store without the final snapshot: what is on disk then is exactly what a `kill -9` leaves behind
once every acknowledged export was committed.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from otel_tokens.aggregate import MetricsConfig
from otel_tokens.budgets.ledger import BudgetLedger
from otel_tokens.budgets.loader import load_budget_file
from otel_tokens.collector.codec import RECORD, Decoders, schema
from otel_tokens.collector.durable import Durability, PinnedClock
from otel_tokens.collector.store import Store, StoreError
from otel_tokens.pipeline import Pipeline
from otel_tokens.record import Attribution, TokenCounts, UsageRecord
from tests.test_pipeline import FOREIGN, OURS, SDK, Clock, price, request, span

BUDGETS = textwrap.dedent(
    """
    version: 1
    budgets:
      - {name: hourly, limit: {tokens: 100000}, window: 1h}
      - {name: daily-usd, limit: {usd: 50}, window: day}
      - name: per-run
        scope: {agent: coder}
        limit: {tokens: 1000000}
        window: 30d
        per_task_instance: {tokens: 5000}
    """
)


class Collector:
    """A pipeline + ledger + durable store on `data_dir`, as the collector service wires them."""

    def __init__(
        self, data_dir: Path, budgets: Path, clock: Clock, metrics: MetricsConfig | None = None
    ) -> None:
        pinned = PinnedClock(base=clock)
        self.pipeline = Pipeline(metrics, registry=CollectorRegistry(), clock=pinned, price=price)
        self.ledger = BudgetLedger(load_budget_file(budgets), clock=pinned)
        self.ledger.attach(self.pipeline)
        self.store = Store(data_dir)
        self.durability = Durability(self.store, self.pipeline, self.ledger)
        self.note = self.durability.restore()
        self.durability.start()

    def state(self) -> tuple[object, ...]:
        return self.pipeline.aggregator.state(), self.ledger.state(), self.pipeline.state()


def _record(span_id: int, tokens: int, **attribution: str) -> UsageRecord:
    return UsageRecord(
        provider="openai", request_model="gpt-4o", tokens=TokenCounts(input=tokens, output=7),
        cost_usd=tokens / 1e5, attribution=Attribution(**attribution), trace_id=9, span_id=span_id,
    )  # fmt: skip


def _workload(c: Collector, clock: Clock, start: int) -> None:
    """Ours, foreign held spans, retries, rejections, a task run, time passing between them."""
    p = c.pipeline
    p.ingest_otlp(request((OURS, span(start, 1, gen_ai__agent__name="coder"))))
    p.ingest_otlp(request((SDK, span(start + 1, 500))))  # foreign, nested: held
    clock.now += 61
    p.ingest_records([_record(start + 2, 1200, agent="coder", task_id=f"run-{start}")])
    p.ingest_records([_record(start + 2, 1200, agent="coder", task_id=f"run-{start}")])  # a retry
    p.ingest_otlp(request((FOREIGN, span(start + 3, 0))))
    p.reject_payload("undecodable_payload")
    p.reject_spans("invalid_payload", 3)  # spans of a request the receiver could not decode
    p.flush()  # the held span's window has passed: counted now, at this time
    p.ingest_otlp(request((SDK, span(start + 4, 501))))  # held across the "crash"
    clock.now += 0.5


@pytest.fixture
def budgets(tmp_path: Path) -> Path:
    path = tmp_path / "budgets.yaml"
    path.write_text(BUDGETS)
    return path


def test_journal_replay_after_a_crash_restores_the_exact_state(tmp_path: Path, budgets: Path):
    clock = Clock()
    first = Collector(tmp_path / "data", budgets, clock)
    _workload(first, clock, 100)
    first.durability.snapshot()  # part of it from a snapshot...
    _workload(first, clock, 200)  # ...the rest from the journal
    running = first.state()
    first.store.close()  # the crash: no final flush, no final snapshot

    second = Collector(tmp_path / "data", budgets, clock)
    assert "journal entries replayed" in second.note
    assert second.state() == running
    assert second.pipeline.held_spans == 1  # still waiting for its twin, with its own deadline
    # and it goes on from there: a resend is a duplicate, the held span is counted when due
    resend = [_record(202, 1200, agent="coder", task_id="run-200")]
    assert second.pipeline.ingest_records(resend).records_counted == 0
    clock.now += 3
    second.pipeline.flush()
    assert second.pipeline.held_spans == 0
    second.durability.close()


def test_the_ledger_keeps_original_arrival_times(tmp_path: Path, budgets: Path):
    clock = Clock()
    first = Collector(tmp_path / "data", budgets, clock)
    first.pipeline.ingest_records([_record(1, 60_000)])
    clock.now += 3000  # 50 minutes later
    first.pipeline.ingest_records([_record(2, 30_000)])
    first.store.close()
    clock.now += 1200  # restart 20 minutes after: the first call has left the 1h window
    second = Collector(tmp_path / "data", budgets, clock)
    hourly = {s.name: s for s in second.ledger.status()}["hourly"]
    assert hourly.used == 30_007  # not 90,014: replay counted each call at its own arrival time
    second.durability.close()


def test_idle_series_expire_as_journaled_changes_so_a_replay_agrees(tmp_path: Path, budgets: Path):
    clock = Clock()
    metrics = MetricsConfig(series_idle_seconds=60)
    first = Collector(tmp_path / "data", budgets, clock, metrics)
    first.pipeline.ingest_records([_record(1, 100, agent="gone-quiet")])
    clock.now += 120
    generate_latest(first.pipeline.registry)  # a scrape: not a change, so it expires nothing
    first.pipeline.flush()  # the periodic sweep, journaled: the idle series leaves here
    first.pipeline.ingest_records([_record(2, 5, agent="gone-quiet")])  # and comes back from 0
    series = first.pipeline.aggregator.snapshot().series
    assert [sum(s.tokens) for s in series.values()] == [5 + 7]
    running = first.state()
    first.store.close()
    assert Collector(tmp_path / "data", budgets, clock, metrics).state() == running


def test_a_clean_restart_keeps_the_extractor_self_metrics(tmp_path: Path, budgets: Path):
    clock = Clock()
    first = Collector(tmp_path / "data", budgets, clock)
    contradicting = span(1, gen_ai__usage__output_tokens=10, gen_ai__usage__reasoning__output_tokens=50)
    assert first.pipeline.ingest_otlp(request((OURS, contradicting))).records_counted == 1
    kept = first.pipeline.state().extract_stats
    assert sum(kept[0].values()) == 1  # reasoning > output, made consistent and counted
    first.durability.close()
    second = Collector(tmp_path / "data", budgets, clock)
    assert second.pipeline.state().extract_stats == kept
    second.durability.close()


def test_an_export_after_the_final_snapshot_is_refused_not_acknowledged(tmp_path: Path, budgets: Path):
    c = Collector(tmp_path / "data", budgets, Clock())
    c.durability.close()  # what stop() does after the final flush
    with pytest.raises(StoreError, match="shutting down; resend"):  # the exporter resends it
        c.pipeline.ingest_otlp(request((OURS, span(7))))


def test_a_second_collector_on_the_same_data_dir_is_refused(tmp_path: Path):
    store = Store(tmp_path / "data")
    with pytest.raises(StoreError, match="in use by another collector"):
        Store(tmp_path / "data")
    store.close()
    Store(tmp_path / "data").close()  # released on close (and by the OS on kill -9)


def test_a_record_written_by_an_older_or_newer_version_still_reads():
    record = _record(5, 1000, agent="coder")
    record.failed_steps = ("pricing",)
    values = RECORD.encode(record)
    written = schema()
    written["UsageRecord"] = [*written["UsageRecord"], "a_field_from_the_future"]
    assert Decoders(written).record([*values, "ignored"]) == record
    older = schema()
    older["UsageRecord"] = [n for n in older["UsageRecord"] if n != "ours"]
    without = [v for n, v in zip(schema()["UsageRecord"], values, strict=True) if n != "ours"]
    assert Decoders(older).record(without) == record  # the missing field takes its default


def test_any_string_a_sender_can_send_survives_the_journal(tmp_path: Path, budgets: Path):
    clock = Clock()
    first = Collector(tmp_path / "data", budgets, clock)
    odd = _record(1, 10, agent="lone \ud800 surrogate, 日本語, \x00")
    assert first.pipeline.ingest_records([odd]).records_counted == 1
    running = first.state()
    first.store.close()
    assert Collector(tmp_path / "data", budgets, clock).state() == running


def test_unusable_or_unreadable_data_dirs_stop_start_up_with_the_reason(tmp_path: Path, budgets: Path):
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("")
    with pytest.raises(StoreError, match="not-a-dir: cannot open the state database"):
        Store(a_file)
    clock = Clock()
    first = Collector(tmp_path / "data", budgets, clock)
    first.pipeline.ingest_records([_record(1, 10)])
    first.store.run(lambda db: db.execute("UPDATE journal SET entry = x'7b7b'"))  # "{{": not JSON
    first.store.close()
    with pytest.raises(StoreError, match=r"kept state cannot be read .* move the directory aside"):
        Collector(tmp_path / "data", budgets, clock)


def test_an_entry_that_cannot_be_encoded_fails_its_export_alone(tmp_path: Path):
    store = Store(tmp_path / "data").start()

    def broken() -> bytes:
        raise RuntimeError("a bug in one entry")

    bad, good = store.append(broken), store.append(lambda: b"{}")
    with pytest.raises(StoreError, match=f"entry {bad} could not be encoded"):
        store.wait(bad)
    store.wait(good)  # later exports are not stuck behind it
    store.close()

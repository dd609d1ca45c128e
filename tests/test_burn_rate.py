"""The status burn rate: a budget's use over the trailing hour (the forecast rule's lookback) per hour,
from the collector's exact ledger — not the window's use averaged over the collector's uptime, which
read ">999%" / "1.3h left" right after a start and overstated after a data-dir restore.

`summary()` is what `otel-tokens status` and the status page read (`/api/v1/summary`); the ledger
runs on an injected clock, and the restored collector on the real durable store.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from otel_tokens.budgets.ledger import BudgetLedger
from otel_tokens.budgets.loader import load_budget_file
from otel_tokens.collector.durable import Durability, PinnedClock
from otel_tokens.collector.store import Store
from otel_tokens.ops.outlook import MIN_RATE_SECONDS
from otel_tokens.ops.summary import summary
from otel_tokens.pipeline import Pipeline
from otel_tokens.record import Attribution, TokenCounts, UsageRecord
from tests.test_pipeline import Clock

BUDGETS = textwrap.dedent(
    """
    version: 1
    budgets:
      - {name: daily, limit: {tokens: 1000000}, window: 1d}
      - {name: monthly, limit: {tokens: 10000000}, window: month}
      - name: slow
        limit: {tokens: 1000000}
        window: 1d
        forecast: {lookback: 6h}
    """
)


@pytest.fixture
def budgets(tmp_path: Path) -> Path:
    path = tmp_path / "budgets.yaml"
    path.write_text(BUDGETS)
    return path


def call(span_id: int, tokens: int) -> UsageRecord:
    return UsageRecord(
        provider="openai", request_model="gpt-4o", tokens=TokenCounts(input=tokens),
        attribution=Attribution(agent="a"), trace_id=7, span_id=span_id,
    )  # fmt: skip


def rates(ledger: BudgetLedger, started_at: float, now: float) -> dict[str, dict[str, Any]]:
    document = summary(CollectorRegistry(), ledger, started_at=started_at, now=now)
    return {b["name"]: b for b in document["budgets"]}


def test_a_just_started_collector_shows_no_rate_until_minutes_are_counted(budgets: Path) -> None:
    clock = Clock()
    started = clock.now
    ledger = BudgetLedger(load_budget_file(budgets), clock=clock)
    clock.now += 1
    ledger.observe(call(1, 5000))
    first_second = rates(ledger, started, clock.now)["daily"]
    # the old average (5000 tokens over 1 s of uptime) read 18M tokens/h, ">999%" at the day's end
    assert (first_second["rate_per_hour"], first_second["projected"], first_second["seconds_left"]) == (
        None, None, None,
    )  # fmt: skip
    clock.now = started + MIN_RATE_SECONDS - 1
    assert rates(ledger, started, clock.now)["daily"]["rate_per_hour"] is None
    clock.now = started + 600
    ten_minutes = rates(ledger, started, clock.now)
    assert ten_minutes["daily"]["rate_per_hour"] == pytest.approx(5000 * 6)
    assert ten_minutes["daily"]["projected"] == pytest.approx(5000 * 6 * 24)  # rolling: rate x window
    assert ten_minutes["daily"]["seconds_left"] == pytest.approx((1_000_000 - 5000) / (5000 / 600))


def test_the_rate_is_the_trailing_hours_use_not_the_windows_average(budgets: Path) -> None:
    clock = Clock()
    started = clock.now
    ledger = BudgetLedger(load_budget_file(budgets), clock=clock)
    ledger.observe(call(1, 90_000))  # a burst at start-up
    clock.now += 2 * 3600
    ledger.observe(call(2, 1000))  # then a trickle
    clock.now += 60
    now = rates(ledger, started, clock.now)
    assert now["daily"]["used"] == 91_000
    assert now["daily"]["rate_per_hour"] == pytest.approx(1000)  # not 91k over 2h = 45.5k/h
    assert now["monthly"]["rate_per_hour"] == pytest.approx(1000)  # calendar periods alike
    # its own lookback, 6h, of which 2h01m are counted: both calls over that time
    assert now["slow"]["rate_per_hour"] == pytest.approx(91_000 * 3600 / (2 * 3600 + 60))


class _Durable:
    """A pipeline, ledger and durable store in `data_dir`, wired as the collector service wires them."""

    def __init__(self, data_dir: Path, budgets: Path, clock: Clock) -> None:
        pinned = PinnedClock(base=clock)
        self.pipeline = Pipeline(registry=CollectorRegistry(), clock=pinned)
        self.ledger = BudgetLedger(load_budget_file(budgets), clock=pinned)
        self.ledger.attach(self.pipeline)
        self.store = Store(data_dir)
        self.durability = Durability(self.store, self.pipeline, self.ledger)
        self.durability.restore()
        self.durability.start()


@pytest.mark.parametrize("shutdown", ["clean", "crash"])
def test_a_restored_collector_reads_the_rate_it_had_not_an_overstated_one(
    tmp_path: Path, budgets: Path, shutdown: str
) -> None:
    clock = Clock()
    started = clock.now
    first = _Durable(tmp_path / "data", budgets, clock)
    for minute in range(50):  # 1000 tokens a minute for 50 minutes
        first.pipeline.ingest_records([call(minute + 1, 1000)])
        clock.now += 60
        if minute == 25:
            first.durability.snapshot()  # half from the snapshot, half from the journal
    before = rates(first.ledger, started, clock.now)["daily"]
    assert before["rate_per_hour"] == pytest.approx(60_000)
    if shutdown == "clean":
        first.durability.close()
    else:
        first.store.close()  # kill -9: no final snapshot

    clock.now += 5  # restarted 5 s later
    second = _Durable(tmp_path / "data", budgets, clock)
    after = rates(second.ledger, clock.now, clock.now)["daily"]  # its uptime: 0 s
    assert after["used"] == 50_000
    # the old average: 50k over 5 s of uptime = 36M tokens/h; the last hour's use is the same as before
    assert after["rate_per_hour"] == pytest.approx(50_000 * 3600 / (50 * 60 + 5))
    second.durability.close()

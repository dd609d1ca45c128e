"""The exact budget ledger: what a budget has used, per window, under a clock the test drives."""

from __future__ import annotations

import dataclasses
import itertools
import threading
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from otel_tokens.budgets import BudgetFile, parse_budget_text
from otel_tokens.budgets.ledger import BudgetLedger, BudgetStatus
from otel_tokens.budgets.windows import RollingWindow, period_bounds
from otel_tokens.pipeline import Pipeline
from otel_tokens.record import Attribution, TokenCounts, UsageRecord
from otel_tokens.task_instances import TaskInstanceTable

BERLIN = ZoneInfo("Europe/Berlin")
_span_ids = itertools.count(1)


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(
    tokens: int = 100,
    *,
    agent: str | None = "support",
    task: str | None = "triage",
    task_id: str | None = None,
    user: str | None = None,
    model: str = "gpt-4o",
    provider: str = "openai",
    cost: float | None = None,
    counts: TokenCounts | None = None,
) -> UsageRecord:
    return UsageRecord(
        provider=provider,
        request_model=model,
        tokens=counts or TokenCounts(input=tokens),
        cost_usd=cost,
        attribution=Attribution(agent=agent, task=task, task_id=task_id, user=user),
        trace_id=1,
        span_id=next(_span_ids),  # distinct calls, so the pipeline's dedupe keeps them all
        ours=True,
    )


def ledger_for(
    budgets_yaml: str, clock: Clock, *, instances_top_n: int = 20, instance_idle_seconds: float = 3600.0
) -> BudgetLedger:
    return BudgetLedger(
        parse_budget_text(budgets_yaml),
        clock=clock,
        instances_top_n=instances_top_n,
        instance_idle_seconds=instance_idle_seconds,
    )


def used(ledger: BudgetLedger) -> dict[str, float]:
    return {s.name: s.used for s in ledger.status()}


def test_rolling_window_rolls_off_exactly_at_the_bucket_edge():
    clock = Clock(3600.0 * 1000)  # a bucket boundary
    ledger = ledger_for("budgets: [{name: h, limit: {tokens: 1000}, window: 1h}]", clock)
    clock.now += 30
    ledger.observe(record(100))  # in the 1-minute bucket [0s, 60s)
    clock.now += 1800
    ledger.observe(record(50))
    clock.now = 3600.0 * 1000 + 3600 + 59.9  # the first bucket's end is still inside the window
    assert used(ledger) == {"h": 150}
    clock.now = 3600.0 * 1000 + 3600 + 60
    assert used(ledger) == {"h": 50}
    clock.now += 1800
    assert used(ledger) == {"h": 0}


def test_long_windows_use_coarser_buckets_so_memory_stays_bounded():
    window = RollingWindow(30 * 86400)
    assert window.bucket_seconds == 1800  # 30d / 1440; the documented error bound at the edge
    for minute in range(40 * 24 * 60):  # 40 days of one call per minute
        window.add(1, minute * 60.0)
    assert len(window._buckets) <= 1441
    now = (40 * 24 * 60 - 1) * 60.0
    assert 30 * 24 * 60 <= window.used(now) <= 30 * 24 * 60 + 30


def test_calendar_day_resets_at_local_midnight_not_utc():
    start = datetime(2024, 6, 10, 23, 30, tzinfo=BERLIN).timestamp()
    clock = Clock(start)
    ledger = ledger_for(
        "timezone: Europe/Berlin\nbudgets: [{name: d, limit: {tokens: 1000}, window: day}]", clock
    )
    ledger.observe(record(300))
    clock.now = datetime(2024, 6, 10, 23, 59, 59, tzinfo=BERLIN).timestamp()
    assert used(ledger) == {"d": 300}
    clock.now = datetime(2024, 6, 11, 0, 0, tzinfo=BERLIN).timestamp()  # 22:00 UTC
    assert used(ledger) == {"d": 0}
    ledger.observe(record(10))
    clock.now = datetime(2024, 6, 11, 2, 30, tzinfo=BERLIN).timestamp()  # after UTC midnight
    assert used(ledger) == {"d": 10}
    (status,) = ledger.status()
    assert status.remaining_seconds == 21.5 * 3600


def test_calendar_day_spans_a_dst_change():
    # 2024-03-31 in Berlin: clocks jump from 02:00 to 03:00, the day lasts 23 hours.
    noon = datetime(2024, 3, 31, 12, tzinfo=BERLIN).timestamp()
    start, end = period_bounds("day", noon, BERLIN)
    assert end - start == 23 * 3600
    clock = Clock(datetime(2024, 3, 31, 0, 30, tzinfo=BERLIN).timestamp())
    ledger = ledger_for(
        "timezone: Europe/Berlin\nbudgets: [{name: d, limit: {tokens: 1000}, window: day}]", clock
    )
    ledger.observe(record(100))
    clock.now += 22 * 3600  # 23:30 local, after the jump: still the same day
    assert used(ledger) == {"d": 100}
    clock.now += 3600  # 00:30 on April 1st
    assert used(ledger) == {"d": 0}
    # And the autumn change makes a 25-hour day.
    start, end = period_bounds("day", datetime(2024, 10, 27, 12, tzinfo=BERLIN).timestamp(), BERLIN)
    assert end - start == 25 * 3600


def test_calendar_week_starts_monday_and_month_on_the_first():
    wednesday = datetime(2024, 2, 28, 15, tzinfo=BERLIN).timestamp()
    start, end = period_bounds("week", wednesday, BERLIN)
    assert datetime.fromtimestamp(start, BERLIN) == datetime(2024, 2, 26, tzinfo=BERLIN)
    assert datetime.fromtimestamp(end, BERLIN) == datetime(2024, 3, 4, tzinfo=BERLIN)
    start, end = period_bounds("month", wednesday, BERLIN)
    assert datetime.fromtimestamp(start, BERLIN) == datetime(2024, 2, 1, tzinfo=BERLIN)
    assert datetime.fromtimestamp(end, BERLIN) == datetime(2024, 3, 1, tzinfo=BERLIN)
    start, end = period_bounds("month", datetime(2024, 12, 31, 23, tzinfo=BERLIN).timestamp(), BERLIN)
    assert datetime.fromtimestamp(end, BERLIN) == datetime(2025, 1, 1, tzinfo=BERLIN)


def test_token_type_restriction_uses_the_disjoint_split():
    ledger = ledger_for(
        "budgets:\n"
        "  - {name: all, limit: {tokens: 10000}, window: 1d}\n"
        "  - {name: fresh-input, limit: {tokens: 10000, token_types: [input]}, window: 1d}\n"
        "  - {name: thinking, limit: {tokens: 10000, token_types: [output, reasoning]}, window: 1d}\n"
        "  - {name: cached, limit: {tokens: 10000, token_types: [cache_read]}, window: 1d}\n",
        Clock(),
    )
    # semconv meaning: input 1000 includes 600 cache read + 100 cache write;
    # output 500 includes 200 reasoning.
    counts = TokenCounts(input=1000, output=500, cache_read=600, cache_write=100, reasoning=200)
    ledger.observe(record(counts=counts))
    assert used(ledger) == {"all": 1500, "fresh-input": 300, "thinking": 500, "cached": 600}


def test_usd_limits_count_cost_and_unpriced_calls_count_nothing():
    ledger = ledger_for("budgets: [{name: usd, limit: {usd: 2}, window: month}]", Clock())
    ledger.observe(record(cost=0.75))
    ledger.observe(record(cost=None))
    ledger.observe(record(cost=0.85))
    (status,) = ledger.status()
    assert (status.unit, status.limit, status.state) == ("usd", 2.0, "warning")
    assert status.used == pytest.approx(1.6)
    assert status.ratio == pytest.approx(0.8)


def test_scope_matching():
    ledger = ledger_for(
        "budgets:\n"
        "  - {name: global, limit: {tokens: 1000000}, window: 1d}\n"
        "  - {name: support, scope: {agent: support}, limit: {tokens: 1000000}, window: 1d}\n"
        "  - {name: mini, scope: {model: gpt-4o-mini}, limit: {tokens: 1000000}, window: 1d}\n"
        "  - name: support-claude-alice\n"
        "    scope: {agent: support, provider: anthropic, user: alice}\n"
        "    limit: {tokens: 1000000}\n"
        "    window: 1d\n"
        "  - {name: unattributed, scope: {agent: unknown}, limit: {tokens: 1000000}, window: 1d}\n",
        Clock(),
    )
    ledger.observe(record(1, agent="support"))
    ledger.observe(record(10, agent="research", model="gpt-4o-mini"))
    ledger.observe(record(100, agent="support", provider="anthropic", user="alice"))
    ledger.observe(record(1000, agent="support", provider="anthropic", user="bob"))
    ledger.observe(record(10000, agent=None))
    assert used(ledger) == {
        "global": 11111,
        "support": 1101,
        "mini": 10,
        "support-claude-alice": 100,
        "unattributed": 10000,
    }


def test_status_states_follow_warn_at_and_limit():
    ledger = ledger_for("budgets: [{name: b, limit: {tokens: 100}, window: 1h, warn_at: 0.5}]", Clock())
    states = []
    for tokens in (49, 1, 49, 1):
        ledger.observe(record(tokens))
        states.append(ledger.status()[0].state)
    assert states == ["ok", "warning", "warning", "exceeded"]
    status = ledger.status()[0]
    assert isinstance(status, BudgetStatus)
    assert dataclasses.asdict(status)["ratio"] == 1.0  # as /api/v1/budgets serves it


def test_task_instances_are_tracked_top_n_and_forgotten_when_idle():
    clock = Clock()
    ledger = ledger_for(
        "budgets: [{name: b, limit: {tokens: 1000000}, window: 1d, per_task_instance: {tokens: 100}}]",
        clock,
        instances_top_n=2,
        instance_idle_seconds=600,
    )
    for task_id, tokens in (("a", 10), ("b", 500), ("c", 50), ("b", 5)):
        ledger.observe(record(tokens, task_id=task_id))
    ledger.observe(record(7, task_id=None))  # no instance: counts for the budget only
    assert ledger.task_instances("b") == [("b", "support", "triage", 505), ("c", "support", "triage", 50)]
    clock.now += 300
    ledger.observe(record(1, task_id="a"))
    clock.now += 301  # b and c idle for 601 s: their runs are over
    assert ledger.task_instances("b") == [("a", "support", "triage", 11)]


def test_instance_table_is_bounded():
    table = TaskInstanceTable(idle_seconds=1e9, max_tracked=100)
    for i in range(1000):
        table.add(f"t{i}", "a", "t", float(i), 0.0, float(i))
    assert len(table) == 100
    assert [t.task_id for t in table.top(3, 1000.0)] == ["t999", "t998", "t997"]


def test_concurrent_observations_are_all_counted():
    ledger = ledger_for("budgets: [{name: b, limit: {tokens: 1000000000}, window: 1h}]", Clock())

    def work() -> None:
        for _ in range(2000):
            ledger.observe(record(3))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert used(ledger) == {"b": 8 * 2000 * 3}


BUDGETS = """
budgets:
  - name: support-daily
    scope: {agent: support}
    limit: {tokens: 1000}
    window: 1d
    per_task_instance: {tokens: 100}
  - {name: all-usd, limit: {usd: 10}, window: month}
"""


def test_attach_to_a_real_pipeline_exports_the_gauges():
    clock = Clock()
    pipeline = Pipeline(registry=CollectorRegistry(), clock=clock)
    BudgetLedger(parse_budget_text(BUDGETS), clock=clock).attach(pipeline)
    pipeline.ingest_records([record(400, task_id="run-1", cost=1.25), record(150, task_id="run-2")])
    text = generate_latest(pipeline.registry).decode()
    run = 'agent="support",budget="support-daily",task="triage"'
    expected = [
        'llm_budget_used{budget="support-daily",unit="tokens",window="1d"} 550.0',
        'llm_budget_limit{budget="support-daily",unit="tokens",window="1d"} 1000.0',
        'llm_budget_usage_ratio{budget="support-daily",window="1d"} 0.55',
        'llm_budget_window_remaining_seconds{budget="support-daily",window="1d"} 86400.0',
        'llm_budget_consumed_total{budget="support-daily",unit="tokens"} 550.0',
        'llm_budget_used{budget="all-usd",unit="usd",window="month"} 1.25',
        f'llm_task_instance_tokens{{{run},task_id="run-1"}} 400.0',
        f'llm_task_instance_tokens{{{run},task_id="run-2"}} 150.0',
        'llm_task_instance_limit{budget="support-daily"} 100.0',
    ]
    for line in expected:
        assert line in text, line
    assert 'llm_task_instance_tokens{agent="support",budget="all-usd"' not in text


def test_ledger_without_budgets_is_rejected():
    with pytest.raises(ValueError):
        BudgetFile.model_validate({"budgets": []})

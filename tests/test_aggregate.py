"""Records → counters and their Prometheus exposition, read back the way Prometheus would."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from otel_tokens.aggregate import OVERFLOW, Aggregator, MetricsConfig
from otel_tokens.budgets import parse_budget_text
from otel_tokens.budgets.ledger import BudgetLedger
from otel_tokens.dedupe import DedupeConfig
from otel_tokens.exposition import TokenMetricsCollector
from otel_tokens.pipeline import Pipeline
from otel_tokens.record import Attribution, TaskCompletion, TokenCounts, UsageRecord
from tests import prom_text


def rec(
    agent: str | None = "coder",
    *,
    tokens: TokenCounts | None = None,
    cost: float | None = 0.5,
    model: str = "gpt-4o",
    status: str = "ok",
    task_id: str | None = None,
    user: str | None = None,
    estimated: bool = False,
    end: int = 0,
) -> UsageRecord:
    return UsageRecord(
        provider="openai",
        request_model=model,
        tokens=tokens if tokens is not None else TokenCounts(1000, 100, 200, 50, 10),
        cost_usd=cost,
        attribution=Attribution(agent=agent, task="fix", task_id=task_id, user=user),
        status=status,  # type: ignore[arg-type]
        estimated=estimated,
        end_time_ns=end,
    )


def scrape(agg: Aggregator) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(TokenMetricsCollector(agg))
    return {(name, tuple(sorted(labels))): v for (name, labels), v in prom_text.samples(registry).items()}


def test_config_validation_names_the_key():
    MetricsConfig().validate()
    MetricsConfig(dimensions=("agent", "user", "operation")).validate()
    bad = [
        (MetricsConfig(dimensions=("agent", "task_id")), "dimensions"),
        (MetricsConfig(dimensions=("agent", "agent")), "dimensions"),
        (MetricsConfig(max_series_per_metric=0), "max_series_per_metric"),
        (MetricsConfig(input_token_buckets=(10, 5)), "input_token_buckets"),
        (MetricsConfig(series_idle_seconds=-1), "series_idle_seconds"),
        (MetricsConfig(max_budgeted_series_per_metric=-1), "max_budgeted_series_per_metric"),
    ]
    for config, key in bad:
        with pytest.raises(ValueError, match=key):
            config.validate()


def test_dedupe_config_validation_names_the_key():
    DedupeConfig().validate()
    for dedupe, key in [
        (DedupeConfig(hold_seconds=-1), "hold_seconds"),
        (DedupeConfig(max_held_spans=0), "max_held_spans"),
        (DedupeConfig(max_remembered_spans=0), "max_remembered_spans"),
    ]:
        with pytest.raises(ValueError, match=key):
            dedupe.validate()


def test_disjoint_token_types_sum_to_the_total_and_cost_requests_add_up():
    agg = Aggregator()
    agg.add_many([rec(), rec(status="error", cost=None), rec(agent=None)])
    m = scrape(agg)
    labels = (("agent", "coder"), ("model", "gpt-4o"), ("provider", "openai"), ("task", "fix"))
    by_type = {t: m[("llm_tokens_total", tuple(sorted((*labels, ("token_type", t)))))] for t in
               ("input", "output", "cache_read", "cache_write", "reasoning")}  # fmt: skip
    assert by_type == {"input": 1500, "output": 180, "cache_read": 400, "cache_write": 100, "reasoning": 20}
    assert sum(by_type.values()) == 2 * TokenCounts(1000, 100, 200, 50, 10).total
    assert m[("llm_cost_usd_total", labels)] == 0.5
    assert m[("llm_requests_total", tuple(sorted((*labels, ("status", "ok")))))] == 1
    assert m[("llm_requests_total", tuple(sorted((*labels, ("status", "error")))))] == 1
    unknown = (("agent", "unknown"), *labels[1:])
    assert m[("llm_requests_total", tuple(sorted((*unknown, ("status", "ok")))))] == 1
    assert m[("otel_tokens_unpriced_records_total", (("model", "gpt-4o"), ("provider", "openai")))] == 1


def test_overflow_series_appears_exactly_at_the_limit_and_is_counted():
    agg = Aggregator(MetricsConfig(max_series_per_metric=3))
    agg.add_many([rec("a"), rec("b"), rec("c"), rec("a")])
    assert {labels for name, labels in scrape(agg) if name == "llm_cost_usd_total"} == {
        tuple(sorted({"agent": a, "task": "fix", "model": "gpt-4o", "provider": "openai"}.items()))
        for a in "abc"
    }
    agg.add_many([rec("d"), rec("e"), rec("b")])
    m = scrape(agg)
    keys = {dict(labels)["agent"] for name, labels in m if name == "llm_cost_usd_total"}
    assert keys == {"a", "b", "c", OVERFLOW}
    over = tuple(
        sorted({"agent": OVERFLOW, "task": OVERFLOW, "model": OVERFLOW, "provider": OVERFLOW}.items())
    )
    assert m[("llm_requests_total", tuple(sorted((*over, ("status", "ok")))))] == 2
    assert m[("otel_tokens_series_overflow_total", (("metric", "llm_tokens_total"),))] == 2
    assert m[("otel_tokens_series_overflow_total", (("metric", "llm_request_input_tokens"),))] == 2
    b = tuple(sorted({"agent": "b", "task": "fix", "model": "gpt-4o", "provider": "openai"}.items()))
    assert m[("llm_requests_total", tuple(sorted((*b, ("status", "ok")))))] == 2  # existing series still grow


def test_opt_in_dimensions_and_estimated_tokens():
    agg = Aggregator(MetricsConfig(dimensions=("agent", "user", "operation")))
    agg.add_many([rec(user="alice", estimated=True, tokens=TokenCounts(10, 5))])
    m = scrape(agg)
    labels = (("agent", "coder"), ("operation", "chat"), ("user", "alice"))
    assert m[("llm_estimated_tokens_total", labels)] == 15
    assert m[("llm_tokens_total", tuple(sorted((*labels, ("token_type", "input")))))] == 10


def test_input_histogram_buckets():
    agg = Aggregator(MetricsConfig(dimensions=("agent",), input_token_buckets=(256, 1024)))
    agg.add_many([rec(tokens=TokenCounts(256)), rec(tokens=TokenCounts(257)), rec(tokens=TokenCounts(5000))])
    m = scrape(agg)
    h = "llm_request_input_tokens"
    assert m[(f"{h}_bucket", (("agent", "coder"), ("le", "256.0")))] == 1
    assert m[(f"{h}_bucket", (("agent", "coder"), ("le", "1024.0")))] == 2
    assert m[(f"{h}_bucket", (("agent", "coder"), ("le", "+Inf")))] == 3
    assert m[(f"{h}_count", (("agent", "coder"),))] == 3
    assert m[(f"{h}_sum", (("agent", "coder"),))] == 256 + 257 + 5000


def _task_sums(agg: Aggregator, task_id: str) -> list[float]:
    """Complete one task instance; what its observation added to [count, token sum, cost sum]."""
    labels = (("agent", "coder"), ("status", "ok"), ("task", "fix"), ("verified", "none"))
    series = ("llm_task_tokens_count", "llm_task_tokens_sum", "llm_task_cost_usd_sum")

    def total(scraped: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
        """Over every `model` (a forgotten instance's is unknown, the others' gpt-4o)."""
        return sum(
            v
            for (n, ls), v in scraped.items()
            if n == name and tuple(p for p in ls if p[0] != "model") == labels
        )

    before = scrape(agg)
    agg.complete_tasks([TaskCompletion(task_id, "fix", "coder")])
    after = scrape(agg)
    return [total(after, name) - total(before, name) for name in series]


def test_task_instances_are_bounded_recent_first_and_never_a_label():
    agg = Aggregator(MetricsConfig(max_task_instances=2))
    agg.add_many([rec(task_id="t1", end=1), rec(task_id="t2", end=2), rec(task_id="t1", end=3)])
    agg.add_many([rec(task_id="t3", end=4)])  # evicts t2, the least recently active
    assert not any("t1" in str(k) for k in scrape(agg))
    total = TokenCounts(1000, 100, 200, 50, 10).total
    assert _task_sums(agg, "t2") == [1, 0, 0], "t2 was forgotten: its completion observes nothing"
    assert _task_sums(agg, "t1") == [1, 2 * total, 1.0], "t1's two calls, though it started first"
    assert _task_sums(agg, "t3") == [1, total, 0.5]


def test_unpriced_series_are_bounded():
    agg = Aggregator(MetricsConfig(max_series_per_metric=2))
    agg.add_many([rec(cost=None, model=f"m{i}") for i in range(4)])
    unpriced = agg.snapshot().unpriced
    assert unpriced[(OVERFLOW, OVERFLOW)] == 2 and len(unpriced) == 3


def test_concurrent_adds_are_exact():
    agg = Aggregator()

    def work(agent: str) -> None:
        for _ in range(500):
            agg.add(rec(agent, tokens=TokenCounts(3, 2), cost=0.25))

    threads = [threading.Thread(target=work, args=(f"a{i % 3}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = agg.snapshot()
    assert sum(sum(s.tokens) for s in snap.series.values()) == 8 * 500 * 5
    assert sum(s.requests_ok for s in snap.series.values()) == 4000
    assert sum(s.cost_usd for s in snap.series.values()) == 1000.0


GOLDEN = """\
# HELP llm_tokens_total LLM tokens by type; types are disjoint, so a sum over token_type is the total.
# TYPE llm_tokens_total counter
llm_tokens_total{agent="coder",token_type="input"} 750.0
llm_tokens_total{agent="coder",token_type="output"} 90.0
llm_tokens_total{agent="coder",token_type="cache_read"} 200.0
llm_tokens_total{agent="coder",token_type="cache_write"} 50.0
llm_tokens_total{agent="coder",token_type="reasoning"} 10.0
# HELP llm_cost_usd_total LLM cost in USD; unpriced calls add 0 (see otel_tokens_unpriced_records_total).
# TYPE llm_cost_usd_total counter
llm_cost_usd_total{agent="coder"} 0.5
# HELP llm_requests_total LLM calls, counted once each after deduplication.
# TYPE llm_requests_total counter
llm_requests_total{agent="coder",status="ok"} 1.0
# HELP llm_estimated_tokens_total Tokens counted with a tokenizer because the provider reported no usage.
# TYPE llm_estimated_tokens_total counter
# HELP llm_request_input_tokens Input tokens per request (including cache): context growth shows here.
# TYPE llm_request_input_tokens histogram
llm_request_input_tokens_bucket{agent="coder",le="256.0"} 0.0
llm_request_input_tokens_bucket{agent="coder",le="1024.0"} 1.0
llm_request_input_tokens_bucket{agent="coder",le="+Inf"} 1.0
llm_request_input_tokens_count{agent="coder"} 1.0
llm_request_input_tokens_sum{agent="coder"} 1000.0
# HELP llm_task_tokens Tokens per completed task instance (all its calls, every process); count = tasks.
# TYPE llm_task_tokens histogram
# HELP llm_task_cost_usd USD per completed task instance (unpriced calls add 0).
# TYPE llm_task_cost_usd histogram
# HELP otel_tokens_spans_received_total Spans received (all kinds).
# TYPE otel_tokens_spans_received_total counter
otel_tokens_spans_received_total 3.0
# HELP otel_tokens_spans_rejected_total Spans or payloads refused, by reason.
# TYPE otel_tokens_spans_rejected_total counter
otel_tokens_spans_rejected_total{reason="negative_token_count"} 1.0
# HELP otel_tokens_duplicates_dropped_total Usage spans dropped as another span of a counted call.
# TYPE otel_tokens_duplicates_dropped_total counter
otel_tokens_duplicates_dropped_total 1.0
# HELP otel_tokens_series_overflow_total Records sent to the __overflow__ series by the series limit.
# TYPE otel_tokens_series_overflow_total counter
# HELP otel_tokens_unpriced_records_total Records whose model has no known price (cost counted as 0).
# TYPE otel_tokens_unpriced_records_total counter
# HELP otel_tokens_verdicts_late_total Verdicts that arrived after their task was observed (too late to count)
# TYPE otel_tokens_verdicts_late_total counter
otel_tokens_verdicts_late_total 0.0
"""


def test_golden_exposition_text():
    agg = Aggregator(MetricsConfig(dimensions=("agent",), input_token_buckets=(256, 1024)))
    agg.ingest_stats.add(3, {"negative_token_count": 1}, duplicates=1)
    agg.add_many([rec()])
    registry = CollectorRegistry()
    registry.register(TokenMetricsCollector(agg))
    assert generate_latest(registry).decode() == GOLDEN


@pytest.mark.parametrize(
    "tokens",
    [
        TokenCounts(1000, 100, 200, 50, 10),
        TokenCounts(100, 10, 300, 0, 0),  # cache read above input (partial usage): clamped at 0
        TokenCounts(5, 10, 0, 9, 40),  # reasoning above output: clamped at 0
        TokenCounts(),
    ],
)
def test_token_counters_are_the_records_disjoint_split(tokens: TokenCounts):
    """The counters, the estimated total and a task's total all follow TokenCounts.disjoint()."""
    agg = Aggregator(MetricsConfig(dimensions=("agent",)))
    agg.add_many([rec(tokens=tokens, estimated=True, task_id="t1")])
    m = scrape(agg)
    for token_type, n in tokens.disjoint().items():
        assert m[("llm_tokens_total", (("agent", "coder"), ("token_type", token_type)))] == n
    assert m.get(("llm_estimated_tokens_total", (("agent", "coder"),)), 0) == tokens.total
    assert _task_sums(agg, "t1")[1] == tokens.total


def test_a_single_dimension_and_long_or_missing_labels():
    agg = Aggregator(MetricsConfig(dimensions=("model",)))
    assert agg.key_of(rec(model="m" * 300)) == ("m" * 128,)
    agg = Aggregator(MetricsConfig(dimensions=("agent", "model", "session")))
    assert agg.key_of(rec(agent=None)) == ("unknown", "gpt-4o", "unknown")


# --- series admission and expiry -----------------------------------------------------------------

BUDGETED = """
budgets:
  - name: support-daily
    scope: {agent: support}
    limit: {tokens: 100000000}
    window: 1d
"""


def _requests_by_agent(m: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for (name, labels), v in m.items():
        if name == "llm_requests_total":
            agent = dict(labels)["agent"]
            out[agent] = out.get(agent, 0) + v
    return out


def test_a_cardinality_attack_never_pushes_a_budgeted_agent_into_overflow():
    """5,000 fake agents fill the series limit; the agent budgets.yaml names is still counted under
    its own name (and so is its budget), while an unbudgeted newcomer goes to the overflow series."""
    pipeline = Pipeline(registry=CollectorRegistry(), price=lambda *_: None)
    ledger = BudgetLedger(parse_budget_text(BUDGETED))
    ledger.attach(pipeline)
    pipeline.ingest_records([rec(f"fake-{i}") for i in range(5000)])
    genuine = rec("support", tokens=TokenCounts(1234, 56))
    pipeline.ingest_records([genuine, rec("newcomer")])

    m = {
        (name, tuple(sorted(labels))): v for (name, labels), v in prom_text.samples(pipeline.registry).items()
    }
    by_agent = _requests_by_agent(m)
    assert by_agent["support"] == 1
    assert by_agent[OVERFLOW] == 5000 - 2000 + 1  # the fakes past the limit, and the newcomer
    assert "newcomer" not in by_agent and len(by_agent) == 2000 + 2
    support = {"agent": "support", "task": "fix", "model": "gpt-4o", "provider": "openai"}
    for token_type, n in genuine.tokens.disjoint().items():
        assert m[("llm_tokens_total", tuple(sorted({**support, "token_type": token_type}.items())))] == n
    assert m[("otel_tokens_series_overflow_total", (("metric", "llm_tokens_total"),))] == 3001
    assert ledger.status()[0].used == genuine.tokens.total


def test_spoofing_a_budgeted_name_is_bounded_too():
    """Budgeted names get series beyond the limit from a quota of their own, so endless task names
    under a budgeted agent cannot grow memory without bound."""
    agg = Aggregator(MetricsConfig(max_series_per_metric=10, max_budgeted_series_per_metric=5))
    agg.always_admit({"agent": ["support"]})
    agg.add_many([rec(f"fake-{i}") for i in range(10)])
    spoofed = [rec("support") for _ in range(20)]
    for i, r in enumerate(spoofed):
        r.attribution = Attribution(agent="support", task=f"task-{i}")
    agg.add_many(spoofed)
    snap = agg.snapshot()
    assert len(snap.series) == 10 + 5 + 1  # the limit, the budgeted quota, one overflow series
    assert snap.series[(OVERFLOW,) * 4].requests_ok == 15


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_idle_series_expire_so_newcomers_get_series_and_a_comeback_restarts_at_zero():
    clock = Clock()
    agg = Aggregator(MetricsConfig(max_series_per_metric=3, series_idle_seconds=60), clock=clock)
    agg.add_many([rec("a"), rec("b"), rec("c")])
    clock.now += 30
    agg.add_many([rec("a"), rec("d")])  # a stays active; d finds the limit full
    assert _requests_by_agent(scrape(agg)) == {"a": 2, "b": 1, "c": 1, OVERFLOW: 1}

    clock.now += 31  # b and c idle for 61 s
    agg.add_many([rec("e")])
    assert _requests_by_agent(scrape(agg)) == {"a": 2, "e": 1, OVERFLOW: 1}, "b and c left /metrics"

    agg.add_many([rec("b")])  # back after expiring: a new series, counting from 0
    assert _requests_by_agent(scrape(agg))["b"] == 1

    clock.now += 3600
    assert _requests_by_agent(scrape(agg)) == {}, "every idle series expired, the overflow one too"
    assert scrape(agg)[("otel_tokens_series_overflow_total", (("metric", "llm_tokens_total"),))] == 1


def test_series_never_expire_when_idle_expiry_is_off():
    clock = Clock()
    agg = Aggregator(MetricsConfig(max_series_per_metric=1, series_idle_seconds=0), clock=clock)
    agg.add_many([rec("a")])
    clock.now += 10 * 365 * 86400
    agg.add_many([rec("b")])
    assert _requests_by_agent(scrape(agg)) == {"a": 1, OVERFLOW: 1}

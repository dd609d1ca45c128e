"""Cost per verified task: `otel_tokens.verify()` and the `verified` label of the task histograms.

What a user checks: tasks whose checks passed, failed or were never checked land in
`llm_task_tokens` / `llm_task_cost_usd` under `verified="passed"|"failed"|"none"`, and each group's
`_sum` is exactly the tokens (and the cost of the tokens) the provider reported for those tasks —
whether the verdict was given inside the task's scope, after it, or before the task span arrived;
a re-sent verify span changes nothing; a verdict later than the wait is counted as late. Real
`openai` SDK against the fake provider, real SDK spans, a real collector over OTLP/HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

import otel_tokens
from otel_tokens import attribute, verify
from otel_tokens import metric_names as mn
from otel_tokens import semconv as sc
from otel_tokens.aggregate import MetricsConfig
from otel_tokens.collector import CollectorConfig, CollectorService
from otel_tokens.collector.workers import ScaledCollectorService
from otel_tokens.demo.fake_provider import FakeProvider
from otel_tokens.inprocess import TokenMetricsSpanProcessor
from otel_tokens.pipeline import Pipeline
from otel_tokens.pricing import default_price_book
from otel_tokens.record import TaskCompletion, TokenCounts, Verdict
from tests import prom_text
from tests.services import poll

MODEL = "gpt-4o-mini"
_, TOKENS_SUM, TOKENS_COUNT = mn.histogram_series(mn.TASK_TOKENS)
COST_SUM = mn.histogram_series(mn.TASK_COST)[1]


def by_verified(source: CollectorRegistry | str, name: str, model: str | None = None) -> dict[str, float]:
    """`sum by (verified) (name)`, of one model's tasks when given."""
    out: dict[str, float] = {}
    for labels, v in prom_text.series(source, name).items():
        if model is not None and dict(labels)[mn.MODEL] != model:
            continue
        verified = dict(labels)[mn.VERIFIED]
        out[verified] = out.get(verified, 0.0) + v
    return out


class Ledger:
    """What the fake provider reported, per task instance (the calls made while it ran)."""

    def __init__(self, fake: FakeProvider) -> None:
        self.fake = fake
        self.tokens: dict[str, int] = {}
        self.cost: dict[str, float] = {}

    def run(self, task_id: str, client: openai.OpenAI, prompts: int, model: str = MODEL) -> None:
        start = len(self.fake.reported)
        for i in range(prompts):
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": f"{task_id} step {i} " * (i + 3)}]
            )
        calls = self.fake.reported[start:]
        self.tokens[task_id] = sum(u.tokens.total for u in calls)
        prices = default_price_book()
        self.cost[task_id] = sum(prices.cost_usd("openai", model, u.tokens) or 0.0 for u in calls)

    def total(self, *task_ids: str) -> tuple[int, float]:
        return sum(self.tokens[t] for t in task_ids), sum(self.cost[t] for t in task_ids)


@pytest.fixture
def client(fake_provider: FakeProvider) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fake_provider.openai_base_url, api_key="k", max_retries=0) as c:
        yield c


def verify_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if sc.OTEL_TOKENS_VERIFY_PASSED in (s.attributes or {})]


# --- the API ---------------------------------------------------------------------------------------


def test_verify_needs_a_task_and_a_bool(instrumented: TracerProvider):
    with pytest.raises(ValueError, match="no task to verify"):
        verify(True)
    with pytest.raises(TypeError, match="passed must be True or False"):
        verify(1, task_id="t")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="check must be a non-empty string"):
        verify(True, task_id="t", check="")
    with pytest.raises(TypeError, match="already recorded"), verify(True, task_id="t"):
        pass


def test_the_verify_span_carries_the_task_and_the_verdict(
    instrumented: TracerProvider, span_exporter: InMemorySpanExporter
):
    with attribute(agent="coder", task="fix", task_id="bug-1"):
        verify(True)
        with pytest.raises(AssertionError, match="3 tests failed"), verify(check="pytest"):
            raise AssertionError("3 tests failed")  # the check's own exception propagates
    verify(False, task_id="bug-2", check="lint")  # outside any scope: the task named explicitly

    first, second, third = verify_spans(span_exporter)
    task_span = next(s for s in span_exporter.get_finished_spans() if s.name == "task fix")
    assert (first.name, first.kind) == ("verify tests", SpanKind.INTERNAL)
    assert first.parent is not None and first.parent.span_id == task_span.context.span_id
    assert dict(first.attributes or {}) == {
        sc.OTEL_TOKENS_TASK_ID: "bug-1",
        sc.OTEL_TOKENS_TASK: "fix",
        sc.GEN_AI_AGENT_NAME: "coder",
        sc.OTEL_TOKENS_VERIFY_CHECK: "tests",
        sc.OTEL_TOKENS_VERIFY_PASSED: True,
    }
    attrs = second.attributes or {}
    assert (second.name, attrs[sc.OTEL_TOKENS_VERIFY_PASSED], attrs[sc.ERROR_TYPE]) == (
        "verify pytest",
        False,
        "AssertionError",
    )
    assert second.status.status_code is StatusCode.ERROR
    assert task_span.status.status_code is StatusCode.UNSET, "the check failed, the task did not raise"
    assert dict(third.attributes or {}) == {
        sc.OTEL_TOKENS_TASK_ID: "bug-2",
        sc.OTEL_TOKENS_VERIFY_CHECK: "lint",
        sc.OTEL_TOKENS_VERIFY_PASSED: False,
    }


def test_not_instrumented_verify_is_silent(
    tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
):
    with attribute(task_id="t"), verify():
        pass
    verify(False, task_id="t")
    assert span_exporter.get_finished_spans() == ()


# --- the pipeline: verdicts before, with and after their task (unit, injected clock) --------------


def test_verdicts_combine_and_join_their_task_whenever_they_arrive():
    now = [100.0]
    pipe = Pipeline(MetricsConfig(verdict_wait_seconds=2.0), clock=lambda: now[0], price=lambda *_: 0.5)
    agg = pipe.aggregator

    def done(task_id: str, span_id: int) -> TaskCompletion:
        return TaskCompletion(task_id, "fix", "coder", trace_id=1, span_id=span_id)

    def verdicts() -> dict[str, int]:
        out: dict[str, int] = {}
        for key, series in agg.snapshot().task_series.items():  # by verified, over every model
            out[key[4]] = out.get(key[4], 0) + sum(series.token_buckets)
        return out

    # before: two verdicts (one failed), then the task: failed, observed at once
    pipe.ingest_records([Verdict("a", True, span_id=1), Verdict("a", False, "lint", span_id=2)])
    pipe.ingest_records([done("a", 10)])
    assert verdicts() == {"failed": 1}
    # after, within the wait: the completion waits, the verdict joins it
    pipe.ingest_records([done("b", 11)])
    now[0] += 1
    pipe.ingest_records([Verdict("b", True, span_id=3)])
    pipe.flush()
    assert verdicts() == {"failed": 1}, "observed at the end of the wait, not before"
    now[0] += 1
    pipe.flush()
    assert verdicts() == {"failed": 1, "passed": 1}
    # no verdict in time: none; a later one is late and changes nothing; a re-sent one is ignored
    pipe.ingest_records([done("c", 12)])
    now[0] += 2
    pipe.flush()
    pipe.ingest_records([Verdict("c", True, span_id=4), Verdict("b", False, span_id=3)])
    assert verdicts() == {"failed": 1, "passed": 1, "none": 1}
    assert agg.snapshot().verdicts_late == 1
    # a reused task id starts a new run: its new verdict is not late
    from otel_tokens.record import Attribution, UsageRecord

    call = UsageRecord("openai", MODEL, tokens=TokenCounts(10, 5), attribution=Attribution(task_id="c"))
    pipe.ingest_records([call, Verdict("c", True, span_id=5), done("c", 13)])
    assert verdicts() == {"failed": 1, "passed": 2, "none": 1} and agg.snapshot().verdicts_late == 1


# --- real SDK, in process ---------------------------------------------------------------------------


def test_in_process_sums_by_verified_are_what_the_provider_reported(
    instrumented: TracerProvider, client: openai.OpenAI, fake_provider: FakeProvider
):
    pipe = Pipeline()
    instrumented.add_span_processor(TokenMetricsSpanProcessor(pipe))
    ledger = Ledger(fake_provider)
    with attribute(agent="coder", task="fix", task_id="p1"):
        ledger.run("p1", client, 2)
        verify(True)
    with attribute(agent="coder", task="fix", task_id="f1"):
        ledger.run("f1", client, 3)
        with pytest.raises(AssertionError), verify(check="pytest"):
            raise AssertionError("red")
    with attribute(agent="coder", task="fix", task_id="n1"):
        ledger.run("n1", client, 1)
    with attribute(agent="coder", task="fix", task_id="p2"):  # the same task type on a bigger model
        ledger.run("p2", client, 2, model="gpt-4o")
        verify(True)

    registry = pipe.registry
    # cost per passed task by task type and model: what says whether the cheap model pays
    passed_by_model: dict[str, float] = {}
    for labels, v in prom_text.series(registry, COST_SUM).items():
        got = dict(labels)
        if got[mn.VERIFIED] == "passed" and got[mn.TASK] == "fix":
            passed_by_model[got[mn.MODEL]] = passed_by_model.get(got[mn.MODEL], 0.0) + v
    assert passed_by_model == pytest.approx({MODEL: ledger.cost["p1"], "gpt-4o": ledger.cost["p2"]})
    assert ledger.cost["p2"] > ledger.cost["p1"]
    del ledger.tokens["p2"], ledger.cost["p2"]  # the rest compares p1 / f1 / n1 alone
    for labels in list(prom_text.series(registry, TOKENS_COUNT)):
        assert dict(labels)[mn.MODEL] in (MODEL, "gpt-4o")
    for name, index in ((TOKENS_SUM, 0), (COST_SUM, 1)):
        sums = by_verified(registry, name, model=MODEL)
        assert sums.keys() == {"passed", "failed", "none"}
        for verified, task_id in (("passed", "p1"), ("failed", "f1"), ("none", "n1")):
            assert sums[verified] == pytest.approx(ledger.total(task_id)[index]), (name, verified)
    assert by_verified(registry, TOKENS_COUNT, model=MODEL) == {"passed": 1, "failed": 1, "none": 1}


# --- a real collector over OTLP/HTTP ----------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("workers", [1, 2])
def test_collector_exports_cost_per_verified_task(fake_provider: FakeProvider, workers: int):
    """Verdicts inside the scope, after the task span (a later export), before the task span (an
    earlier export), combined, re-sent, and too late — the same with 2 ingest worker processes,
    whose verdict records cross the pipe to the main process."""
    config = CollectorConfig(
        http_port=0, grpc_port=0, metrics_port=0, dedupe_hold_seconds=1.0, workers=workers
    )
    ledger = Ledger(fake_provider)
    service = CollectorService(config) if workers == 1 else ScaledCollectorService(config)
    with service as collector:
        endpoint = f"http://127.0.0.1:{collector.http_port}/v1/traces"
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(HttpExporter(endpoint=endpoint)))
        kept = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(kept))
        otel_tokens.instrument(tracer_provider=provider)
        try:
            with openai.OpenAI(base_url=fake_provider.openai_base_url, api_key="k", max_retries=0) as client:
                with attribute(agent="coder", task="fix", task_id="inside"):
                    ledger.run("inside", client, 2)
                    verify(True)
                with attribute(agent="coder", task="fix", task_id="combined"):
                    ledger.run("combined", client, 1)
                    with verify(check="pytest"):
                        pass
                    verify(False, check="lint")  # one failed check fails the task
                with attribute(agent="coder", task="fix", task_id="raised"):
                    ledger.run("raised", client, 2)
                    with pytest.raises(AssertionError), verify():
                        raise AssertionError("red")
                with attribute(agent="coder", task="fix", task_id="after"):
                    ledger.run("after", client, 1)
                provider.force_flush()  # the task span is exported before its verdict
                verify(True, task_id="after")
                verify(True, task_id="before")  # e.g. a CI job that finished first
                provider.force_flush()
                with attribute(agent="coder", task="fix", task_id="before"):
                    ledger.run("before", client, 3)
                with attribute(agent="coder", task="fix", task_id="unchecked"):
                    ledger.run("unchecked", client, 1)
                provider.force_flush()
        finally:
            otel_tokens.uninstrument()

        def observed(text: str) -> bool:
            return sum(prom_text.series(text, TOKENS_COUNT).values()) == 6

        text = poll(lambda: prom_text.scrape(collector.metrics_port), observed, what="six tasks observed")
        # the same verify span re-sent (an exporter retry) changes nothing, not even the late count
        resend = HttpExporter(endpoint=endpoint)
        resend.export([s for s in verify_spans(kept) if s.attributes[sc.OTEL_TOKENS_TASK_ID] == "inside"])  # type: ignore[index]
        verify_late = TracerProvider()
        verify_late.add_span_processor(SimpleSpanProcessor(resend))
        otel_tokens.instrument(tracer_provider=verify_late)
        try:
            verify(False, task_id="unchecked")  # after its task was observed: late
        finally:
            otel_tokens.uninstrument()
        text = poll(
            lambda: prom_text.scrape(collector.metrics_port),
            lambda t: prom_text.series(t, mn.VERDICTS_LATE) == {frozenset(): 1.0},
            what="the late verdict counted",
        )
        provider.shutdown()

    passed, failed, unverified = ("inside", "after", "before"), ("combined", "raised"), ("unchecked",)
    assert by_verified(text, TOKENS_COUNT) == {"passed": 3, "failed": 2, "none": 1}
    tokens, cost = by_verified(text, TOKENS_SUM), by_verified(text, COST_SUM)
    for verified, tasks in (("passed", passed), ("failed", failed), ("none", unverified)):
        assert tokens[verified] == ledger.total(*tasks)[0], verified
        assert cost[verified] == pytest.approx(ledger.total(*tasks)[1]), verified
    assert sum(tokens.values()) == fake_provider.reported_totals().total

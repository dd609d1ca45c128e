"""Tokens per completed task: `llm_task_tokens` / `llm_task_cost_usd` histograms.

What a user checks: a task's whole token total lands in one observation when its `attribute(task_id=...)`
scope ends, `_count` is the number of tasks completed and `_sum` is exactly what the provider
reported; nested scopes, re-sent spans and remote processes (baggage) never add a second
observation; a task that raised is `status="error"`. Real `openai` SDK against the fake provider,
real SDK spans, and once a real collector over OTLP/HTTP.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from opentelemetry import baggage, context, propagate, trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry, generate_latest

import otel_tokens
from otel_tokens import attribute
from otel_tokens import semconv as sc
from otel_tokens.aggregate import OVERFLOW, Aggregator, MetricsConfig
from otel_tokens.collector import CollectorConfig, CollectorService
from otel_tokens.demo.fake_provider import FakeProvider
from otel_tokens.exposition import TokenMetricsCollector
from otel_tokens.extract import Extractor
from otel_tokens.inprocess import TokenMetricsSpanProcessor
from otel_tokens.pipeline import Pipeline
from otel_tokens.record import Attribution, TaskCompletion, TokenCounts, UsageRecord
from tests import prom_text
from tests.services import poll

MODEL = "gpt-4o-mini"


# --- helpers -------------------------------------------------------------------------------------


def samples(source: CollectorRegistry | str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every sample called `name` in exposition text (or a registry's), by its label set."""
    return prom_text.series(source, name)


def value(source: CollectorRegistry | str, name: str, **labels: str) -> float:
    """One sample by its exact label set; a task histogram's `verified` is "none" unless given (no
    test here reports a verdict, test_verify.py does) and its `model` MODEL."""
    if name.startswith(("llm_task_tokens", "llm_task_cost_usd")):
        labels = {"model": MODEL, "verified": "none", **labels}  # every call here is to MODEL
    return samples(source, name).get(frozenset(labels.items()), 0.0)


def scrape(port: int) -> str:
    return prom_text.scrape(port)


def ask(client: openai.OpenAI, prompt: str) -> None:
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}])


def otel_tokens_baggage(ctx: context.Context, **fields: str) -> context.Context:
    """Attribution in W3C baggage, as a caller's `attribute()` scope puts it there."""
    for name, v in fields.items():
        ctx = baggage.set_baggage(sc.BAGGAGE_PREFIX + name, v, ctx)
    return ctx


def task_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if (s.attributes or {}).get(sc.OTEL_TOKENS_TASK_SCOPE)]


@pytest.fixture
def pipeline(instrumented: TracerProvider) -> Pipeline:
    """The in-process path: every span ending in this test's provider goes through a Pipeline."""
    pipe = Pipeline()
    instrumented.add_span_processor(TokenMetricsSpanProcessor(pipe))
    return pipe


@pytest.fixture
def client(fake_provider: FakeProvider) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fake_provider.openai_base_url, api_key="k", max_retries=0) as c:
        yield c


def make_task_span(
    task_id: str | None = "t-1",
    extra: dict[str, Any] | None = None,
    *,
    error: bool = False,
    resource_agent: str | None = None,
) -> ReadableSpan:
    """A finished task span as `attribute()` makes it, from a real TracerProvider."""
    exporter = InMemorySpanExporter()
    resource = Resource.create({sc.GEN_AI_AGENT_NAME: resource_agent} if resource_agent else {})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    attributes: dict[str, Any] = {sc.OTEL_TOKENS_TASK_SCOPE: True, sc.OTEL_TOKENS_TASK: "triage"}
    attributes.update(extra or {})
    if task_id is not None:
        attributes[sc.OTEL_TOKENS_TASK_ID] = task_id
    span = provider.get_tracer(sc.INSTRUMENTATION_SCOPE).start_span("task triage", attributes=attributes)
    if error:
        span.set_status(trace.Status(StatusCode.ERROR, "ValueError"))
    span.end()
    (finished,) = exporter.get_finished_spans()
    return finished


class _Outcomes:
    """The batch `Extractor.extract_otlp` fills (the pipeline's has the same two members)."""

    def __init__(self) -> None:
        self.spans_received = 0
        self.outcomes: list[object] = []

    def add(self, outcome: object) -> None:
        self.outcomes.append(outcome)


def from_otlp(span: ReadableSpan) -> object:
    """The collector's path: OTLP bytes as the exporter encodes them, decoded, extracted."""
    request = ExportTraceServiceRequest.FromString(encode_spans([span]).SerializeToString())
    batch = _Outcomes()
    Extractor(price=lambda *_: None).extract_otlp(request, batch)
    assert batch.spans_received == 1
    return batch.outcomes[0] if batch.outcomes else None


def rec(task_id: str, tokens: TokenCounts, cost: float | None = 0.01, **who: str) -> UsageRecord:
    attribution = Attribution(
        agent=who.get("agent", "support"), task=who.get("task", "triage"), task_id=task_id
    )
    return UsageRecord("openai", MODEL, tokens=tokens, cost_usd=cost, attribution=attribution)


# --- extraction (unit) ---------------------------------------------------------------------------


@pytest.mark.parametrize("adapter", ["sdk", "otlp"])
def test_task_span_becomes_a_completion_in_both_adapters(adapter: str):
    ok = make_task_span("t-1", {sc.GEN_AI_AGENT_NAME: "support"})
    failed = make_task_span("t-2", {sc.GEN_AI_AGENT_NAME: "support"}, error=True)
    extract = Extractor(price=lambda *_: None).from_readable_span if adapter == "sdk" else from_otlp
    got_ok, got_failed = extract(ok), extract(failed)
    assert isinstance(got_ok, TaskCompletion) and isinstance(got_failed, TaskCompletion)
    assert (got_ok.task_id, got_ok.task, got_ok.agent, got_ok.status) == ("t-1", "triage", "support", "ok")
    assert (got_failed.task_id, got_failed.status) == ("t-2", "error")
    context_ = ok.get_span_context()
    assert context_ is not None
    assert (got_ok.trace_id, got_ok.span_id, got_ok.end_time_ns) == (
        context_.trace_id,
        context_.span_id,
        ok.end_time,
    )


@pytest.mark.parametrize("adapter", ["sdk", "otlp"])
def test_resource_agent_fills_a_task_span_without_one(adapter: str):
    span = make_task_span("t-1", resource_agent="deployed-agent")
    extract = Extractor(price=lambda *_: None).from_readable_span if adapter == "sdk" else from_otlp
    got = extract(span)
    assert isinstance(got, TaskCompletion) and got.agent == "deployed-agent"


@pytest.mark.parametrize("adapter", ["sdk", "otlp"])
def test_spans_without_the_marker_or_a_task_id_are_still_skipped(adapter: str):
    extract = Extractor(price=lambda *_: None).from_readable_span if adapter == "sdk" else from_otlp
    assert extract(make_task_span(None)) is None  # marker, but nothing to complete
    assert extract(make_task_span("t-1", {sc.OTEL_TOKENS_TASK_SCOPE: "yes"})) is None  # not the bool
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    attrs = {sc.OTEL_TOKENS_TASK_ID: "t-1", sc.GEN_AI_AGENT_NAME: "a"}  # attribution only, no marker
    provider.get_tracer("x").start_span("agent step", attributes=attrs).end()
    assert extract(exporter.get_finished_spans()[0]) is None


# --- aggregation (unit) --------------------------------------------------------------------------


def test_completion_observes_the_instance_total_once_and_forgets_it():
    agg = Aggregator()
    first, second = TokenCounts(1000, 200, 300), TokenCounts(50, 5)
    agg.add_many([rec("t-1", first, 0.5), rec("t-1", second, 0.25), rec("t-2", TokenCounts(7, 3), None)])
    done = TaskCompletion("t-1", "triage", "support", trace_id=1, span_id=11)
    assert agg.complete_tasks([done]) == 1
    assert agg.complete_tasks([done]) == 0, "a re-sent task span is not observed twice"

    series = agg.snapshot().task_series[("support", "triage", "gpt-4o-mini", "ok", "none")]
    assert series.token_sum == first.total + second.total and series.cost_sum == 0.75
    assert sum(series.token_buckets) == 1 and sum(series.cost_buckets) == 1

    # a later record of t-1 counts in the counters as usual, and in no histogram
    agg.add(rec("t-1", TokenCounts(10, 10)))
    assert (
        agg.snapshot().task_series[("support", "triage", "gpt-4o-mini", "ok", "none")].token_sum
        == first.total + second.total
    )

    # t-1 was forgotten when it completed, t-2 was not: completing both now observes only the call
    # t-1 made after its completion (20), and t-2's (10)
    again = [
        TaskCompletion("t-1", "triage", "support", trace_id=1, span_id=12),
        TaskCompletion("t-2", "triage", "support"),
    ]
    assert agg.complete_tasks(again) == 2
    series = agg.snapshot().task_series[("support", "triage", "gpt-4o-mini", "ok", "none")]
    assert series.token_sum == first.total + second.total + 20 + 10


def test_failed_unknown_and_unlabelled_completions():
    agg = Aggregator()
    agg.add(rec("t-2", TokenCounts(7, 3), agent="coder", task="fix"))
    agg.complete_tasks(
        [
            TaskCompletion("t-2", None, None, "error", trace_id=1, span_id=2),  # labels from the totals
            TaskCompletion("t-3", "fix", "coder", trace_id=1, span_id=3),  # no call counted: observed as 0
        ]
    )
    task_series = agg.snapshot().task_series
    assert task_series[("coder", "fix", "gpt-4o-mini", "error", "none")].token_sum == 10
    assert task_series[("coder", "fix", "unknown", "ok", "none")].token_sum == 0  # no call: no model
    assert sum(task_series[("coder", "fix", "unknown", "ok", "none")].token_buckets) == 1


def test_task_histograms_are_bounded_by_the_series_limit():
    agg = Aggregator(MetricsConfig(max_series_per_metric=2))
    agg.complete_tasks([TaskCompletion(f"t-{i}", f"task-{i}", "a", span_id=i + 1) for i in range(5)])
    task_series = agg.snapshot().task_series
    assert len(task_series) == 3
    assert sum(task_series[(OVERFLOW,) * 5].token_buckets) == 3
    assert agg.snapshot().series_overflow == {"llm_task_tokens": 3, "llm_task_cost_usd": 3}


def test_bucket_bounds_are_validated():
    with pytest.raises(ValueError, match="task_token_buckets"):
        MetricsConfig(task_token_buckets=(10, 5)).validate()
    with pytest.raises(ValueError, match="task_cost_buckets"):
        MetricsConfig(task_cost_buckets=()).validate()


GOLDEN = """\
# HELP llm_task_tokens Tokens per completed task instance (all its calls, every process); count = tasks.
# TYPE llm_task_tokens histogram
llm_task_tokens_bucket{agent="s",le="1000.0",model="gpt-4o-mini",status="ok",task="t",verified="none"} 0.0
llm_task_tokens_bucket{agent="s",le="100000.0",model="gpt-4o-mini",status="ok",task="t",verified="none"} 1.0
llm_task_tokens_bucket{agent="s",le="+Inf",model="gpt-4o-mini",status="ok",task="t",verified="none"} 2.0
llm_task_tokens_count{agent="s",model="gpt-4o-mini",status="ok",task="t",verified="none"} 2.0
llm_task_tokens_sum{agent="s",model="gpt-4o-mini",status="ok",task="t",verified="none"} 201500.0
# HELP llm_task_cost_usd USD per completed task instance (unpriced calls add 0).
# TYPE llm_task_cost_usd histogram
llm_task_cost_usd_bucket{agent="s",le="0.1",model="gpt-4o-mini",status="ok",task="t",verified="none"} 1.0
llm_task_cost_usd_bucket{agent="s",le="+Inf",model="gpt-4o-mini",status="ok",task="t",verified="none"} 2.0
llm_task_cost_usd_count{agent="s",model="gpt-4o-mini",status="ok",task="t",verified="none"} 2.0
llm_task_cost_usd_sum{agent="s",model="gpt-4o-mini",status="ok",task="t",verified="none"} 2.05
"""


def test_golden_exposition_text():
    config = MetricsConfig(task_token_buckets=(1000, 100_000), task_cost_buckets=(0.1,))
    agg = Aggregator(config)
    who = {"agent": "s", "task": "t"}  # short names: the golden lines stay readable
    agg.add_many(
        [rec("a", TokenCounts(1500), 0.05, **who), rec("b", TokenCounts(150_000, 50_000), 2.0, **who)]
    )
    agg.complete_tasks([TaskCompletion("a", "t", "s"), TaskCompletion("b", "t", "s")])
    registry = CollectorRegistry()
    registry.register(TokenMetricsCollector(agg))
    text = generate_latest(registry).decode()
    start = text.index("# HELP llm_task_tokens")
    assert text[start : text.index("# HELP otel_tokens_spans_received_total")] == GOLDEN


# --- the pipeline: completion waits for held foreign spans (unit, injected clock) ------------------


def test_completion_waits_for_a_held_foreign_call_of_the_task():
    """Another instrumentation's usage span nested under the task span is held for the dedupe
    window; the completion arriving with it waits for it, so the total includes it."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    foreign = provider.get_tracer("openllmetry")
    task = provider.get_tracer(sc.INSTRUMENTATION_SCOPE).start_span(
        "task triage",
        attributes={
            sc.OTEL_TOKENS_TASK_SCOPE: True,
            sc.OTEL_TOKENS_TASK_ID: "t-1",
            sc.OTEL_TOKENS_TASK: "triage",
        },
    )
    call_attrs: dict[str, Any] = {
        sc.GEN_AI_REQUEST_MODEL: MODEL,
        sc.OPENLLMETRY_PROMPT_TOKENS: 120,
        sc.OPENLLMETRY_COMPLETION_TOKENS: 30,
        sc.OTEL_TOKENS_TASK_ID: "t-1",
        sc.OTEL_TOKENS_TASK: "triage",
    }
    foreign.start_span("openai.chat", trace.set_span_in_context(task), SpanKind.CLIENT, call_attrs).end()
    task.end()

    now = [1000.0]
    pipe = Pipeline(clock=lambda: now[0], price=lambda *_: None)
    result = pipe.ingest_spans(exporter.get_finished_spans())
    assert result.tasks_completed == 1 and result.records_counted == 0  # the call is held
    assert sum(s.token_sum for s in pipe.aggregator.snapshot().task_series.values()) == 0
    assert not pipe.aggregator.snapshot().task_series, "not observed while its call is held"

    pipe.flush(now[0] + pipe.dedupe.hold_seconds)
    (series,) = pipe.aggregator.snapshot().task_series.values()
    assert series.token_sum == 150 and sum(series.token_buckets) == 1


# --- real SDK, real spans, in process -------------------------------------------------------------


def test_two_instances_of_one_task_observe_exactly_what_the_provider_reported(
    pipeline: Pipeline,
    client: openai.OpenAI,
    fake_provider: FakeProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    with attribute(agent="support", task="triage", task_id="ticket-1"):
        ask(client, "short")
    first = fake_provider.reported_totals().total
    with attribute(agent="support", task="triage", task_id="ticket-2"):
        ask(client, "a much longer question about the invoice " * 20)
        ask(client, "and a follow-up")
    assert fake_provider.reported_totals().total - first != first, "the two instances differ"

    registry = pipeline.registry
    labels = {"agent": "support", "task": "triage", "status": "ok"}
    assert value(registry, "llm_task_tokens_count", **labels) == 2
    assert value(registry, "llm_task_tokens_sum", **labels) == fake_provider.reported_totals().total
    assert value(registry, "llm_task_cost_usd_sum", **labels) == pytest.approx(
        value(registry, "llm_cost_usd_total", agent="support", task="triage", model=MODEL, provider="openai")
    )
    # traces show the task tree: each call is a child of its task's span
    spans = task_spans(span_exporter)
    assert [s.name for s in spans] == ["task triage", "task triage"]
    assert spans[0].kind is SpanKind.INTERNAL
    by_id = {s.context.span_id: s for s in spans}
    calls = [s for s in span_exporter.get_finished_spans() if s.name == f"chat {MODEL}"]
    parents = [by_id[c.parent.span_id].attributes[sc.OTEL_TOKENS_TASK_ID] for c in calls if c.parent]  # type: ignore[index]
    assert parents == ["ticket-1", "ticket-2", "ticket-2"]
    assert dict(spans[0].attributes or {}) == {
        sc.OTEL_TOKENS_TASK_SCOPE: True,
        sc.OTEL_TOKENS_TASK: "triage",
        sc.OTEL_TOKENS_TASK_ID: "ticket-1",
        sc.GEN_AI_AGENT_NAME: "support",
    }


def test_nested_scopes_of_one_task_are_one_task(
    pipeline: Pipeline,
    client: openai.OpenAI,
    fake_provider: FakeProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    with attribute(agent="planner", task="research", task_id="run-1", user="alice", session="s-1"):
        ask(client, "plan")
        with attribute(step=2):
            ask(client, "step two")
            with attribute(agent="searcher"):  # a sub-agent working on the same task instance
                ask(client, "search")
                with attribute(task_id="run-1"):  # the same id again: already in force
                    ask(client, "again")

    (span,) = task_spans(span_exporter)
    attrs = dict(span.attributes or {})
    assert (attrs[sc.OTEL_TOKENS_USER], attrs[sc.GEN_AI_CONVERSATION_ID]) == ("alice", "s-1")
    assert sc.OTEL_TOKENS_STEP not in attrs
    labels = {
        "agent": "planner",
        "task": "research",
        "model": MODEL,
        "status": "ok",
        "verified": "none",
    }  # the owning agent's task
    assert samples(pipeline.registry, "llm_task_tokens_count") == {frozenset(labels.items()): 1}
    assert value(pipeline.registry, "llm_task_tokens_sum", **labels) == fake_provider.reported_totals().total


def test_a_subtask_is_its_own_instance_nested_in_the_parent_task(
    pipeline: Pipeline,
    client: openai.OpenAI,
    fake_provider: FakeProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    """A nested scope with a new task id is a subtask: its own span (a child of the parent's) and
    its own observation. Calls are attributed to the innermost task, so the parent's total is its
    own calls only."""
    with attribute(agent="planner", task="project", task_id="p-1"):
        ask(client, "outline")
        parent_tokens = fake_provider.reported_totals().total
        with attribute(task="chapter", task_id="c-1"):
            ask(client, "write chapter one")

    chapter, project = task_spans(span_exporter)
    assert chapter.parent is not None and chapter.parent.span_id == project.context.span_id
    registry = pipeline.registry
    assert (
        value(registry, "llm_task_tokens_sum", agent="planner", task="project", status="ok") == parent_tokens
    )
    assert (
        value(registry, "llm_task_tokens_sum", agent="planner", task="chapter", status="ok")
        == fake_provider.reported_totals().total - parent_tokens
    )


def test_an_exception_escaping_the_task_marks_it_failed(
    pipeline: Pipeline,
    client: openai.OpenAI,
    fake_provider: FakeProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    with pytest.raises(ValueError, match="tool broke"), attribute(agent="coder", task="fix", task_id="bug-9"):
        ask(client, "try a fix")
        raise ValueError("tool broke")

    (span,) = task_spans(span_exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})[sc.ERROR_TYPE] == "ValueError"
    registry = pipeline.registry
    assert value(registry, "llm_task_tokens_count", agent="coder", task="fix", status="error") == 1
    assert value(registry, "llm_task_tokens_sum", agent="coder", task="fix", status="error") == (
        fake_provider.reported_totals().total
    )
    assert value(registry, "llm_task_tokens_count", agent="coder", task="fix", status="ok") == 0


def test_the_decorator_opens_one_task_span_per_call(
    pipeline: Pipeline, client: openai.OpenAI, span_exporter: InMemorySpanExporter
) -> None:
    @attribute(agent="worker", task="nightly", task_id="job-1")
    def job(fail: bool) -> None:
        ask(client, "work")
        if fail:
            raise RuntimeError("boom")

    job(False)
    with pytest.raises(RuntimeError):
        job(True)
    assert [s.status.status_code for s in task_spans(span_exporter)] == [StatusCode.UNSET, StatusCode.ERROR]


def test_concurrent_async_tasks_each_complete_their_own_total(
    pipeline: Pipeline, fake_provider: FakeProvider
) -> None:
    async def run(i: int, client: openai.AsyncOpenAI) -> None:
        with attribute(agent="support", task="triage", task_id=f"t-{i}"):
            for _ in range(2):  # interleaved with the other tasks' calls
                await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "x" * (40 * i)}]
                )
                await asyncio.sleep(0)

    async def main() -> None:
        async with openai.AsyncOpenAI(
            base_url=fake_provider.openai_base_url, api_key="k", max_retries=0
        ) as c:
            await asyncio.wait_for(asyncio.gather(*(run(i, c) for i in range(5))), timeout=30)

    asyncio.run(main())
    labels = {"agent": "support", "task": "triage", "status": "ok"}
    assert value(pipeline.registry, "llm_task_tokens_count", **labels) == 5
    assert value(pipeline.registry, "llm_task_tokens_sum", **labels) == fake_provider.reported_totals().total
    buckets = {dict(k)["le"]: v for k, v in samples(pipeline.registry, "llm_task_tokens_bucket").items()}
    assert buckets["1024.0"] == 5  # small tasks: all in the first bucket


def test_a_remote_process_that_got_the_task_in_baggage_emits_no_completion(
    pipeline: Pipeline,
    client: openai.OpenAI,
    fake_provider: FakeProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    """The callee side of a cross-process call (the real subprocess version is in
    test_zero_code.py): the caller's task arrives in baggage; the callee's own scopes, even one
    repeating the task id, do not complete the caller's task."""
    headers: dict[str, str] = {}
    caller = TracerProvider().get_tracer("caller")  # the caller's side, as its scope would propagate
    with caller.start_as_current_span("planner step"):
        ctx = otel_tokens_baggage(context.get_current(), agent="planner", task="research", task_id="run-7")
        propagate.inject(headers, ctx)
    assert "baggage" in headers and "traceparent" in headers

    token = context.attach(propagate.extract(headers))  # what an HTTP server framework does
    try:
        with attribute(agent="summariser"):
            ask(client, "summarise")
        with attribute(agent="summariser", task_id="run-7"):
            ask(client, "summarise again")
    finally:
        context.detach(token)

    assert task_spans(span_exporter) == []
    assert samples(pipeline.registry, "llm_task_tokens_count") == {}
    # the calls still count, attributed to the caller's task
    assert value(
        pipeline.registry, "llm_requests_total", agent="summariser", task="research", model=MODEL,
        provider="openai", status="ok",
    ) == 2  # fmt: skip


def test_no_task_span_while_not_instrumented(
    tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
) -> None:
    with attribute(task="t", task_id="x"):
        pass
    otel_tokens.instrument(tracer_provider=tracer_provider)
    otel_tokens.uninstrument()
    with attribute(task="t", task_id="y"):
        pass
    assert span_exporter.get_finished_spans() == ()


# --- a real collector over OTLP/HTTP ---------------------------------------------------------------


@pytest.mark.integration
def test_collector_over_otlp_http_observes_each_completed_task(fake_provider: FakeProvider):
    config = CollectorConfig(http_port=0, grpc_port=0, metrics_port=0)
    with CollectorService(config) as collector:
        provider = TracerProvider()
        exporter = HttpExporter(endpoint=f"http://127.0.0.1:{collector.http_port}/v1/traces")
        provider.add_span_processor(BatchSpanProcessor(exporter))
        otel_tokens.instrument(tracer_provider=provider)
        try:
            with openai.OpenAI(base_url=fake_provider.openai_base_url, api_key="k", max_retries=0) as client:
                with attribute(agent="support", task="triage", task_id="ticket-1"):
                    ask(client, "short")
                with attribute(agent="support", task="triage", task_id="ticket-2"):
                    ask(client, "a longer question " * 30)
                    with attribute(step=2):
                        ask(client, "follow-up")
                with pytest.raises(KeyError), attribute(agent="support", task="triage", task_id="ticket-3"):
                    ask(client, "doomed")
                    raise KeyError("missing tool")
        finally:
            otel_tokens.uninstrument()
            provider.shutdown()  # exports every span

        ok = {"agent": "support", "task": "triage", "status": "ok"}
        error = {"agent": "support", "task": "triage", "status": "error"}
        text = poll(
            lambda: scrape(collector.metrics_port),
            lambda t: sum(samples(t, "llm_task_tokens_count").values()) == 3,
            what="three task completions on /metrics",
        )
    total = fake_provider.reported_totals().total
    assert value(text, "llm_task_tokens_count", **ok) == 2
    assert value(text, "llm_task_tokens_count", **error) == 1
    assert value(text, "llm_task_tokens_sum", **error) == fake_provider.reported[-1].tokens.total
    assert value(text, "llm_task_tokens_sum", **ok) + value(text, "llm_task_tokens_sum", **error) == total
    assert sum(samples(text, "llm_tokens_total").values()) == total  # the counters agree

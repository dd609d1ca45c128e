"""Agents named the way agent frameworks name them: on an enclosing `invoke_agent` span and on the
resource (`service.name`), not with `otel_tokens.attribute()`.

What a user checks: the calls land on the agent the framework named, not on `agent="unknown"` —
from the span itself first, else the nearest `invoke_agent` ancestor (also when it arrives in a
later export batch, within the dedupe hold window), else the resource's `service.name` (which can be
turned off); totals stay exact and each call is counted once. Real SDK spans, the real `openai`
SDK against the fake provider, a real collector over OTLP/HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import otel_tokens
from otel_tokens import attribute
from otel_tokens import metric_names as mn
from otel_tokens import semconv as sc
from otel_tokens.aggregate import MetricsConfig
from otel_tokens.collector import CollectorConfig, CollectorService
from otel_tokens.collector.workers import ScaledCollectorService
from otel_tokens.demo.fake_provider import FakeProvider
from otel_tokens.instrumentation import AgentScopes
from otel_tokens.pipeline import Pipeline
from tests import prom_text
from tests.services import poll

MODEL = "gpt-4o-mini"


def requests_by(source: Any, label: str) -> dict[str, float]:
    """`sum by (label) (llm_requests_total)`."""
    out: dict[str, float] = {}
    for labels, v in prom_text.series(source, mn.REQUESTS).items():
        key = dict(labels)[label]
        out[key] = out.get(key, 0.0) + v
    return out


def agent_span(tracer: trace.Tracer, name: str, workflow: str | None = None) -> Any:
    """What an agent framework opens around an agent's run (GenAI semconv)."""
    attributes = {sc.GEN_AI_OPERATION_NAME: sc.OPERATION_INVOKE_AGENT, sc.GEN_AI_AGENT_NAME: name}
    if workflow:
        attributes[sc.GEN_AI_WORKFLOW_NAME] = workflow
    return tracer.start_as_current_span(f"invoke_agent {name}", kind=SpanKind.INTERNAL, attributes=attributes)


def foreign_usage(tracer: trace.Tracer, tokens: tuple[int, int]) -> None:
    """Another instrumentation's usage span (OpenLLMetry's dialect), a child of the current span."""
    attrs = {
        sc.GEN_AI_SYSTEM: "openai",
        sc.GEN_AI_REQUEST_MODEL: MODEL,
        sc.OPENLLMETRY_PROMPT_TOKENS: tokens[0],
        sc.OPENLLMETRY_COMPLETION_TOKENS: tokens[1],
    }
    tracer.start_span("openai.chat", kind=SpanKind.CLIENT, attributes=attrs).end()


# --- the pipeline, injected clock: an ancestor in a later batch ------------------------------------


def spans_of(provider_resource: dict[str, str] | None = None) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create(provider_resource or {}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def take(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    spans = list(exporter.get_finished_spans())
    exporter.clear()
    return spans


@pytest.mark.parametrize("ancestor_in_time", [True, False])
def test_an_ancestor_in_a_later_batch_names_the_held_call(ancestor_in_time: bool):
    provider, exporter = spans_of({sc.SERVICE_NAME: "svc"})
    framework, foreign = provider.get_tracer("framework"), provider.get_tracer("openllmetry")
    now = [1000.0]
    pipe = Pipeline(clock=lambda: now[0], price=lambda *_: 0.001)
    hold = pipe.dedupe.hold_seconds
    with agent_span(framework, "researcher", workflow="report"):
        with framework.start_as_current_span("execute_tool search"):
            foreign_usage(foreign, (120, 30))
            pipe.ingest_spans(take(exporter))  # the call, alone: its ancestors are still open
        now[0] += hold / 2 if ancestor_in_time else hold
        pipe.flush()
    pipe.ingest_spans(take(exporter))  # the tool and agent spans: a later batch
    pipe.flush(now[0] + hold)
    (key,) = pipe.aggregator.snapshot().series
    assert key == (("researcher" if ancestor_in_time else "svc"), "unknown", MODEL, "openai")


def test_precedence_span_then_ancestor_then_resource_then_nothing():
    provider, exporter = spans_of({sc.SERVICE_NAME: "svc"})
    framework, foreign = provider.get_tracer("framework"), provider.get_tracer("openllmetry")
    with agent_span(framework, "outer", workflow="other"), agent_span(framework, "inner", workflow="wf"):
        foreign_usage(foreign, (10, 1))  # the nearest invoke_agent names both
        named = {sc.GEN_AI_AGENT_NAME: "own", sc.OPENLLMETRY_PROMPT_TOKENS: 5, sc.GEN_AI_REQUEST_MODEL: MODEL}
        foreign.start_span("own", attributes=named).end()
    with framework.start_as_current_span("not an agent"):
        foreign_usage(foreign, (7, 1))
    spans = take(exporter)
    config = MetricsConfig(dimensions=(mn.AGENT, mn.WORKFLOW))
    pipe = Pipeline(config, price=lambda *_: 0.0)
    pipe.ingest_spans(spans)
    pipe.flush(float("inf"))
    assert set(pipe.aggregator.snapshot().series) == {("inner", "wf"), ("own", "unknown"), ("svc", "unknown")}
    off = Pipeline(MetricsConfig(agent_fallback_attribute=None), price=lambda *_: 0.0)
    off.ingest_spans(spans)
    off.flush(float("inf"))
    assert {k[0] for k in off.aggregator.snapshot().series} == {"inner", "own", "unknown"}


# --- our instrumentation: the current invoke_agent span names the agent ---------------------------


@pytest.fixture
def client(fake_provider: FakeProvider) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fake_provider.openai_base_url, api_key="k", max_retries=0) as c:
        yield c


def test_our_spans_take_the_agent_from_the_current_invoke_agent_span(
    instrumented: TracerProvider, span_exporter: InMemorySpanExporter, client: openai.OpenAI
):
    framework = instrumented.get_tracer("framework")
    instrumented.add_span_processor(AgentScopes())  # the application's own provider: it adds it
    with agent_span(framework, "researcher", workflow="report"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        with attribute(agent="explicit"):  # a scope that names the agent wins
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        with framework.start_as_current_span("execute_tool"), framework.start_as_current_span("step"):
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    with framework.start_as_current_span(
        "invoke_workflow report", attributes={sc.GEN_AI_OPERATION_NAME: sc.OPERATION_INVOKE_WORKFLOW,
                                              sc.GEN_AI_WORKFLOW_NAME: "nightly"}
    ):  # fmt: skip
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    calls = [s.attributes or {} for s in span_exporter.get_finished_spans() if s.name == f"chat {MODEL}"]
    assert [(c.get(sc.GEN_AI_AGENT_NAME), c.get(sc.GEN_AI_WORKFLOW_NAME)) for c in calls] == [
        ("researcher", "report"),
        ("explicit", "report"),
        ("researcher", "report"),  # two spans deeper: AgentScopes knows
        (None, "nightly"),
    ]


# --- a real collector over OTLP/HTTP ------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("workers", [1, 2])
def test_collector_attributes_framework_named_agents(fake_provider: FakeProvider, workers: int):
    """Our calls (under a tool span under invoke_agent: deeper than the current span) and another
    instrumentation's (its ancestors exported in a later batch) land on the framework's agent; calls
    outside any agent span on the service's name; every token once. With 2 ingest worker processes
    each span is extracted by either worker (one span an export), and the main process still
    amends the held call when its ancestors arrive."""
    config = CollectorConfig(http_port=0, grpc_port=0, metrics_port=0, workers=workers)
    service = CollectorService(config) if workers == 1 else ScaledCollectorService(config)
    with service as collector:
        provider = TracerProvider(resource=Resource.create({sc.SERVICE_NAME: "support-bot"}))
        endpoint = f"http://127.0.0.1:{collector.http_port}/v1/traces"
        provider.add_span_processor(SimpleSpanProcessor(HttpExporter(endpoint=endpoint)))  # one span a batch
        provider.add_span_processor(AgentScopes())
        framework, foreign = provider.get_tracer("framework"), provider.get_tracer("openllmetry")
        otel_tokens.instrument(tracer_provider=provider)
        try:
            with openai.OpenAI(base_url=fake_provider.openai_base_url, api_key="k", max_retries=0) as client:
                with agent_span(framework, "researcher"), framework.start_as_current_span("execute_tool"):
                    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a"}])
                    foreign_usage(foreign, (300, 40))
                client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "b"}])
        finally:
            otel_tokens.uninstrument()
            provider.shutdown()
        expected_total = fake_provider.reported_totals().total + 340
        text = poll(
            lambda: prom_text.scrape(collector.metrics_port),
            lambda t: sum(prom_text.series(t, mn.TOKENS).values()) == expected_total,
            what="every token on /metrics",
        )
    assert requests_by(text, mn.AGENT) == {"researcher": 2, "support-bot": 1}

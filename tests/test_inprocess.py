"""Metrics without a collector: a real TracerProvider with our span processor."""

from __future__ import annotations

import inspect
import urllib.request
from typing import Any

import anthropic
import openai
import pytest
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.util.types import AttributeValue
from prometheus_client import CollectorRegistry, generate_latest

import otel_tokens
from otel_tokens import attribute
from otel_tokens import semconv as sc
from otel_tokens.demo.fake_provider import FakeProvider
from otel_tokens.inprocess import TokenMetricsSpanProcessor
from otel_tokens.pipeline import Pipeline
from otel_tokens.record import Record, TaskCompletion, TokenCounts, UsageRecord
from otel_tokens.sinks import record_sinks
from tests import prom_text

#: anthropic >= 1.14 emits its own spans and takes an `open_telemetry` client option; 0.x does neither.
SDK_HAS_OWN_SPANS = "open_telemetry" in inspect.signature(anthropic.Anthropic.__init__).parameters
CACHED: Any = [
    {"type": "text", "text": "You are a careful assistant. " * 40, "cache_control": {"type": "ephemeral"}}
]
HELLO: Any = [{"role": "user", "content": "Summarise Hamlet in one line"}]


def _price(provider: str, model: str, tokens: TokenCounts) -> float | None:
    return None


def _tokens_by_type(text: str) -> dict[str, float]:
    return {dict(labels)["token_type"]: v for labels, v in prom_text.series(text, "llm_tokens_total").items()}


def _setup() -> tuple[TracerProvider, TokenMetricsSpanProcessor]:
    processor = TokenMetricsSpanProcessor(Pipeline(registry=CollectorRegistry(), price=_price))
    provider = TracerProvider()
    provider.add_span_processor(processor)
    return provider, processor


def test_our_call_and_the_sdk_span_inside_it_are_counted_once(fake_provider: FakeProvider):
    """The real anthropic SDK (which emits its own span of the call, nested under ours) against the
    fake provider: our record and the SDK's span meet in the deduper and count once, with our
    attribution."""
    provider, processor = _setup()
    otel_tokens.instrument(tracer_provider=provider)
    options: dict[str, Any] = {"base_url": fake_provider.anthropic_base_url, "api_key": "k", "max_retries": 0}
    if SDK_HAS_OWN_SPANS:
        options["open_telemetry"] = {"tracer_provider": provider}
    try:
        with anthropic.Anthropic(**options) as client, attribute(agent="coder"):
            client.messages.create(model="claude-sonnet-4-5", max_tokens=64, system=CACHED, messages=HELLO)
    finally:
        otel_tokens.uninstrument()
    processor.force_flush()
    text = generate_latest(processor.pipeline.registry).decode()
    reported = fake_provider.reported_totals("anthropic")
    assert reported.cache_write > 0
    assert _tokens_by_type(text) == reported.disjoint()
    assert 'agent="coder"' in text
    if SDK_HAS_OWN_SPANS:
        assert "otel_tokens_duplicates_dropped_total 1.0" in text
    spans = 2 if SDK_HAS_OWN_SPANS else 1  # ours (as its record) and the SDK's
    assert f"otel_tokens_spans_received_total {spans}.0" in text
    provider.shutdown()


def test_our_records_are_counted_without_reading_our_spans(fake_provider: FakeProvider):
    """The processor takes the record the call built: our span's attributes are not read back (here
    they are wiped before the span ends, and the call is still counted, exactly)."""
    provider, processor = _setup()
    wiped: list[str] = []

    class Wipe(SpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            if (span.attributes or {}).get(sc.OTEL_TOKENS_MARKER):
                wiped.append(span.name)
                span._attributes = {sc.OTEL_TOKENS_MARKER: True}  # type: ignore[attr-defined]

    wipe_first = TracerProvider()
    wipe_first.add_span_processor(Wipe())
    wipe_first.add_span_processor(processor)
    otel_tokens.instrument(tracer_provider=wipe_first)
    try:
        with openai.OpenAI(base_url=fake_provider.openai_base_url, api_key="k", max_retries=0) as client:
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    finally:
        otel_tokens.uninstrument()
    text = generate_latest(processor.pipeline.registry).decode()
    assert wiped == ["chat gpt-4o-mini"]
    assert _tokens_by_type(text) == fake_provider.reported_totals("openai").disjoint()
    wipe_first.shutdown()
    provider.shutdown()


def test_a_processor_counts_only_its_own_providers_calls_and_stops_at_shutdown(fake_provider: FakeProvider):
    """Records flow process-wide, but a processor takes only those whose span ended in it: another
    provider's calls are not counted, nor anything after the processor shut down."""
    provider, processor = _setup()
    other = TracerProvider()
    ask = [{"role": "user", "content": "hi"}]
    with openai.OpenAI(base_url=fake_provider.openai_base_url, api_key="k", max_retries=0) as client:
        otel_tokens.instrument(tracer_provider=other)
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=ask)  # type: ignore[arg-type]
        finally:
            otel_tokens.uninstrument()
        otel_tokens.instrument(tracer_provider=provider)
        try:
            client.chat.completions.create(model="gpt-4o-mini", messages=ask)  # type: ignore[arg-type]
            provider.shutdown()  # unsubscribes the processor
            client.chat.completions.create(model="gpt-4o-mini", messages=ask)  # type: ignore[arg-type]
        finally:
            otel_tokens.uninstrument()
    text = generate_latest(processor.pipeline.registry).decode()
    assert len(fake_provider.reported) == 3
    assert sum(_tokens_by_type(text).values()) == fake_provider.reported[1].tokens.total
    assert 'provider="openai",status="ok",task="unknown"} 1.0' in text  # llm_requests_total: one call
    other.shutdown()


def test_a_failing_sink_never_breaks_the_call_nor_the_other_sinks(
    fake_provider: FakeProvider, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("OTEL_TOKENS_RAISE_INTERNAL_ERRORS", "0")
    seen: list[Record] = []

    def broken(record: Record) -> None:
        raise RuntimeError("guard down")

    provider = TracerProvider()
    record_sinks.subscribe(broken)
    record_sinks.subscribe(seen.append)
    otel_tokens.instrument(tracer_provider=provider)
    try:
        with (
            openai.OpenAI(base_url=fake_provider.openai_base_url, api_key="k", max_retries=0) as client,
            attribute(agent="a", task="t", task_id="run-1"),
        ):
            reply = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
            )
    finally:
        otel_tokens.uninstrument()
        record_sinks.unsubscribe(broken)
        record_sinks.unsubscribe(seen.append)
    assert reply.choices[0].message.content
    usage, done = seen
    assert isinstance(usage, UsageRecord) and usage.tokens == fake_provider.reported[0].tokens
    assert usage.span_id and usage.trace_id and usage.parent_span_id == done.span_id
    assert isinstance(done, TaskCompletion) and (done.task_id, done.task, done.agent) == ("run-1", "t", "a")
    provider.shutdown()


def test_held_foreign_span_is_released_at_shutdown():
    provider, processor = _setup()
    tracer = provider.get_tracer("opentelemetry.instrumentation.openai_v2")
    usage: dict[str, AttributeValue] = {
        sc.GEN_AI_SYSTEM: "openai",
        sc.GEN_AI_REQUEST_MODEL: "gpt-4o",
        sc.GEN_AI_USAGE_INPUT_TOKENS: 7,
        sc.GEN_AI_USAGE_OUTPUT_TOKENS: 3,
    }
    with tracer.start_as_current_span("agent step"), tracer.start_as_current_span("chat", attributes=usage):
        pass
    text = generate_latest(processor.pipeline.registry).decode()
    assert "llm_requests_total{" not in text  # held: its parent might still be a usage span
    provider.shutdown()
    text = generate_latest(processor.pipeline.registry).decode()
    assert sum(_tokens_by_type(text).values()) == 10


def test_serve_metrics_on_loopback():
    provider, processor = _setup()
    server, thread = processor.serve_metrics(port=0)
    try:
        port = server.server_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            body = response.read().decode()
        assert "otel_tokens_spans_received_total 0.0" in body
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        provider.shutdown()

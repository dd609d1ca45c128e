"""Metrics without a collector: a real TracerProvider with our span processor."""

from __future__ import annotations

import urllib.request

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind
from opentelemetry.util.types import AttributeValue
from prometheus_client import CollectorRegistry, generate_latest

from otel_tokens import semconv as sc
from otel_tokens.inprocess import TokenMetricsSpanProcessor
from otel_tokens.pipeline import Pipeline
from otel_tokens.record import TokenCounts
from tests import prom_text


def _price(provider: str, model: str, tokens: TokenCounts) -> float | None:
    return None


def _tokens_by_type(text: str) -> dict[str, float]:
    return {dict(labels)["token_type"]: v for labels, v in prom_text.series(text, "llm_tokens_total").items()}


def _setup() -> tuple[TracerProvider, TokenMetricsSpanProcessor]:
    processor = TokenMetricsSpanProcessor(Pipeline(registry=CollectorRegistry(), price=_price))
    provider = TracerProvider()
    provider.add_span_processor(processor)
    return provider, processor


def test_our_span_and_the_sdk_span_inside_it_are_counted_once():
    provider, processor = _setup()
    ours = provider.get_tracer(sc.INSTRUMENTATION_SCOPE)
    sdk = provider.get_tracer(sc.ANTHROPIC_SDK_SCOPE)
    usage: dict[str, AttributeValue] = {
        sc.GEN_AI_PROVIDER_NAME: "anthropic",
        sc.GEN_AI_REQUEST_MODEL: "claude-sonnet-4-5",
        sc.GEN_AI_USAGE_INPUT_TOKENS: 1300,
        sc.GEN_AI_USAGE_OUTPUT_TOKENS: 50,
        sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: 1000,
    }
    with ours.start_as_current_span("chat claude-sonnet-4-5", kind=SpanKind.CLIENT) as span:
        with sdk.start_as_current_span("chat claude-sonnet-4-5", attributes=usage):
            pass
        span.set_attributes({**usage, sc.OTEL_TOKENS_MARKER: True, sc.GEN_AI_AGENT_NAME: "coder"})
    processor.force_flush()
    text = generate_latest(processor.pipeline.registry).decode()
    assert _tokens_by_type(text) == {
        "input": 300, "output": 50, "cache_read": 1000, "cache_write": 0, "reasoning": 0,
    }  # fmt: skip
    assert 'agent="coder"' in text
    assert "otel_tokens_duplicates_dropped_total 1.0" in text
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

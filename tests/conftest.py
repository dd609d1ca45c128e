"""Shared fixtures: a fresh tracer provider with in-memory export per test, and a fake provider."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# Our own internal errors must fail tests instead of being logged and swallowed.
os.environ.setdefault("OTEL_TOKENS_RAISE_INTERNAL_ERRORS", "1")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_tokens.demo.fake_provider import FakeProvider

# In CI a test skipped for a missing tool fails instead (see the module).
pytest_plugins = ["tests.ci_tools"]


@pytest.fixture
def span_exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(span_exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    return provider


@pytest.fixture
def fake_provider() -> Iterator[FakeProvider]:
    with FakeProvider() as fake:
        yield fake


@pytest.fixture
def instrumented(tracer_provider: TracerProvider) -> Iterator[TracerProvider]:
    """otel-tokens instrumentation on, bound to this test's tracer provider; removed afterwards."""
    import otel_tokens

    otel_tokens.instrument(tracer_provider=tracer_provider)
    try:
        yield tracer_provider
    finally:
        otel_tokens.uninstrument()

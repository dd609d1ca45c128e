"""Telemetry never breaks the agent: a collector that is down, or a provider response without
usage, leaves the agent's calls working, and the operator is told what is wrong and where."""

from __future__ import annotations

import logging
import time
from typing import Any

import openai
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import otel_tokens
from otel_tokens.demo.fake_provider import FakeProvider, FakeRequest, FakeResponse
from tests.services import free_port


def test_agent_keeps_running_when_the_collector_is_down(
    fake_provider: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1/traces"  # nothing listens here
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=dead, timeout=1)))
    otel_tokens.instrument(tracer_provider=provider)
    try:
        client = openai.OpenAI(base_url=fake_provider.openai_base_url, api_key="k", max_retries=0)
        started = time.monotonic()
        with otel_tokens.attribute(agent="support"):
            replies = [
                client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": q}])
                for q in ("one", "two", "three")
            ]
        elapsed = time.monotonic() - started
        with caplog.at_level(logging.WARNING):
            provider.force_flush(timeout_millis=5000)
    finally:
        otel_tokens.uninstrument()
        provider.shutdown()
    assert [r.choices[0].message.content for r in replies] == ["Hello from the fake OpenAI provider."] * 3
    assert elapsed < 5, "LLM calls must not wait for span export"
    told = [r for r in caplog.records if r.name.startswith("opentelemetry.exporter")]
    assert told, "the operator is told the export failed"
    assert any("127.0.0.1" in r.getMessage() or "export" in r.getMessage().lower() for r in told)


def _chat_without_usage(request: FakeRequest, fake: FakeProvider) -> FakeResponse:
    """An OpenAI-compatible server that omits `usage` (some gateways and local servers do)."""
    return FakeResponse(
        body={
            "id": "chatcmpl-nousage",
            "object": "chat.completion",
            "created": 0,
            "model": request.body["model"],
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "an answer with no usage block"},
                }
            ],
        }
    )


def test_response_without_usage_is_estimated_and_marked(
    fake_provider: FakeProvider, instrumented: TracerProvider, span_exporter: InMemorySpanExporter
) -> None:
    fake_provider.route("POST", "/v1/chat/completions", _chat_without_usage)
    client = openai.OpenAI(base_url=fake_provider.openai_base_url, api_key="k", max_retries=0)
    reply = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "how many tokens is this?"}]
    )
    assert reply.choices[0].message.content == "an answer with no usage block"
    (span,) = span_exporter.get_finished_spans()
    attrs: dict[str, Any] = dict(span.attributes or {})
    assert attrs["otel_tokens.usage.estimated"] is True
    assert attrs["gen_ai.usage.input_tokens"] > 0
    assert attrs["gen_ai.usage.output_tokens"] > 0
    assert span.status.is_ok

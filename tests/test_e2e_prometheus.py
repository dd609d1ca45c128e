"""The foundation, end to end: real SDKs → our spans → real OTLP exporters (HTTP and gRPC) → the
collector → a real Prometheus scraping it. PromQL must return exactly what the fake provider
reported, per agent and per token type, and the cost genai-prices gives for that usage."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from genai_prices import Usage, calc_price
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

import otel_tokens
from otel_tokens.collector import CollectorConfig, CollectorService
from otel_tokens.collector.workers import ScaledCollectorService
from otel_tokens.demo.fake_provider import FakeProvider, ReportedUsage
from tests import prom_text
from tests.services import poll, run_prometheus

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


@pytest.fixture(params=[1, 2], ids=["workers=1", "workers=2"])
def collector(request: pytest.FixtureRequest) -> Iterator[CollectorService]:
    """The collector in one process, and as `--workers 2`: two ingest processes on the same ports
    feeding one main process, whose /metrics must be just as exact."""
    config = CollectorConfig(http_port=0, grpc_port=0, metrics_port=0, workers=request.param)
    service = CollectorService(config) if request.param == 1 else ScaledCollectorService(config)
    with service:
        yield service


def _run_agents(fake: FakeProvider, exporter: SpanExporter, *, agents: tuple[str, str]) -> None:
    """Two agents through the real SDKs, every call reporting usage (streams ask for it)."""
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    otel_tokens.instrument(tracer_provider=provider)
    try:
        oa = openai.OpenAI(base_url=fake.openai_base_url, api_key="k", max_retries=0)
        an = anthropic.Anthropic(base_url=fake.anthropic_base_url, api_key="k", max_retries=0)
        cached = [{"type": "text", "text": "Policy. " * 400, "cache_control": {"type": "ephemeral"}}]
        with otel_tokens.attribute(agent=agents[0], task="triage", user="u1"):
            oa.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi there"}]
            )
            for _ in oa.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "stream please"}],
                stream=True,
                stream_options={"include_usage": True},
            ):
                pass
        with otel_tokens.attribute(agent=agents[1], task="summarise"):
            for prompt in ("first question", "second question"):  # cache write, then cache read
                an.messages.create(
                    model="claude-sonnet-4-6",
                    max_tokens=100,
                    system=cached,
                    messages=[{"role": "user", "content": prompt}],
                )
            with an.messages.stream(
                model="claude-sonnet-4-6", max_tokens=100, messages=[{"role": "user", "content": "stream it"}]
            ) as stream:
                stream.get_final_message()
    finally:
        otel_tokens.uninstrument()
        provider.shutdown()


def _expected_cost(usages: list[ReportedUsage]) -> float:
    total = 0.0
    for u in usages:
        t = u.tokens
        usage = Usage(
            input_tokens=t.input,
            output_tokens=t.output,
            cache_read_tokens=t.cache_read,
            cache_write_tokens=t.cache_write,
        )
        total += float(calc_price(usage, u.model, provider_id=u.provider).total_price)
    return total


def _by_agent(usages: list[ReportedUsage], agent_of: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for u in usages:
        out[agent_of[u.provider]] = out.get(agent_of[u.provider], 0) + u.tokens.total
    return out


def test_prometheus_reads_exactly_what_the_provider_reported(
    fake_provider: FakeProvider, collector: CollectorService, tmp_path: Path
) -> None:
    http = HttpExporter(endpoint=f"http://127.0.0.1:{collector.http_port}/v1/traces")
    grpc = GrpcExporter(endpoint=f"127.0.0.1:{collector.grpc_port}", insecure=True)
    _run_agents(fake_provider, http, agents=("support", "research"))
    over_http = list(fake_provider.reported)
    _run_agents(fake_provider, grpc, agents=("codegen", "data-analysis"))
    over_grpc = fake_provider.reported[len(over_http) :]
    assert all(u.sent for u in fake_provider.reported), "every call in this workload reports usage"
    assert any(u.tokens.cache_read for u in fake_provider.reported), "the workload includes a cache hit"

    expected_total = fake_provider.reported_totals()
    expected_by_agent = _by_agent(over_http, {"openai": "support", "anthropic": "research"})
    expected_by_agent |= _by_agent(over_grpc, {"openai": "codegen", "anthropic": "data-analysis"})

    with run_prometheus(tmp_path, [f"127.0.0.1:{collector.metrics_port}"]) as prom:
        poll(
            lambda: prom.scalar("sum(llm_tokens_total)"),
            lambda v: v == expected_total.total,
            what="Prometheus to scrape every token",
        )
        by_agent = prom.by_label("sum by (agent) (llm_tokens_total)", "agent")
        by_type = prom.by_label("sum by (token_type) (llm_tokens_total)", "token_type")
        cost = prom.scalar("sum(llm_cost_usd_total)")
        requests = prom.scalar("sum(llm_requests_total)")

    assert by_agent == {a: float(n) for a, n in expected_by_agent.items()}
    assert by_type == {k: float(v) for k, v in expected_total.disjoint().items() if v} | {
        k: 0.0 for k, v in expected_total.disjoint().items() if not v and k in by_type
    }
    assert cost == pytest.approx(_expected_cost(fake_provider.reported), rel=1e-9)
    assert requests == len(fake_provider.reported)


def _count_metric(text: str, name: str) -> Any:
    return prom_text.total(text, name)

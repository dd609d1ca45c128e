"""Zero code change and crossing processes: `opentelemetry-instrument python agent.py` counts an
unmodified agent's calls, and attribution set in one process arrives in another via W3C baggage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from opentelemetry import propagate

import otel_tokens
from otel_tokens.collector import CollectorConfig, CollectorService
from otel_tokens.demo.fake_provider import FakeProvider
from tests import prom_text
from tests.services import poll

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
ROOT = Path(__file__).resolve().parent.parent


def _metric_sum(port: int, name: str, **labels: str) -> float:
    return prom_text.total(prom_text.scrape(port), name, **labels)


def test_opentelemetry_instrument_counts_an_unmodified_agent(fake_provider: FakeProvider):
    bin_dir = Path(sys.executable).parent
    with CollectorService(CollectorConfig(http_port=0, grpc_port=0, metrics_port=0)) as collector:
        env = os.environ | {
            "OPENAI_BASE_URL": fake_provider.openai_base_url,
            "OPENAI_API_KEY": "not-a-real-key",
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{collector.http_port}/v1/traces",
            "OTEL_SERVICE_NAME": "plain-agent",
        }
        run = subprocess.run(
            [str(bin_dir / "opentelemetry-instrument"), sys.executable, str(ROOT / "examples" / "agent.py")],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr
        expected = fake_provider.reported_totals("openai").total
        assert len(fake_provider.reported) == 2
        poll(
            lambda: _metric_sum(collector.metrics_port, "llm_tokens_total", model="gpt-4o-mini"),
            lambda v: v == expected,
            what="the agent's tokens on /metrics",
        )
        assert _metric_sum(collector.metrics_port, "llm_requests_total", agent="unknown", status="ok") == 2


_CALLEE = textwrap.dedent(
    """
    import json, sys
    import openai
    from opentelemetry import context, propagate
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    import otel_tokens

    headers, base_url = json.loads(sys.argv[1]), sys.argv[2]
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    otel_tokens.instrument(tracer_provider=provider)
    token = context.attach(propagate.extract(headers))  # what an HTTP server framework does
    with otel_tokens.attribute(agent="summariser"):  # the callee names itself; task/user come along
        openai.OpenAI(base_url=base_url, api_key="k", max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "summarise"}])
    context.detach(token)
    (span,) = exporter.get_finished_spans()
    print(json.dumps({**dict(span.attributes), "trace_id": format(span.context.trace_id, "032x")}))
    """
)


def test_attribution_crosses_a_process_boundary_in_w3c_baggage(fake_provider: FakeProvider):
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("caller")
    headers: dict[str, str] = {}
    with (
        tracer.start_as_current_span("planner step") as parent,
        otel_tokens.attribute(agent="planner", task="research", task_id="run-7", user="alice", session="s-1"),
    ):
        propagate.inject(headers)  # what an instrumented HTTP client does
        trace_id = format(parent.get_span_context().trace_id, "032x")
    assert "baggage" in headers and "traceparent" in headers

    run = subprocess.run(
        [sys.executable, "-c", _CALLEE, json.dumps(headers), fake_provider.openai_base_url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    attrs = json.loads(run.stdout.strip().splitlines()[-1])
    assert attrs["gen_ai.agent.name"] == "summariser"  # the callee's own scope wins
    assert attrs["otel_tokens.task.name"] == "research"  # the caller's task and user came along
    assert attrs["otel_tokens.task.id"] == "run-7"
    assert attrs["otel_tokens.user.id"] == "alice"
    assert attrs["gen_ai.conversation.id"] == "s-1"
    assert attrs["trace_id"] == trace_id  # and the trace continues
    assert trace.get_current_span() is not parent

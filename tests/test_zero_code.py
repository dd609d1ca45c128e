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
        # no attribute() scope, no invoke_agent span: the service name is the agent (the fallback)
        assert (
            _metric_sum(collector.metrics_port, "llm_requests_total", agent="plain-agent", status="ok") == 2
        )


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


# --- one line is enough: instrument() with no TracerProvider configured exports ---------------------
_ONE_LINER = textwrap.dedent(
    """
    import logging, sys
    import openai
    import otel_tokens

    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    otel_tokens.instrument()
    otel_tokens.uninstrument()
    otel_tokens.instrument()  # again: still one provider, one log line
    with otel_tokens.attribute(agent="one-liner"):
        openai.OpenAI(max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    """
)


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_instrument_alone_exports_where_the_standard_otel_variables_say(
    fake_provider: FakeProvider, tmp_path: Path, protocol: str
):
    with CollectorService(CollectorConfig(http_port=0, grpc_port=0, metrics_port=0)) as collector:
        port = collector.grpc_port if protocol == "grpc" else collector.http_port
        env = _without_otel(os.environ) | {
            "OPENAI_BASE_URL": fake_provider.openai_base_url,
            "OPENAI_API_KEY": "not-a-real-key",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_SERVICE_NAME": "one-line-agent",
        }
        run = _run_script(tmp_path, _ONE_LINER, env)
        expected = fake_provider.reported_totals().total
        # Nothing flushed by hand: the batch processor is flushed when the interpreter exits.
        poll(
            lambda: _metric_sum(collector.metrics_port, "llm_tokens_total", agent="one-liner"),
            lambda v: v == expected > 0,
            what="the one-line agent's tokens on /metrics",
        )
    said = [line for line in run.stderr.splitlines() if "instrument() set one up" in line]
    assert len(said) == 1, run.stderr
    transport = "OTLP/gRPC" if protocol == "grpc" else "OTLP/HTTP"
    path = "" if protocol == "grpc" else "/v1/traces"
    assert f"{transport} http://127.0.0.1:{port}{path}" in said[0]
    assert "service.name=one-line-agent" in said[0] and said[0].startswith("otel_tokens INFO")


_OWN_PROVIDER = textwrap.dedent(
    """
    import json, logging
    import openai
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    import otel_tokens

    logging.basicConfig(level=logging.DEBUG)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    otel_tokens.instrument()
    openai.OpenAI(max_retries=0).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    print(json.dumps({
        "same_provider": trace.get_tracer_provider() is provider,
        "processors": len(provider._active_span_processor._span_processors),
        "spans": [s.name for s in exporter.get_finished_spans()],
    }))
    """
)


def test_an_application_that_configured_its_own_provider_keeps_full_control(
    fake_provider: FakeProvider, tmp_path: Path
):
    env = _without_otel(os.environ) | {
        "OPENAI_BASE_URL": fake_provider.openai_base_url,
        "OPENAI_API_KEY": "k",
        # Were anything added, it would export here and fail loudly: nothing listens on port 9.
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
    }
    run = _run_script(tmp_path, _OWN_PROVIDER, env)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result == {"same_provider": True, "processors": 1, "spans": ["chat gpt-4o-mini"]}
    assert "set one up" not in run.stderr and "127.0.0.1:9" not in run.stderr


def test_otel_traces_exporter_none_sets_up_nothing_and_says_so(fake_provider: FakeProvider, tmp_path: Path):
    script = _ONE_LINER + textwrap.dedent(
        """
        from opentelemetry import trace
        print(type(trace.get_tracer_provider()).__name__)
        """
    )
    env = _without_otel(os.environ) | {
        "OPENAI_BASE_URL": fake_provider.openai_base_url,
        "OPENAI_API_KEY": "k",
        "OTEL_TRACES_EXPORTER": "none",
    }
    run = _run_script(tmp_path, script, env)
    assert run.stdout.strip().splitlines()[-1] == "ProxyTracerProvider"
    assert "OTEL_TRACES_EXPORTER=none: no span is exported" in run.stderr
    assert len(fake_provider.reported) == 1  # the call itself went through untouched


def _without_otel(env: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """The test runner's environment minus any OTEL_* setting that would change what is tested."""
    return {k: v for k, v in env.items() if not k.startswith("OTEL_") or k.startswith("OTEL_TOKENS_")}


def _run_script(tmp_path: Path, code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "agent.py"
    script.write_text(code)
    run = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, run.stderr
    return run

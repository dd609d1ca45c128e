"""Nothing lost to our own errors: pricing, token estimation and attribution each fail alone.

The defect: where genai-prices could not be imported, the instrumentation's internal-error guard
dropped the whole usage record from the span, tokens and all. The real case runs first, in
subprocesses where a meta-path blocker makes `import genai_prices` fail: the agent's spans still
carry the exact tokens the provider reported, marked unpriced, and a collector counts them (and
prices them itself when it can). Then each step is broken in-process, with the internal-error
policy in production mode (log once, carry on) instead of the test suite's raise mode.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from otel_tokens import metric_names as mn
from otel_tokens import semconv as sc
from otel_tokens import tokencount
from otel_tokens.collector import CollectorConfig, CollectorService
from otel_tokens.demo.fake_provider import FakeProvider
from otel_tokens.instrumentation import _call
from otel_tokens.record import TokenCounts
from otel_tokens.settings import ENV_RAISE_INTERNAL_ERRORS
from tests.services import free_port, poll
from tests.test_pricing import reference_cost

ROOT = Path(__file__).resolve().parent.parent

#: Installed as `sitecustomize` on the child's path: runs before any import of ours or the SDKs'.
_BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys

    class _NoGenaiPrices(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "genai_prices" or name.startswith("genai_prices."):
                raise ImportError(f"{name} is blocked in this test environment")
            return None

    sys.meta_path.insert(0, _NoGenaiPrices())
    """
)

_AGENT = textwrap.dedent(
    """
    import json, sys
    import anthropic, openai
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    import otel_tokens

    try:
        import genai_prices  # noqa: F401
        sys.exit("the blocker did not block genai_prices")
    except ImportError:
        pass
    openai_url, anthropic_url, otlp_endpoint = sys.argv[1:4]
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
    otel_tokens.instrument(tracer_provider=provider)
    with otel_tokens.attribute(agent="no-prices", task="degraded"):
        oa = openai.OpenAI(base_url=openai_url, api_key="k", max_retries=0)
        oa.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi there"}])
        for _ in oa.chat.completions.create(
            model="gpt-5", messages=[{"role": "user", "content": "stream"}], stream=True,
            stream_options={"include_usage": True}, service_tier="flex",
        ):
            pass
        an = anthropic.Anthropic(base_url=anthropic_url, api_key="k", max_retries=0)
        system = [{"type": "text", "text": "cached for an hour " * 50,
                   "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
        an.messages.create(model="claude-sonnet-4-5", max_tokens=64, system=system,
                           messages=[{"role": "user", "content": "hello"}])
    provider.shutdown()
    print(json.dumps([dict(s.attributes) for s in memory.get_finished_spans()]))
    """
)


def _child_env(tmp_path: Path) -> dict[str, str]:
    """The real environment, production error policy, and the blocker as `sitecustomize`."""
    (tmp_path / "sitecustomize.py").write_text(_BLOCKER)
    env = {k: v for k, v in os.environ.items() if k != ENV_RAISE_INTERNAL_ERRORS}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _metrics(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _total(metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, lbl), v in metrics.items() if n == name and wanted <= lbl)


def _span_tokens(a: dict[str, Any]) -> TokenCounts:
    return TokenCounts(
        input=a[sc.GEN_AI_USAGE_INPUT_TOKENS],
        output=a[sc.GEN_AI_USAGE_OUTPUT_TOKENS],
        cache_read=a.get(sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, 0),
        cache_write=a.get(sc.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS, 0),
        reasoning=a.get(sc.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS, 0),
        cache_write_1h=a.get(sc.OTEL_TOKENS_CACHE_WRITE_1H, 0),
    )


def _run_agent(tmp_path: Path, fake: FakeProvider, otlp_port: int) -> subprocess.CompletedProcess[str]:
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            _AGENT,
            fake.openai_base_url,
            fake.anthropic_base_url,
            f"http://127.0.0.1:{otlp_port}/v1/traces",
        ],
        env=_child_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run


@pytest.mark.integration
def test_an_agent_without_genai_prices_still_records_exact_tokens_and_the_collector_prices_them(
    tmp_path: Path, fake_provider: FakeProvider
) -> None:
    with CollectorService(CollectorConfig(http_port=0, grpc_enabled=False, metrics_port=0)) as collector:
        run = _run_agent(tmp_path, fake_provider, collector.http_port)
        spans = [a for a in json.loads(run.stdout.splitlines()[-1]) if sc.GEN_AI_USAGE_INPUT_TOKENS in a]

        # the agent side: every call's exact usage on its span, marked unpriced by failure
        assert [_span_tokens(a) for a in spans] == [r.tokens for r in fake_provider.reported]
        assert len(spans) == 3 and _span_tokens(spans[2]).cache_write_1h > 0
        for a in spans:
            assert sc.OTEL_TOKENS_COST_USD not in a
            assert a[sc.OTEL_TOKENS_COST_UNPRICED] is True
            assert a[sc.OTEL_TOKENS_ENRICHMENT_FAILED] == [sc.ENRICHMENT_PRICING]
            assert a[sc.GEN_AI_AGENT_NAME] == "no-prices"
        assert spans[1][sc.OPENAI_RESPONSE_SERVICE_TIER] == "flex"
        # logged once, not once per call
        assert run.stderr.count("otel-tokens internal error in pricing") == 1, run.stderr[-3000:]

        # the collector side: tokens exact, the failure counted, the calls priced here instead
        expected_tokens = fake_provider.reported_totals().total
        metrics = poll(
            lambda: _metrics(collector.metrics_port),
            lambda m: _total(m, mn.TOKENS, agent="no-prices") == expected_tokens,
            what="the agent's tokens on /metrics",
        )
        assert _total(metrics, mn.ENRICHMENT_FAILURES, step="pricing") == 3
        assert _total(metrics, mn.REQUESTS, agent="no-prices", status="ok") == 3
        calls = [
            ("openai", "gpt-4o-mini", None),
            ("openai", "gpt-5", "flex"),
            ("anthropic", "claude-sonnet-4-5", None),
        ]
        expected_cost = sum(
            reference_cost(provider, model, _span_tokens(a), tier)
            for (provider, model, tier), a in zip(calls, spans, strict=True)
        )
        assert _total(metrics, mn.COST, agent="no-prices") == pytest.approx(expected_cost, rel=1e-9)


@pytest.mark.integration
def test_a_collector_without_genai_prices_counts_the_tokens_and_the_unpriced_records(
    tmp_path: Path, fake_provider: FakeProvider
) -> None:
    http_port, metrics_port = free_port(), free_port()
    env = _child_env(tmp_path)
    argv = [sys.executable, "-m", "otel_tokens.cli", "collector", "--no-grpc"]
    argv += ["--http-port", str(http_port), "--metrics-port", str(metrics_port)]
    log = (tmp_path / "collector.log").open("w")
    collector = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        poll(lambda: _metrics(metrics_port), lambda m: True, what="the collector's /metrics")
        _run_agent(tmp_path, fake_provider, http_port)
        expected_tokens = fake_provider.reported_totals().total
        metrics = poll(
            lambda: _metrics(metrics_port),
            lambda m: _total(m, mn.TOKENS, agent="no-prices") == expected_tokens,
            what="the agent's tokens on the price-less collector's /metrics",
        )
        assert _total(metrics, mn.UNPRICED) == 3
        assert _total(metrics, mn.ENRICHMENT_FAILURES, step="pricing") == 3
        assert _total(metrics, mn.REQUESTS, agent="no-prices") == 3
        assert _total(metrics, mn.COST) == 0
    finally:
        collector.terminate()
        collector.wait(timeout=20)
        log.close()


# --- each step in-process, with the production error policy ------------------------------------------
@pytest.fixture
def production_errors(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Log-once-and-carry-on instead of the suite's raise mode; the log-once memory reset."""
    from otel_tokens import _safety

    monkeypatch.setenv(ENV_RAISE_INTERNAL_ERRORS, "0")
    monkeypatch.setattr(_safety, "_already_logged", set())
    caplog.set_level(logging.ERROR, logger="otel_tokens")
    yield


def _only_call_span(exporter: InMemorySpanExporter) -> dict[str, Any]:
    spans = [
        s for s in exporter.get_finished_spans() if s.instrumentation_scope.name == sc.INSTRUMENTATION_SCOPE
    ]  # type: ignore[union-attr]
    assert len(spans) == 1
    return dict(spans[0].attributes or {})


@pytest.mark.usefixtures("production_errors", "instrumented")
def test_pricing_failure_keeps_the_tokens_and_marks_the_span(
    monkeypatch: pytest.MonkeyPatch,
    fake_provider: FakeProvider,
    span_exporter: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> Any:
        raise RuntimeError("price data corrupted")

    monkeypatch.setattr(_call, "default_price_book", broken)
    client = openai.OpenAI(base_url=fake_provider.openai_base_url, api_key="k", max_retries=0)
    for _ in range(3):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    spans = [dict(s.attributes or {}) for s in span_exporter.get_finished_spans()]
    assert [_span_tokens(a) for a in spans] == [r.tokens for r in fake_provider.reported]
    assert all(a[sc.OTEL_TOKENS_ENRICHMENT_FAILED] == ("pricing",) for a in spans)
    assert all(a[sc.OTEL_TOKENS_COST_UNPRICED] is True for a in spans)
    assert sum("internal error in pricing" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.usefixtures("production_errors", "instrumented")
def test_attribution_failure_keeps_the_call_and_marks_it(
    monkeypatch: pytest.MonkeyPatch, fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    def broken() -> Any:
        raise ValueError("malformed baggage")

    monkeypatch.setattr(_call, "current_attribution", broken)
    client = openai.OpenAI(base_url=fake_provider.openai_base_url, api_key="k", max_retries=0)
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    a = _only_call_span(span_exporter)
    assert _span_tokens(a) == fake_provider.reported[-1].tokens
    assert a[sc.OTEL_TOKENS_ENRICHMENT_FAILED] == ("attribution",)
    assert a[sc.OTEL_TOKENS_COST_USD] > 0  # the other steps still ran


@pytest.mark.usefixtures("production_errors", "instrumented")
def test_estimation_failure_keeps_what_the_provider_reported(
    monkeypatch: pytest.MonkeyPatch, fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    """An anthropic stream closed after `message_start`: the input and cache tokens it reported stay
    exact although estimating the output text fails."""

    def broken(text: str, model: str) -> int:
        raise RuntimeError("tokenizer bug")

    monkeypatch.setattr(tokencount, "_count_text", broken)
    client = anthropic.Anthropic(base_url=fake_provider.anthropic_base_url, api_key="k", max_retries=0)
    with client.messages.stream(
        model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "one two three four"}]
    ) as stream:
        for n, _ in enumerate(stream.text_stream):
            if n == 1:
                break
    a = _only_call_span(span_exporter)
    reported = fake_provider.reported[-1].tokens
    assert a[sc.GEN_AI_USAGE_INPUT_TOKENS] == reported.input
    assert a[sc.OTEL_TOKENS_ENRICHMENT_FAILED] == ("estimation",)
    assert a[sc.OTEL_TOKENS_COST_USD] > 0


@pytest.mark.usefixtures("production_errors", "instrumented")
def test_a_stream_whose_estimate_fails_is_still_one_marked_call(
    monkeypatch: pytest.MonkeyPatch, fake_provider: FakeProvider, span_exporter: InMemorySpanExporter
) -> None:
    def broken(messages: object, model: str, system: object) -> int:
        raise RuntimeError("tokenizer bug")

    monkeypatch.setattr(tokencount, "_count_messages", broken)
    client = openai.OpenAI(base_url=fake_provider.openai_base_url, api_key="k", max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    )
    assert chunks
    a = _only_call_span(span_exporter)
    assert a[sc.OTEL_TOKENS_ENRICHMENT_FAILED] == ("estimation",)
    assert a[sc.OTEL_TOKENS_ESTIMATED] is True
    assert a[sc.GEN_AI_REQUEST_MODEL] == "gpt-4o"

"""Several collectors behind one OTLP endpoint, Prometheus as the global view.

Two collector processes each receive half of one agent's spans — round-robin, as a load balancer
in front of them would send them. A real Prometheus scrapes both and evaluates the rendered rules.
The totals in PromQL are exactly what the provider reported, and the budget alerts fire on the
combined use that neither collector alone reaches: the rendered rules sum over instances.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import openai
import pytest
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

import otel_tokens
from otel_tokens.budgets import parse_budget_text
from otel_tokens.budgets.render_prometheus import render_rules
from otel_tokens.demo.fake_provider import FakeProvider
from tests.services import free_port, poll, run_prometheus

pytestmark = pytest.mark.integration

LIMIT = 3000
PER_INSTANCE = 600  # runaway at 3x: 1,800 tokens, more than either collector sees of the task
BUDGETS = textwrap.dedent(
    f"""
    version: 1
    alert_for: {{budget_warning: 0s, budget_exceeded: 0s, runaway_task: 0s, token_spike: 0s,
                budget_forecast: 0s, context_growth: 0s, prompt_cache_miss: 0s}}
    budgets:
      - name: split-daily
        scope: {{agent: split}}
        limit: {{tokens: {LIMIT}}}
        window: 1d
        severity: P2
        per_task_instance: {{tokens: {PER_INSTANCE}, runaway_factor: 3}}
        spike: {{enabled: false}}
        forecast: {{enabled: false}}
    """
)


class RoundRobin(SpanProcessor):
    """Ends each span at the next collector in turn: one OTLP endpoint in front of several."""

    def __init__(self, processors: Sequence[SpanProcessor]) -> None:
        self._processors = list(processors)
        self._next = 0

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        self._processors[self._next % len(self._processors)].on_end(span)
        self._next += 1

    def shutdown(self) -> None:
        for p in self._processors:
            p.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return all(p.force_flush(timeout_millis) for p in self._processors)


@contextmanager
def collector_process(tmp: Path, name: str, budgets: Path) -> Iterator[tuple[int, int]]:
    """`otel-tokens collector` as its own process; yields (OTLP/HTTP port, metrics port)."""
    http_port, metrics_port = free_port(), free_port()
    cli = Path(sys.executable).parent / "otel-tokens"
    args = [str(cli), "collector", "--no-grpc", "--http-host", "127.0.0.1", "--metrics-host", "127.0.0.1"]
    args += [
        "--http-port",
        str(http_port),
        "--metrics-port",
        str(metrics_port),
        "--budgets-file",
        str(budgets),
    ]
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{metrics_port}/metrics"

        def up() -> int:
            assert proc.poll() is None, log.read_text()
            with urllib.request.urlopen(url, timeout=2) as resp:
                return int(resp.status)

        poll(up, lambda status: status == 200, timeout=30, what=f"collector {name} at {url}")
        yield http_port, metrics_port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _split_workload(fake: FakeProvider, http_ports: Sequence[int]) -> None:
    """One agent, one task instance, calls until the combined use passes the budget's limit."""
    exporters = [OTLPSpanExporter(endpoint=f"http://127.0.0.1:{p}/v1/traces") for p in http_ports]
    provider = TracerProvider()
    provider.add_span_processor(RoundRobin([SimpleSpanProcessor(e) for e in exporters]))
    otel_tokens.instrument(tracer_provider=provider)
    try:
        client = openai.OpenAI(base_url=fake.openai_base_url, api_key="k", max_retries=0)
        with otel_tokens.attribute(agent="split", task="crawl", task_id="crawl-1"):
            question = "Which pages are left to crawl?"
            while fake.reported_totals().total < LIMIT:
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": question}]
                )
                question += " And after those?"
    finally:
        otel_tokens.uninstrument()
        provider.shutdown()


def test_two_collectors_add_up_exactly_and_alert_on_their_combined_use(
    fake_provider: FakeProvider, tmp_path: Path
):
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text(BUDGETS, encoding="utf-8")
    rules = tmp_path / "rules.yml"
    rules.write_text(render_rules(parse_budget_text(BUDGETS), interval="200ms"), encoding="utf-8")
    with ExitStack() as stack:
        ports = [stack.enter_context(collector_process(tmp_path, f"c{i}", budgets)) for i in (1, 2)]
        targets = [f"127.0.0.1:{metrics}" for _, metrics in ports]
        prom = stack.enter_context(run_prometheus(tmp_path, targets, [rules]))
        _split_workload(fake_provider, [http for http, _ in ports])
        reported = fake_provider.reported_totals()
        calls = len(fake_provider.reported)

        # Exact totals over both collectors (each counts its spans once the dedupe hold has passed).
        poll(
            lambda: prom.scalar('sum(llm_tokens_total{agent="split"})'),
            lambda total: total == reported.total,
            timeout=30,
            what=f"{reported.total} tokens summed over both collectors",
        )
        assert prom.scalar("count(up == 1)") == 2
        assert prom.scalar('sum(llm_requests_total{agent="split"})') == calls
        per_instance = prom.by_label('sum by (instance) (llm_tokens_total{agent="split"})', "instance")
        assert set(per_instance) == set(targets) and all(0 < v < LIMIT for v in per_instance.values())
        poll(
            lambda: prom.scalar('sum(llm_budget_used{budget="split-daily"})'),
            lambda used: used == reported.total,
            timeout=30,
            what="the ledgers' used figures summed over both collectors",
        )
        # Neither collector alone is over the limit, nor any one's share of the task instance at 3x.
        assert prom.scalar('max(llm_budget_usage_ratio{budget="split-daily"})') < 1
        assert prom.scalar('max(llm_task_instance_tokens{budget="split-daily"})') < 3 * PER_INSTANCE
        assert prom.scalar('max(llm_budget_limit{budget="split-daily"})') == LIMIT

        def firing() -> set[str]:
            alerts = prom.query('ALERTS{alertstate="firing", budget="split-daily"}')
            return {a["metric"]["alertname"] for a in alerts}

        fired = poll(
            firing,
            lambda names: {"BudgetExceeded", "RunawayTask"} <= names,
            timeout=30,
            what="BudgetExceeded and RunawayTask on the combined use",
        )
        assert "BudgetWarning" not in fired  # at or over the limit it is BudgetExceeded only
        [runaway] = prom.query('ALERTS{alertname="RunawayTask", alertstate="firing"}')
        assert runaway["metric"]["task_id"] == "crawl-1" and "instance" not in runaway["metric"]

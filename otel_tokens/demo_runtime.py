"""What the demo stands up around the workload: fake provider, collector, tracer provider, and the
summary it prints. Kept apart from `demo.py` so the workload reads as plain agent code."""

from __future__ import annotations

import time
import urllib.request
from types import TracebackType
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from otel_tokens.fake_provider import FakeProvider

_WAIT_SECONDS = 15.0


class DemoRuntime:
    """Fake provider + (embedded collector unless `collector_url`) + instrumentation exporting OTLP."""

    def __init__(self, *, collector_url: str | None = None, budgets_file: str | None = None) -> None:
        self.fake = FakeProvider()
        self.collector: Any = None
        self._collector_url = collector_url
        self._budgets_file = budgets_file
        self._tracer_provider: Any = None

    def __enter__(self) -> DemoRuntime:
        self.fake.start()
        otlp_url = self._collector_url
        if otlp_url is None:
            from otel_tokens.collector import CollectorConfig, CollectorService

            config = CollectorConfig(budgets_file=self._budgets_file)
            self.collector = CollectorService(config).start()
            otlp_url = f"http://127.0.0.1:{self.collector.http_port}"
        self._tracer_provider = _tracer_provider(otlp_url.rstrip("/") + "/v1/traces")
        import otel_tokens

        otel_tokens.instrument(tracer_provider=self._tracer_provider)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        import otel_tokens

        otel_tokens.uninstrument()
        self._tracer_provider.shutdown()
        if self.collector is not None:
            self.collector.stop()
        self.fake.stop()

    def flush(self) -> None:
        """Export every span, then wait until the embedded collector has counted every call."""
        self._tracer_provider.force_flush()
        if self.collector is None:
            return
        expected = len(self.fake.reported)
        deadline = time.monotonic() + _WAIT_SECONDS
        while time.monotonic() < deadline and _sample_sum(self._scrape(), "llm_requests_total") < expected:
            time.sleep(0.05)

    def _scrape(self) -> str:
        url = f"http://127.0.0.1:{self.collector.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def print_summary(self, *, first: bool, looping: bool = True) -> None:
        if self.collector is None:
            print(f"demo: {len(self.fake.reported)} LLM calls sent to {self._collector_url}", flush=True)
            return
        text = self._scrape()
        if first:
            print("\n".join(["otel-tokens demo: the collector is up.", *self.collector.endpoints()]))
            print("Look at the counters:  curl -s http://127.0.0.1:%d/metrics | grep ^llm_" % (
                self.collector.metrics_port))
            print("Full stack (Prometheus, Alertmanager, Grafana): see README.md, 'docker compose up'.\n")
        print(_table(text), flush=True)
        if first and looping:
            print("\nThe workload repeats every few seconds; Ctrl-C stops the demo.", flush=True)


def _tracer_provider(endpoint: str) -> Any:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "otel-tokens-demo"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


def _sample_sum(text: str, name: str) -> float:
    return sum(
        s.value for fam in text_string_to_metric_families(text) for s in fam.samples if s.name == name
    )


def _table(text: str) -> str:
    """Tokens and cost by agent, as the counters on /metrics say."""
    tokens: dict[str, float] = {}
    cost: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "llm_tokens_total":
                tokens[s.labels["agent"]] = tokens.get(s.labels["agent"], 0) + s.value
            elif s.name == "llm_cost_usd_total":
                cost[s.labels["agent"]] = cost.get(s.labels["agent"], 0) + s.value
    rows = [f"{'agent':<14}{'tokens':>12}{'cost (USD)':>14}"]
    rows += [f"{a:<14}{tokens[a]:>12.0f}{cost.get(a, 0.0):>14.6f}" for a in sorted(tokens)]
    return "\n".join(rows)

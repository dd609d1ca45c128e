"""What the demo stands up around the workload: fake provider, collector, tracer provider, and the
summary it prints. Kept apart from `workload.py` so the workload reads as plain agent code."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from otel_tokens.demo.fake_provider import FakeProvider

_WAIT_SECONDS = 15.0


class DemoRuntime:
    """Fake provider + (embedded collector unless `collector_url`) + instrumentation exporting OTLP."""

    def __init__(
        self,
        *,
        collector_url: str | None = None,
        budgets_file: str | None = None,
        alerts_listen: str | None = None,
    ) -> None:
        self.fake = FakeProvider()
        self.pages = AlertPrinter(alerts_listen) if alerts_listen else None
        self.collector: Any = None
        self._collector_url = collector_url
        self._budgets_file = budgets_file
        self._tracer_provider: Any = None

    def __enter__(self) -> DemoRuntime:
        self.fake.start()
        if self.pages is not None:
            self.pages.start()
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
        if self.pages is not None:
            self.pages.stop()
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
            print(
                f"Look at the counters:  curl -s http://127.0.0.1:{self.collector.metrics_port}/metrics"
                " | grep ^llm_"
            )
            print("Full stack (Prometheus, Alertmanager, Grafana): see README.md, 'docker compose up'.\n")
        print(_table(text), flush=True)
        if self.collector.ledger is not None:
            from otel_tokens.budgets.cli import format_amount

            print(f"\n{'budget':<24}{'used':>12}{'limit':>14}  state")
            for b in self.collector.ledger.status():
                if b.used:
                    used, limit = format_amount(b.used, b.unit), format_amount(b.limit, b.unit)
                    print(f"{b.name:<24}{used:>12}{limit:>14}  {b.state} ({b.window})")
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
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples if s.name == name)


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


class AlertPrinter:
    """An Alertmanager webhook receiver that prints each alert as one line: the demo's pager."""

    def __init__(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        self._server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), _PageHandler)

    def start(self) -> None:
        threading.Thread(target=self._server.serve_forever, name="demo-pager", daemon=True).start()
        host, port = self._server.server_address[:2]
        print(f"demo pager: printing Alertmanager webhooks received on http://{host!s}:{port}/", flush=True)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _PageHandler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
        try:
            notification = json.loads(raw)
        except ValueError:
            print(f"demo pager: a webhook body that is not JSON ({len(raw)} bytes)", flush=True)
            return
        for alert in notification.get("alerts", []):
            labels, notes = alert.get("labels", {}), alert.get("annotations", {})
            print(
                f"PAGE {alert.get('status', '?').upper()} [{labels.get('severity', '?')}] "
                f"{labels.get('alertname', '?')} budget={labels.get('budget', '-')} "
                f"agent={labels.get('agent', '-')}: {notes.get('summary', '')}",
                flush=True,
            )

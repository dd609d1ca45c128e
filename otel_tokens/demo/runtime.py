"""What the demo stands up around the workload: fake provider, collector, tracer provider, and the
summary it prints. Kept apart from `workload.py` so the workload reads as plain agent code."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import urllib.request
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from otel_tokens import metric_names as mn
from otel_tokens.demo.fake_provider import FakeProvider
from otel_tokens.demo.ports import PortInUse, busy_port
from otel_tokens.humanize import format_tokens, format_usd

_WAIT_SECONDS = 15.0


class DemoRuntime:
    """Fake provider + (embedded collector unless `collector_url`) + instrumentation exporting OTLP."""

    def __init__(
        self,
        *,
        collector_url: str | None = None,
        budgets_file: str | None = None,
        alerts_listen: str | None = None,
        ports: Mapping[str, int] | None = None,
    ) -> None:
        self.pages = AlertPrinter(alerts_listen) if alerts_listen else None
        self.fake = FakeProvider()
        self.collector: Any = None
        self._collector_url = collector_url
        self._budgets_file = budgets_file
        self._ports = dict(ports or {})
        self._tracer_provider: Any = None

    def __enter__(self) -> DemoRuntime:
        return self.start()

    def start(self) -> DemoRuntime:
        """Start everything; a failure stops what already started (nothing lingers) and re-raises,
        a taken port as `PortInUse` naming the port and the flag that moves it."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.fake.start()
        if self.pages is not None:
            self.pages.start()
        otlp_url = self._collector_url or self._start_collector()
        self._tracer_provider = _tracer_provider(otlp_url.rstrip("/") + "/v1/traces")
        import otel_tokens

        otel_tokens.instrument(tracer_provider=self._tracer_provider)

    def _start_collector(self) -> str:
        from otel_tokens.collector import CollectorConfig, CollectorService

        default, ports = CollectorConfig(), self._ports
        config = CollectorConfig(
            budgets_file=self._budgets_file,
            http_port=ports.get("http_port", default.http_port),
            grpc_port=ports.get("grpc_port", default.grpc_port),
            metrics_port=ports.get("metrics_port", default.metrics_port),
        )
        try:
            self.collector = CollectorService(config).start()
        except OSError as exc:
            # Which port? The servers' own errors do not all say; ask the ports themselves.
            raise busy_port(config.http_host, self._ports) or exc from None
        return f"http://127.0.0.1:{self.collector.http_port}"

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        import otel_tokens

        otel_tokens.uninstrument()
        if self._tracer_provider is not None:
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
        while time.monotonic() < deadline and _sample_sum(self._scrape(), mn.REQUESTS) < expected:
            time.sleep(0.05)

    def _scrape(self) -> str:
        url = f"http://127.0.0.1:{self.collector.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def print_summary(self, *, first: bool, looping: bool = True) -> None:
        """The totals by agent and every budget's standing. Looping, the first summary also says
        where to look while the demo keeps serving; with `--once` nothing keeps serving, so it
        says so instead of pointing at a collector that is about to stop."""
        if self.collector is None:
            print(f"demo: {len(self.fake.reported)} LLM calls sent to {self._collector_url}", flush=True)
            return
        text = self._scrape()
        if first:
            print("\n".join(["otel-tokens demo: the collector is up.", *self.collector.endpoints()]))
            if looping:
                print(
                    f"Look at the counters:  curl -s http://127.0.0.1:{self.collector.metrics_port}/metrics"
                    " | grep ^llm_"
                )
            print("Full stack (Prometheus, Alertmanager, Grafana): see README.md, 'docker compose up'.\n")
        print(_table(text), flush=True)
        if self.collector.ledger is not None:
            from otel_tokens.budgets.cli import budget_table

            rows = (dataclasses.asdict(b) for b in self.collector.ledger.status())
            print("\n" + budget_table(rows), flush=True)
        if not looping:
            print(
                "\n--once: the workload ran once and the demo's collector stops with it. "
                "Run `otel-tokens demo` (without --once) to keep it serving /metrics.",
                flush=True,
            )
        elif first:
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
            agent = s.labels.get(mn.AGENT, mn.UNKNOWN)
            if s.name == mn.TOKENS:
                tokens[agent] = tokens.get(agent, 0) + s.value
            elif s.name == mn.COST:
                cost[agent] = cost.get(agent, 0) + s.value
    rows = [f"{'agent':<14}{'tokens':>12}{'cost (USD)':>14}"]
    rows += [
        f"{a:<14}{format_tokens(tokens[a]):>12}{format_usd(cost.get(a, 0.0)):>14}" for a in sorted(tokens)
    ]
    return "\n".join(rows)


class AlertPrinter:
    """An Alertmanager webhook receiver that prints each alert as one line: the demo's pager."""

    def __init__(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        try:
            self._server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), _PageHandler)
        except ValueError:
            raise ValueError(f"--alerts-listen wants HOST:PORT, got {listen!r}") from None
        except OSError:
            raise PortInUse(int(port), "--alerts-listen HOST:", "Alertmanager webhook") from None

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

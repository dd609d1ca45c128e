"""Metrics without a collector: a SpanProcessor that feeds a Pipeline in-process.

For users who run one agent process and want `/metrics` straight from it. Our own instrumentation's
calls arrive as the records it built (`otel_tokens.sinks`), never parsed back from their spans;
other instrumentations' spans (the anthropic SDK's own, OpenLLMetry, ...) are extracted as the
collector extracts them. Both meet in the pipeline's deduper, so our span and the SDK's span of one
call are still counted once. Held foreign spans are released on later spans and at
shutdown/force_flush.

A processor counts the calls of the tracer provider it was added to, as before: a record is taken
only when this processor saw its span end (so a second provider's calls, or calls whose span was
sampled out, are not counted here).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

from otel_tokens import semconv as sc
from otel_tokens._safety import swallow_internal_errors
from otel_tokens.pipeline import Pipeline
from otel_tokens.record import Record
from otel_tokens.sinks import RecordSinks, record_sinks

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

__all__ = ["TokenMetricsSpanProcessor", "serve_metrics"]


#: Our spans whose record has not arrived yet, at most (a record arrives right after its span ends,
#: on the same thread, so only a failed hand-off leaves one behind).
_MAX_EXPECTED = 4096


class TokenMetricsSpanProcessor(SpanProcessor):
    """Counts the GenAI usage of every span that ends in its tracer provider (never raises into the
    app). Call `shutdown()` (the provider does) to stop receiving records."""

    def __init__(self, pipeline: Pipeline | None = None, *, sinks: RecordSinks = record_sinks) -> None:
        self.pipeline = pipeline if pipeline is not None else Pipeline()
        self._sinks = sinks
        self._lock = threading.Lock()
        #: (trace id << 64 | span id) of our spans that ended here, oldest first
        self._expected: dict[int, None] = {}
        sinks.subscribe(self._on_record)

    def on_end(self, span: ReadableSpan) -> None:
        with swallow_internal_errors("TokenMetricsSpanProcessor.on_end"):
            attributes = span.attributes
            if attributes and (
                attributes.get(sc.OTEL_TOKENS_MARKER) is True
                or attributes.get(sc.OTEL_TOKENS_TASK_SCOPE) is True
                or type(attributes.get(sc.OTEL_TOKENS_VERIFY_PASSED)) is bool
            ):
                self._expect(span)  # ours: its record follows through the sinks
                return
            self.pipeline.ingest_spans((span,))
            self.pipeline.flush()

    def _expect(self, span: ReadableSpan) -> None:
        ctx = span.get_span_context()
        if ctx is None:
            return
        with self._lock:
            expected = self._expected
            expected[(ctx.trace_id << 64) | ctx.span_id] = None
            if len(expected) > _MAX_EXPECTED:
                del expected[next(iter(expected))]

    def _on_record(self, record: Record) -> None:
        """A record our instrumentation built: counted if its span ended in this processor."""
        key = (record.trace_id << 64) | record.span_id
        with self._lock:
            if key not in self._expected:
                return
            del self._expected[key]
        self.pipeline.ingest_records((record,))
        self.pipeline.flush()

    def serve_metrics(self, port: int = 9464, host: str = "127.0.0.1") -> tuple[WSGIServer, threading.Thread]:
        """Serve this processor's metrics (see the module-level `serve_metrics`)."""
        return serve_metrics(self.pipeline, port, host)

    def shutdown(self) -> None:
        self._sinks.unsubscribe(self._on_record)
        self.force_flush()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Count every held span now: nothing more will arrive that could claim it."""
        with swallow_internal_errors("TokenMetricsSpanProcessor.force_flush"):
            self.pipeline.flush(float("inf"))
        return True


def serve_metrics(
    pipeline: Pipeline, port: int = 9464, host: str = "127.0.0.1"
) -> tuple[WSGIServer, threading.Thread]:
    """Serve the pipeline's registry on http://host:port/metrics from a daemon thread.

    Loopback by default: token spend by user and task is not for the whole network to read.
    Returns prometheus_client's (server, thread); call `server.shutdown()` to stop it.
    """
    from prometheus_client import start_http_server

    server, thread = start_http_server(port, addr=host, registry=pipeline.registry)
    return server, thread

"""Metrics without a collector: a SpanProcessor that feeds ended spans into a Pipeline in-process.

For users who run one agent process and want `/metrics` straight from it. The processor does the
same extraction and deduplication as the collector (so our spans and the SDK's own spans are still
counted once); held foreign spans are released on later spans and at shutdown/force_flush.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

from otel_tokens._safety import swallow_internal_errors
from otel_tokens.pipeline import Pipeline

if TYPE_CHECKING:
    import threading
    from wsgiref.simple_server import WSGIServer

__all__ = ["TokenMetricsSpanProcessor", "serve_metrics"]


class TokenMetricsSpanProcessor(SpanProcessor):
    """Counts the GenAI usage of every span that ends in this process (never raises into the app)."""

    def __init__(self, pipeline: Pipeline | None = None) -> None:
        self.pipeline = pipeline if pipeline is not None else Pipeline()

    def on_end(self, span: ReadableSpan) -> None:
        with swallow_internal_errors("TokenMetricsSpanProcessor.on_end"):
            self.pipeline.ingest_spans((span,))
            self.pipeline.flush()

    def serve_metrics(self, port: int = 9464, host: str = "127.0.0.1") -> tuple[WSGIServer, threading.Thread]:
        """Serve this processor's metrics (see the module-level `serve_metrics`)."""
        return serve_metrics(self.pipeline, port, host)

    def shutdown(self) -> None:
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

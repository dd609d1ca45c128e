"""Every environment variable otel-tokens reads, declared once with its default and meaning.

Precedence everywhere: explicit argument > environment variable > config file > default.
"""

from __future__ import annotations

import os
from typing import Final

#: "true" records prompt and completion text on spans (off by default: counts only). The official
#: OpenTelemetry GenAI instrumentations read the same variable, so one switch governs both.
ENV_CAPTURE_CONTENT: Final = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
#: "1" re-raises our own internal errors instead of logging them (tests set it).
ENV_RAISE_INTERNAL_ERRORS: Final = "OTEL_TOKENS_RAISE_INTERNAL_ERRORS"
#: Directory holding tiktoken encoding files; defaults to a cache we fill from bundled data.
ENV_TIKTOKEN_CACHE_DIR: Final = "TIKTOKEN_CACHE_DIR"
#: Path of the collector's YAML config file.
ENV_COLLECTOR_CONFIG: Final = "OTEL_TOKENS_COLLECTOR_CONFIG"


def env_flag(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return raw.strip().lower() in ("1", "true", "yes", "on")


# --- collector (`otel-tokens collector`); every key is documented in collector/README.md ---------
# Each overrides the YAML key named in its comment and is overridden by the matching CLI flag.
#: otlp.http.host — interface of the OTLP/HTTP receiver (default 127.0.0.1).
ENV_COLLECTOR_HTTP_HOST: Final = "OTEL_TOKENS_COLLECTOR_HTTP_HOST"
#: otlp.http.port — port of the OTLP/HTTP receiver (default 4318; 0 picks a free port).
ENV_COLLECTOR_HTTP_PORT: Final = "OTEL_TOKENS_COLLECTOR_HTTP_PORT"
#: otlp.grpc.enabled — "false" turns the OTLP/gRPC receiver off (default true).
ENV_COLLECTOR_GRPC_ENABLED: Final = "OTEL_TOKENS_COLLECTOR_GRPC_ENABLED"
#: otlp.grpc.host — interface of the OTLP/gRPC receiver (default 127.0.0.1).
ENV_COLLECTOR_GRPC_HOST: Final = "OTEL_TOKENS_COLLECTOR_GRPC_HOST"
#: otlp.grpc.port — port of the OTLP/gRPC receiver (default 4317; 0 picks a free port).
ENV_COLLECTOR_GRPC_PORT: Final = "OTEL_TOKENS_COLLECTOR_GRPC_PORT"
#: otlp.max_body_bytes — largest accepted request, compressed and decompressed (default 8 MiB).
ENV_COLLECTOR_MAX_BODY_BYTES: Final = "OTEL_TOKENS_COLLECTOR_MAX_BODY_BYTES"
#: otlp.max_tokens_per_call — the most input + output tokens one span may report (default 10M).
ENV_COLLECTOR_MAX_TOKENS_PER_CALL: Final = "OTEL_TOKENS_COLLECTOR_MAX_TOKENS_PER_CALL"
#: metrics.host — interface of the /metrics and /healthz endpoint (default 127.0.0.1).
ENV_COLLECTOR_METRICS_HOST: Final = "OTEL_TOKENS_COLLECTOR_METRICS_HOST"
#: metrics.port — port of the /metrics and /healthz endpoint (default 9464; 0 picks a free port).
ENV_COLLECTOR_METRICS_PORT: Final = "OTEL_TOKENS_COLLECTOR_METRICS_PORT"
#: metrics.dimensions — comma-separated metric labels (default: the pipeline's default dimensions).
ENV_COLLECTOR_DIMENSIONS: Final = "OTEL_TOKENS_COLLECTOR_DIMENSIONS"
#: metrics.max_series — series limit per metric before the overflow bucket (default: pipeline's).
ENV_COLLECTOR_MAX_SERIES: Final = "OTEL_TOKENS_COLLECTOR_MAX_SERIES"
#: metrics.series_idle_seconds — a series not updated this long leaves /metrics; 0: never (default 3600).
ENV_COLLECTOR_SERIES_IDLE_SECONDS: Final = "OTEL_TOKENS_COLLECTOR_SERIES_IDLE_SECONDS"
#: metrics.dedupe_hold_seconds — how long a span waits for its duplicates (default: pipeline's).
ENV_COLLECTOR_DEDUPE_HOLD_SECONDS: Final = "OTEL_TOKENS_COLLECTOR_DEDUPE_HOLD_SECONDS"
#: metrics.agent_fallback_attribute — resource attribute naming the agent as a last resort (service.name).
ENV_COLLECTOR_AGENT_FALLBACK_ATTRIBUTE: Final = "OTEL_TOKENS_COLLECTOR_AGENT_FALLBACK_ATTRIBUTE"
#: metrics.flush_interval_seconds — how often held spans are flushed into counters (default 0.5).
ENV_COLLECTOR_FLUSH_INTERVAL_SECONDS: Final = "OTEL_TOKENS_COLLECTOR_FLUSH_INTERVAL_SECONDS"
#: budgets_file — path of budgets.yaml, tracked by the collector's budget ledger (default unset).
ENV_COLLECTOR_BUDGETS_FILE: Final = "OTEL_TOKENS_COLLECTOR_BUDGETS_FILE"
#: data_dir — directory of the collector's durable state (SQLite); unset keeps state in memory only.
ENV_COLLECTOR_DATA_DIR: Final = "OTEL_TOKENS_COLLECTOR_DATA_DIR"
#: metrics.dedupe_window_seconds — how long a counted span is remembered to drop resends (default 600).
ENV_COLLECTOR_DEDUPE_WINDOW_SECONDS: Final = "OTEL_TOKENS_COLLECTOR_DEDUPE_WINDOW_SECONDS"
#: metrics.dedupe_max_spans — memory cap of the dedupe window, in spans (default 1,000,000).
ENV_COLLECTOR_DEDUPE_MAX_SPANS: Final = "OTEL_TOKENS_COLLECTOR_DEDUPE_MAX_SPANS"
#: metrics.shutdown_scrape_seconds — at shutdown, how long /metrics waits for one more scrape (default 5).
ENV_COLLECTOR_SHUTDOWN_SCRAPE_SECONDS: Final = "OTEL_TOKENS_COLLECTOR_SHUTDOWN_SCRAPE_SECONDS"
#: server.idle_timeout_seconds — close connections that send no request for this long (default 30).
ENV_COLLECTOR_IDLE_TIMEOUT_SECONDS: Final = "OTEL_TOKENS_COLLECTOR_IDLE_TIMEOUT_SECONDS"
#: server.read_timeout_seconds — time allowed to receive one HTTP request body (default 30).
ENV_COLLECTOR_READ_TIMEOUT_SECONDS: Final = "OTEL_TOKENS_COLLECTOR_READ_TIMEOUT_SECONDS"
#: server.max_connections — open connections per listener (default 256).
ENV_COLLECTOR_MAX_CONNECTIONS: Final = "OTEL_TOKENS_COLLECTOR_MAX_CONNECTIONS"
#: server.workers — OTLP ingest processes sharing the receiver ports (default 1; 0: one per CPU core).
ENV_COLLECTOR_WORKERS: Final = "OTEL_TOKENS_COLLECTOR_WORKERS"
#: auth.token_file — file with the bearer token every listener requires (default unset: no auth).
ENV_COLLECTOR_AUTH_TOKEN_FILE: Final = "OTEL_TOKENS_COLLECTOR_AUTH_TOKEN_FILE"
#: auth.metrics_token_file — a separate bearer token for GET /metrics (default: auth.token_file's).
ENV_COLLECTOR_METRICS_AUTH_TOKEN_FILE: Final = "OTEL_TOKENS_COLLECTOR_METRICS_AUTH_TOKEN_FILE"
#: tls.cert_file / tls.key_file — PEM certificate and key: every listener speaks TLS (default unset).
ENV_COLLECTOR_TLS_CERT_FILE: Final = "OTEL_TOKENS_COLLECTOR_TLS_CERT_FILE"
ENV_COLLECTOR_TLS_KEY_FILE: Final = "OTEL_TOKENS_COLLECTOR_TLS_KEY_FILE"

# --- the in-process budget guard ------------------------------------------------------------------
#: Path of budgets.yaml whose `action`s the agent process enforces before each call (the zero-code
#: `opentelemetry-instrument` path; `otel_tokens.instrument(budgets=...)` wins). Unset: no guard.
ENV_BUDGETS_FILE: Final = "OTEL_TOKENS_BUDGETS_FILE"
#: Base URL of the collector's API (its metrics listener, e.g. http://127.0.0.1:9464): guards in
#: every process share the budgets through its ledger and obey its stop orders (budget file:
#: `guard.collector.url`). Unset: each process enforces alone. The bearer token, when the collector
#: wants one, is read from OTEL_TOKENS_COLLECTOR_AUTH_TOKEN_FILE (or `guard.collector.auth_token_file`).
ENV_GUARD_COLLECTOR_URL: Final = "OTEL_TOKENS_COLLECTOR_URL"

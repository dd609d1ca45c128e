"""Where spans go when the application configured nothing: `instrument()` alone must export.

A span from a `ProxyTracerProvider` (no SDK provider set) goes nowhere, so an agent that follows
the one-line quick start would send the collector nothing, silently. When `instrument()` is given
no provider and the global one is still the API's proxy, this module sets up what
`opentelemetry-instrument` would: an SDK `TracerProvider` whose resource reads `OTEL_SERVICE_NAME`
/ `OTEL_RESOURCE_ATTRIBUTES`, and a `BatchSpanProcessor` exporting as the standard `OTEL_*`
variables say (OTLP over HTTP to http://127.0.0.1:4318 by default; `OTEL_TRACES_EXPORTER=none`
turns it off). The provider shuts down — flushing the batch — at interpreter exit. It logs once,
on the `otel_tokens` logger, what it did.

An application (or `opentelemetry-instrument`) that set its own SDK provider, or any non-proxy
provider, keeps full control: nothing is added to it. The decision is a pure function of the
environment (`plan_export`), so it is tested without touching the process-global provider.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import trace

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider

logger = logging.getLogger("otel_tokens")

#: The standard variables read here (the exporters read their own headers/timeout/compression).
ENV_TRACES_EXPORTER: Final = "OTEL_TRACES_EXPORTER"
ENV_SDK_DISABLED: Final = "OTEL_SDK_DISABLED"
ENV_ENDPOINT: Final = "OTEL_EXPORTER_OTLP_ENDPOINT"
ENV_TRACES_ENDPOINT: Final = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
ENV_PROTOCOL: Final = "OTEL_EXPORTER_OTLP_PROTOCOL"
ENV_TRACES_PROTOCOL: Final = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"

#: Where a collector started with no flags listens (`otel-tokens collector`, `make demo`).
DEFAULT_HTTP_ENDPOINT: Final = "http://127.0.0.1:4318"
DEFAULT_GRPC_ENDPOINT: Final = "http://127.0.0.1:4317"
_TRACES_PATH: Final = "/v1/traces"
_PROTOCOLS: Final = ("http/protobuf", "grpc")


@dataclass(frozen=True)
class ExportPlan:
    """What `instrument()` sets up: `exporters` empty means "set up nothing" (`reason` says why)."""

    exporters: tuple[str, ...] = ()
    protocol: str = "http/protobuf"
    endpoint: str = DEFAULT_HTTP_ENDPOINT + _TRACES_PATH
    reason: str = ""


def plan_export(env: Mapping[str, str]) -> ExportPlan:
    """Read the standard `OTEL_*` variables the way the OpenTelemetry SDK's own configuration does."""
    if env.get(ENV_SDK_DISABLED, "").strip().lower() == "true":
        return ExportPlan(reason=f"{ENV_SDK_DISABLED}=true")
    names = tuple(n.strip().lower() for n in env.get(ENV_TRACES_EXPORTER, "otlp").split(",") if n.strip())
    if not names or names == ("none",):
        return ExportPlan(reason=f"{ENV_TRACES_EXPORTER}=none")
    unknown = [n for n in names if n not in ("otlp", "console")]
    if unknown:
        return ExportPlan(
            reason=f"{ENV_TRACES_EXPORTER}={','.join(unknown)} is not one instrument() sets up (otlp, "
            "console, none); configure a TracerProvider yourself or run under opentelemetry-instrument"
        )
    protocol = (env.get(ENV_TRACES_PROTOCOL) or env.get(ENV_PROTOCOL) or "http/protobuf").strip()
    if protocol not in _PROTOCOLS:
        logger.warning("otel-tokens: OTLP protocol %r is not supported here; using http/protobuf", protocol)
        protocol = "http/protobuf"
    return ExportPlan(exporters=names, protocol=protocol, endpoint=_endpoint(env, protocol))


def _endpoint(env: Mapping[str, str], protocol: str) -> str:
    """The signal-specific endpoint is used as is; the generic one gets `/v1/traces` over HTTP."""
    specific = env.get(ENV_TRACES_ENDPOINT, "").strip()
    if specific:
        return specific
    generic = env.get(ENV_ENDPOINT, "").strip()
    if protocol == "grpc":
        return generic or DEFAULT_GRPC_ENDPOINT
    return (generic or DEFAULT_HTTP_ENDPOINT).rstrip("/") + _TRACES_PATH


def ensure_tracer_provider() -> trace.TracerProvider:
    """The global provider; when nobody set one, first set one up from the environment (once)."""
    current = trace.get_tracer_provider()
    if not isinstance(current, trace.ProxyTracerProvider):
        return current  # the application's own (or opentelemetry-instrument's): hands off
    plan = plan_export(os.environ)
    if not plan.exporters:
        logger.info("otel-tokens: no TracerProvider is configured and %s: no span is exported", plan.reason)
        return current
    provider = _build_provider(plan)
    trace.set_tracer_provider(provider)
    if trace.get_tracer_provider() is not provider:  # lost a race with another set_tracer_provider
        provider.shutdown()
        return trace.get_tracer_provider()
    service = provider.resource.attributes.get("service.name")
    logger.info(
        "otel-tokens: no TracerProvider was configured, so instrument() set one up: spans go to %s "
        "(service.name=%s), batched and flushed at exit. Set your own TracerProvider before "
        "instrument() to take control, or %s=none to export nothing.",
        _describe(plan),
        service,
        ENV_TRACES_EXPORTER,
    )
    return provider


def _describe(plan: ExportPlan) -> str:
    otlp = f"OTLP/{'gRPC' if plan.protocol == 'grpc' else 'HTTP'} {plan.endpoint}"
    return " and ".join(otlp if name == "otlp" else "the console" for name in plan.exporters)


def _build_provider(plan: ExportPlan) -> SdkTracerProvider:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # shutdown_on_exit (the default) registers an atexit hook that flushes the batch processor.
    provider = TracerProvider(resource=Resource.create())
    for name in plan.exporters:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name, plan)))
    return provider


def _exporter(name: str, plan: ExportPlan) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if plan.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=plan.endpoint)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter(endpoint=plan.endpoint)

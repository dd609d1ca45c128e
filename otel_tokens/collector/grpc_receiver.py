"""OTLP/gRPC trace receiver: `opentelemetry.proto.collector.trace.v1.TraceService/Export`.

The method is registered by hand rather than through `trace_service_pb2_grpc`'s servicer helper:
with the generated deserializer, grpcio answers an undecodable request with INTERNAL ("Exception
deserializing request!") before our code runs, while the OTLP spec wants INVALID_ARGUMENT (not
retryable) and we want the rejection counted. So the handler receives raw bytes and parses them
itself; everything else (framing, gzip, RESOURCE_EXHAUSTED above the size limit) is grpcio's.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import grpc
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from otel_tokens._safety import swallow_internal_errors
from otel_tokens.collector.http_receiver import partial_success
from otel_tokens.pipeline import Pipeline

__all__ = ["GrpcReceiver"]

logger = logging.getLogger("otel_tokens.collector")

_SERVICE = trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"].full_name


class GrpcReceiver:
    """A grpc server with the TraceService; binds in `start()` and exposes the bound port."""

    def __init__(
        self, host: str, port: int, pipeline: Pipeline, max_message_bytes: int, workers: int = 8
    ) -> None:
        self._pipeline = pipeline
        self._address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="otel-tokens-grpc"),
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.so_reuseport", 0),  # a second collector on the same port must fail, not share
            ],
        )
        handler = grpc.unary_unary_rpc_method_handler(
            self._export,
            request_deserializer=None,  # raw bytes: we decode, to answer INVALID_ARGUMENT ourselves
            response_serializer=ExportTraceServiceResponse.SerializeToString,
        )
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(_SERVICE, {"Export": handler}),)
        )
        self.port = 0

    def start(self) -> int:
        """Bind and serve; returns the bound port (useful when asked for port 0)."""
        try:
            self.port = self._server.add_insecure_port(self._address)
        except RuntimeError as exc:  # grpcio raises instead of returning 0 in recent versions
            raise OSError(f"cannot bind OTLP/gRPC on {self._address}: {exc}") from None
        if self.port == 0:
            raise OSError(f"cannot bind OTLP/gRPC on {self._address}")
        self._server.start()
        return self.port

    def stop(self, grace: float = 2.0) -> None:
        """Stop accepting, let in-flight exports finish (up to `grace` seconds)."""
        self._server.stop(grace).wait()

    def _export(self, body: bytes, context: grpc.ServicerContext) -> ExportTraceServiceResponse:
        request = ExportTraceServiceRequest()
        try:
            request.ParseFromString(body)
        except DecodeError as exc:
            with swallow_internal_errors("collector.reject_payload"):
                self._pipeline.reject_payload("undecodable_payload")
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"invalid OTLP protobuf: {exc}")
        return partial_success(self._pipeline.ingest_otlp(request))

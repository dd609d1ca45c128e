"""OTLP/gRPC trace receiver: `opentelemetry.proto.collector.trace.v1.TraceService/Export`.

The method is registered by hand rather than through `trace_service_pb2_grpc`'s servicer helper:
with the generated deserializer, grpcio answers an undecodable request with INTERNAL ("Exception
deserializing request!") before our code runs, while the OTLP spec wants INVALID_ARGUMENT (not
retryable) and we want the rejection counted — and a request with one undecodable span should keep
its good spans (otlp_codec's piecewise decoding). So the handler receives raw bytes and parses them
itself — with the compiled walk, without decoding them at all (`http_receiver.ingest_protobuf`);
everything else (framing, gzip, RESOURCE_EXHAUSTED above the size limit) is grpcio's.

Hostile clients are held off by grpc core itself, configured here: connections are multiplexed
without a thread each, a connection that does not finish its handshake or sends no RPC for
`idle_timeout` is closed, and at most `max_connections` are open at once.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from otel_tokens._safety import swallow_internal_errors
from otel_tokens.collector.auth import BearerToken
from otel_tokens.collector.http_edge import EdgeLimits, bind_error
from otel_tokens.collector.http_receiver import ingest_protobuf
from otel_tokens.collector.otlp_codec import UNDECODABLE, Rejected
from otel_tokens.collector.store import StoreError
from otel_tokens.pipeline import Pipeline

__all__ = ["GrpcReceiver", "GrpcTls"]

logger = logging.getLogger("otel_tokens.collector")

#: A real client finishes TCP+TLS+HTTP/2 setup in milliseconds; a silent socket holds a slot till this.
_HANDSHAKE_TIMEOUT_MS = 10_000

_SERVICE = trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"].full_name


@dataclass(frozen=True)
class GrpcTls:
    """PEM bytes of the server certificate (chain) and its key."""

    cert: bytes
    key: bytes


class GrpcReceiver:
    """A grpc server with the TraceService; binds in `start()` and exposes the bound port."""

    def __init__(
        self,
        host: str,
        port: int,
        pipeline: Pipeline,
        max_message_bytes: int,
        *,
        limits: EdgeLimits | None = None,
        token: BearerToken | None = None,
        tls: GrpcTls | None = None,
        workers: int = 8,
        reuse_port: bool = False,
    ) -> None:
        limits = limits if limits is not None else EdgeLimits()
        self._pipeline = pipeline
        self._token = token
        self._tls = tls
        self._host, self._requested_port = host, port
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="otel-tokens-grpc"),
            options=_options(max_message_bytes, limits, reuse_port),
            maximum_concurrent_rpcs=max(workers * 8, 16),  # beyond: RESOURCE_EXHAUSTED, not a queue
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
        host, port = self._host, self._requested_port
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        with _ipv4_only(host, port) as port:
            address = f"{host}:{port}" if ":" not in host else address
            try:
                if self._tls is not None:
                    creds = grpc.ssl_server_credentials([(self._tls.key, self._tls.cert)])
                    self.port = self._server.add_secure_port(address, creds)
                else:
                    self.port = self._server.add_insecure_port(address)
            except RuntimeError:  # grpcio raises instead of returning 0 in recent versions
                self.port = 0
        if self.port == 0:
            raise _bind_failure(host, port)
        self._server.start()
        return self.port

    def stop(self, grace: float = 2.0) -> None:
        """Stop accepting, let in-flight exports finish (up to `grace` seconds)."""
        self._server.stop(grace).wait()

    def _export(self, body: bytes, context: grpc.ServicerContext) -> ExportTraceServiceResponse:
        if self._token is not None and not self._token.accepts(_metadata(context, "authorization")):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        try:
            return ingest_protobuf(self._pipeline, body)
        except Rejected as rejected:
            with swallow_internal_errors("collector.reject_payload"):
                self._pipeline.reject_payload(UNDECODABLE)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, rejected.message)
        except StoreError as exc:  # not kept on disk, so not acknowledged: UNAVAILABLE is retried
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        raise AssertionError("context.abort raises")  # pragma: no cover


def _options(max_message_bytes: int, limits: EdgeLimits, reuse_port: bool = False) -> list[tuple[str, int]]:
    """`reuse_port`: the collector's ingest workers share the port (the main process reserved it, so
    another collector is still refused: collector/workers.py)."""
    idle_ms = int(limits.idle_timeout * 1000)
    handshake_ms = min(idle_ms, _HANDSHAKE_TIMEOUT_MS)
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.so_reuseport", int(reuse_port)),  # else a second collector on the port must fail, not share
        ("grpc.max_allowed_incoming_connections", limits.max_connections),
        ("grpc.server_handshake_timeout_ms", handshake_ms),  # a silent socket never finishes HTTP/2 setup
        ("grpc.max_connection_idle_ms", idle_ms),  # no RPC for this long: GOAWAY
    ]


def _metadata(context: grpc.ServicerContext, key: str) -> str | None:
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return value if isinstance(value, str) else None
    return None


@contextlib.contextmanager
def _ipv4_only(host: str, port: int) -> Iterator[int]:
    """Make grpc bind `0.0.0.0` on IPv4 only; yields the port to ask grpc for.

    grpc core turns the wildcard `0.0.0.0` into a dual-stack `[::]` socket, so the receiver would
    answer on every IPv6 address too. Its documented fallback when the IPv6 wildcard cannot be bound
    is to bind `0.0.0.0` alone; holding `[::]:port` (bound, never listening) for the duration of the
    bind triggers exactly that. Port 0 is resolved first, so both families agree on the port.
    """
    if host != "0.0.0.0":
        yield port
        return
    probe = socket.socket(socket.AF_INET)
    holder = socket.socket(socket.AF_INET6)
    try:
        if port == 0:
            probe.bind(("0.0.0.0", 0))
            port = probe.getsockname()[1]
        with contextlib.suppress(OSError):  # no IPv6 on this host: grpc binds IPv4 alone anyway
            holder.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            holder.bind(("::", port))
        probe.close()
        yield port
    finally:
        probe.close()
        holder.close()


def _bind_failure(host: str, port: int) -> OSError:
    """grpc says only "failed to bind"; find out whether the port is taken, to say so."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            return bind_error(exc, host, port, "OTLP/gRPC", "--grpc-port (otlp.grpc.port)")
    return OSError(f"cannot bind OTLP/gRPC on {host}:{port}; see --grpc-host (otlp.grpc.host)")

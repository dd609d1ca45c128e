"""The collector as a running service: receivers, /metrics, a flusher thread, start/stop, signals.

`CollectorService` is the embeddable, testable unit: `start()` returns once every listener is bound
(port 0 resolves to a free port, exposed as `http_port` / `grpc_port` / `metrics_port`), `stop()`
stops intake first and flushes last so nothing received is lost. `run_collector()` is the
command-line shell around it: log where it listens, block until SIGINT/SIGTERM, stop cleanly.

Both HTTP listeners (OTLP/HTTP, and /metrics with the API) run on one `HttpEdge` event loop; gRPC
runs on grpc core. Every listener shares the same limits (idle and read timeouts, a connection cap),
the same optional bearer token and the same optional TLS certificate.
"""

from __future__ import annotations

import logging
import signal
import ssl
import threading
from collections.abc import Callable, Sequence
from types import FrameType, TracebackType

from otel_tokens._safety import swallow_internal_errors
from otel_tokens.budgets.ledger import BudgetLedger
from otel_tokens.budgets.loader import load_budget_file
from otel_tokens.collector.auth import BearerToken
from otel_tokens.collector.config import CollectorConfig
from otel_tokens.collector.grpc_receiver import GrpcReceiver, GrpcTls
from otel_tokens.collector.http_edge import EdgeLimits, HttpEdge, Listener, bind_socket
from otel_tokens.collector.http_receiver import BUDGETS_PATH, TRACES_PATH, api_app, otlp_app
from otel_tokens.pipeline import Pipeline

__all__ = ["CollectorService", "run_collector"]

logger = logging.getLogger("otel_tokens.collector")


class CollectorService:
    """OTLP/HTTP + OTLP/gRPC receivers feeding one `Pipeline`, exposed on /metrics."""

    def __init__(self, config: CollectorConfig | None = None, *, pipeline: Pipeline | None = None) -> None:
        self.config = config if config is not None else CollectorConfig()
        self.pipeline = pipeline if pipeline is not None else self._pipeline()
        #: The exact budget ledger, when a budget file is configured. Loading it here (not in start())
        #: makes a broken budget file stop start-up with every error listed, before any port opens.
        self.ledger: BudgetLedger | None = None
        if self.config.budgets_file:
            self.ledger = BudgetLedger(load_budget_file(self.config.budgets_file))
            self.ledger.attach(self.pipeline)
        # Token and certificate files are read here too: a missing one stops start-up, named.
        self._token = _token(self.config.auth_token_file, "auth.token_file")
        self._metrics_token = _token(self.config.metrics_auth_token_file, "auth.metrics_token_file")
        self._tls = _tls(self.config)
        self._edge: HttpEdge | None = None
        self._http: Listener | None = None
        self._metrics: Listener | None = None
        self._grpc: GrpcReceiver | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    def _pipeline(self) -> Pipeline:
        return Pipeline(
            self.config.metrics_config(),
            dedupe=self.config.dedupe_config(),
            max_tokens_per_call=self.config.max_tokens_per_call,
        )

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> CollectorService:
        """Bind every listener, then serve in background threads. A bind failure stops whatever was
        already started and re-raises, so a half-started collector never lingers."""
        try:
            self._bind()
        except BaseException:
            self.stop()
            raise
        self._spawn("otel-tokens-flusher", self._flush_loop)
        return self

    def _bind(self) -> None:
        cfg = self.config
        limits = self.limits()
        ssl_context = _ssl_context(cfg)
        self._edge = edge = HttpEdge(limits, ssl_context)
        metrics_sock = bind_socket(
            cfg.metrics_host, cfg.metrics_port, "/metrics", "--metrics-port (metrics.port)"
        )
        self._metrics = Listener("metrics", metrics_sock, api_app(
            self.pipeline.registry, edge, self.ledger, token=self._token, metrics_token=self._metrics_token,
        ))  # fmt: skip
        edge.add(self._metrics)
        http_sock = bind_socket(cfg.http_host, cfg.http_port, "OTLP/HTTP", "--http-port (otlp.http.port)")
        self._http = Listener("otlp-http", http_sock, otlp_app(
            self.pipeline, edge, cfg.max_body_bytes, self._token
        ))  # fmt: skip
        edge.add(self._http)
        if cfg.grpc_enabled:
            self._grpc = GrpcReceiver(
                cfg.grpc_host, cfg.grpc_port, self.pipeline, cfg.max_body_bytes,
                limits=limits, token=self._token, tls=self._tls,
            )  # fmt: skip
            self._grpc.start()
        edge.start()

    def limits(self) -> EdgeLimits:
        cfg = self.config
        return EdgeLimits(
            idle_timeout=cfg.idle_timeout_seconds,
            read_timeout=cfg.read_timeout_seconds,
            max_connections=cfg.max_connections,
        )

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        """Stop intake (in-flight requests finish), then count everything still held. Idempotent."""
        self._stopping.set()
        if self._grpc is not None:
            self._grpc.stop()
        if self._edge is not None:
            self._edge.stop()
        else:  # bound but never served: only the sockets to close
            for listener in (self._http, self._metrics):
                if listener is not None:
                    listener.sock.close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads.clear()
        self._http = self._metrics = None
        self._grpc, self._edge = None, None
        with swallow_internal_errors("collector.final_flush"):
            self.pipeline.flush(now=float("inf"))

    def _flush_loop(self) -> None:
        """Held spans (waiting for a duplicate) reach the counters within one interval."""
        while not self._stopping.wait(self.config.flush_interval_seconds):
            with swallow_internal_errors("collector.flush"):
                self.pipeline.flush()

    def __enter__(self) -> CollectorService:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- where it listens ----------------------------------------------------------------------------
    @property
    def http_port(self) -> int:
        return self._http.port if self._http is not None else 0

    @property
    def connection_caps(self) -> dict[str, tuple[int, int]]:
        """Per HTTP listener: (connections refused, connections evicted) at the cap so far."""
        caps = self._edge.caps if self._edge is not None else {}
        return {name: (cap.refused, cap.evicted) for name, cap in caps.items()}

    @property
    def grpc_port(self) -> int:
        return self._grpc.port if self._grpc is not None else 0

    @property
    def metrics_port(self) -> int:
        return self._metrics.port if self._metrics is not None else 0

    def endpoints(self) -> list[str]:
        """Human-readable listen addresses, as logged at start-up."""
        cfg = self.config
        scheme = "https" if self._tls is not None else "http"
        lines = [f"OTLP/HTTP on {scheme}://{_hostport(cfg.http_host, self.http_port)}{TRACES_PATH}"]
        if self._grpc is not None:
            tls = " (TLS)" if self._tls is not None else ""
            lines.append(f"OTLP/gRPC on {_hostport(cfg.grpc_host, self.grpc_port)}{tls}")
        metrics = _hostport(cfg.metrics_host, self.metrics_port)
        lines.append(f"Prometheus metrics on {scheme}://{metrics}/metrics (health: /healthz)")
        if self.ledger is not None:
            lines.append(f"Budget status on {scheme}://{metrics}{BUDGETS_PATH}")
        if self._token is not None:
            lines.append("bearer token required")
        return lines


def _token(path: str | None, key: str) -> BearerToken | None:
    return BearerToken.from_file(path, key) if path else None


def _tls(config: CollectorConfig) -> GrpcTls | None:
    if not (config.tls_cert_file and config.tls_key_file):
        return None
    files = {"tls.cert_file": config.tls_cert_file, "tls.key_file": config.tls_key_file}
    pem: dict[str, bytes] = {}
    for key, path in files.items():
        try:
            with open(path, "rb") as f:
                pem[key] = f.read()
        except OSError as exc:
            raise OSError(exc.errno, f"{key}: cannot read {path}: {exc.strerror or exc}") from None
    return GrpcTls(cert=pem["tls.cert_file"], key=pem["tls.key_file"])


def _ssl_context(config: CollectorConfig) -> ssl.SSLContext | None:
    """The HTTP listeners' TLS context, from the same PEM files as gRPC's."""
    if not (config.tls_cert_file and config.tls_key_file):
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    except ssl.SSLError as exc:
        raise OSError(f"tls.cert_file, tls.key_file: not a matching PEM certificate and key: {exc}") from None
    return context


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def run_collector(config: CollectorConfig | Sequence[str] | None = None) -> int:
    """Run until SIGINT/SIGTERM; `config` is a config, or CLI arguments to parse. Returns an exit code."""
    if not isinstance(config, CollectorConfig):
        from otel_tokens.collector import parse_config

        config = parse_config(config)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with CollectorService(config) as service:
            logger.info("otel-tokens collector listening: %s", "; ".join(service.endpoints()))
            if service.ledger is not None:
                logger.info("tracking %d budgets from %s", len(service.ledger.status()), config.budgets_file)
            while not stop.wait(1.0):  # a timed wait keeps signal delivery prompt everywhere
                pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    logger.info("otel-tokens collector stopped; all received spans counted")
    return 0

"""The collector as a running service: receivers, /metrics, a flusher thread, start/stop, signals.

`CollectorService` is the embeddable, testable unit: `start()` restores the kept state (with a
data dir) and returns once every listener is bound (port 0 resolves to a free port, exposed as
`http_port` / `grpc_port` / `metrics_port`). `stop()` stops intake first, then counts the spans
still held for dedupe while `/metrics` still serves, persists, and closes `/metrics` last, so
nothing received is lost or unseen. `run_collector()` is the command-line shell around it: log
where it listens, block until SIGINT/SIGTERM, stop cleanly.

Both HTTP listeners (OTLP/HTTP, and /metrics with the API) run on one `HttpEdge` event loop; gRPC
runs on grpc core. Every listener shares the same limits (idle and read timeouts, a connection cap),
the same optional bearer token and the same optional TLS certificate.
"""

from __future__ import annotations

import logging
import signal
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from types import FrameType, TracebackType

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from otel_tokens._safety import swallow_internal_errors
from otel_tokens.budgets.ledger import BudgetLedger
from otel_tokens.budgets.loader import load_budget_file
from otel_tokens.collector.api_guard import GuardApi
from otel_tokens.collector.auth import BearerToken
from otel_tokens.collector.config import CollectorConfig
from otel_tokens.collector.durable import Durability, PinnedClock
from otel_tokens.collector.grpc_receiver import GrpcReceiver, GrpcTls
from otel_tokens.collector.http_edge import EdgeLimits, HttpEdge, Listener, bind_socket
from otel_tokens.collector.http_receiver import BUDGETS_PATH, TRACES_PATH, api_app, otlp_app
from otel_tokens.collector.status_page import status_routes
from otel_tokens.collector.stop_orders import StopOrderBook
from otel_tokens.collector.store import Store
from otel_tokens.pipeline import Pipeline

__all__ = ["CollectorService", "run_collector"]

logger = logging.getLogger("otel_tokens.collector")

#: Where the stop orders are kept in the store's `meta` table (small, rewritten whole on change).
_STOP_ORDERS_KEY = "stop_orders"
_SET_META = "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)"

#: After the last scrape's metrics were collected at shutdown, time for its response to be sent.
_RESPONSE_GRACE_SECONDS = 0.2


class CollectorService:
    """OTLP/HTTP + OTLP/gRPC receivers feeding one `Pipeline`, exposed on /metrics."""

    def __init__(self, config: CollectorConfig | None = None, *, pipeline: Pipeline | None = None) -> None:
        self.config = config if config is not None else CollectorConfig()
        #: Registered first in a registry we create, so its count moves at the *start* of a scrape.
        self._scrapes = _ScrapeWatch()
        self.pipeline = pipeline if pipeline is not None else self._pipeline()
        if pipeline is not None:
            pipeline.registry.register(self._scrapes)
        #: The exact budget ledger, when a budget file is configured. Loading it here (not in start())
        #: makes a broken budget file stop start-up with every error listed, before any port opens.
        self.ledger: BudgetLedger | None = None
        if self.config.budgets_file:
            self.ledger = BudgetLedger(load_budget_file(self.config.budgets_file), clock=self.pipeline.clock)
            self.ledger.attach(self.pipeline)
        #: Stop orders from Alertmanager's webhook, read by guards with the budget status.
        self.stop_orders = StopOrderBook()
        self.durability: Durability | None = None
        #: What start() did with the kept state, for the start-up log.
        self.state_note = (
            "no data dir: counters, budgets and dedupe memory are kept in memory only (set --data-dir)"
        )
        # Token and certificate files are read here too: a missing one stops start-up, named.
        self._token = _token(self.config.auth_token_file, "auth.token_file")
        self._metrics_token = _token(self.config.metrics_auth_token_file, "auth.metrics_token_file")
        self._tls = _tls(self.config)
        self._edge: HttpEdge | None = None
        self._http: Listener | None = None
        self._metrics: Listener | None = None
        self._grpc: GrpcReceiver | None = None
        self._threads: list[threading.Thread] = []
        self._flusher: threading.Thread | None = None
        self._stopping = threading.Event()

    def _pipeline(self) -> Pipeline:
        """One clock for the pipeline and the ledger, pinned per change by the durable store."""
        registry = CollectorRegistry()
        registry.register(self._scrapes)
        return Pipeline(
            self.config.metrics_config(),
            dedupe=self.config.dedupe_config(),
            registry=registry,
            max_tokens_per_call=self.config.max_tokens_per_call,
            clock=PinnedClock(),
        )

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> CollectorService:
        """Bind every listener, then serve in background threads. A bind failure stops whatever was
        already started and re-raises, so a half-started collector never lingers."""
        try:
            self._restore()
            self._bind()
        except BaseException:
            self.stop()
            raise
        self._flusher = self._spawn("otel-tokens-flusher", self._flush_loop)
        return self

    def _restore(self) -> None:
        """With a data dir: load the kept state, then journal every change from now on."""
        if self.config.data_dir is None or self.durability is not None:
            return
        durability = Durability(Store(self.config.data_dir), self.pipeline, self.ledger)
        try:
            self.state_note = durability.restore()
        except BaseException:
            durability.close()
            raise
        self.durability = durability.start()
        self._keep_stop_orders(durability.store)

    def _keep_stop_orders(self, store: Store) -> None:
        """Stop orders survive a restart: loaded from the store, written back on every change."""
        kept = store.meta(_STOP_ORDERS_KEY)
        if kept:
            in_force = self.stop_orders.restore(kept)
            self.state_note += f"; {in_force} stop orders in force"

        def persist(text: str) -> None:
            def write(db: sqlite3.Connection) -> None:
                db.execute(_SET_META, (_STOP_ORDERS_KEY, text))

            store.run(write)

        self.stop_orders.persist = persist

    def _bind(self) -> None:
        cfg = self.config
        self._edge = edge = HttpEdge(self.limits(), _ssl_context(cfg))
        metrics_sock = bind_socket(
            cfg.metrics_host, cfg.metrics_port, "/metrics", "--metrics-port (metrics.port)"
        )
        page = status_routes(self.pipeline.registry, self.ledger, edge, started_at=time.time())
        self._metrics = Listener("metrics", metrics_sock, api_app(
            self.pipeline.registry, edge, self.ledger, token=self._token, metrics_token=self._metrics_token,
            routes=page, guard=GuardApi(self.ledger, self.stop_orders),
        ))  # fmt: skip
        edge.add(self._metrics)
        self._bind_intake(edge)
        edge.start()

    def _bind_intake(self, edge: HttpEdge) -> None:
        """The OTLP receivers, in this process (the multi-process service replaces this)."""
        cfg = self.config
        http_sock = bind_socket(cfg.http_host, cfg.http_port, "OTLP/HTTP", "--http-port (otlp.http.port)")
        self._http = Listener("otlp-http", http_sock, otlp_app(
            self.pipeline, edge, cfg.max_body_bytes, self._token
        ))  # fmt: skip
        edge.add(self._http)
        if cfg.grpc_enabled:
            self._grpc = GrpcReceiver(
                cfg.grpc_host, cfg.grpc_port, self.pipeline, cfg.max_body_bytes,
                limits=self.limits(), token=self._token, tls=self._tls,
            )  # fmt: skip
            self._grpc.start()

    def _stop_intake(self) -> None:
        """End OTLP intake (in-flight exports finish); /metrics keeps serving."""
        if self._grpc is not None:
            self._grpc.stop()
        if self._edge is not None and self._http is not None:
            self._edge.stop_listener(self._http)

    def limits(self) -> EdgeLimits:
        return edge_limits(self.config)

    def _spawn(self, name: str, target: Callable[[], None]) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    def stop(self, *, final_scrape_seconds: float = 0.0) -> None:
        """Stop intake (in-flight requests finish), count everything still held while /metrics
        still serves, persist, then close /metrics — after one more scrape when held spans were
        counted, waiting at most `final_scrape_seconds`. Idempotent."""
        self._stopping.set()
        self._stop_intake()
        if self._flusher is not None:
            self._flusher.join(timeout=5)  # the final flush below is the last one
        held = self.pipeline.held_spans
        with swallow_internal_errors("collector.final_flush"):
            self.pipeline.flush(now=float("inf"))
        scrapes = self._scrapes.count  # a scrape counted from here on collects after the flush
        if self.durability is not None:
            self.durability.close()
            self.durability = None
        if held and self._edge is not None:
            self._scrapes.wait_beyond(scrapes, final_scrape_seconds)
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
        if cfg.grpc_enabled and self.grpc_port:
            tls = " (TLS)" if self._tls is not None else ""
            lines.append(f"OTLP/gRPC on {_hostport(cfg.grpc_host, self.grpc_port)}{tls}")
        metrics = _hostport(cfg.metrics_host, self.metrics_port)
        lines.append(f"Prometheus metrics on {scheme}://{metrics}/metrics (health: /healthz)")
        lines.append(f"Status page on {scheme}://{metrics}/")
        if self.ledger is not None:
            lines.append(f"Budget status on {scheme}://{metrics}{BUDGETS_PATH}")
        if self._token is not None:
            lines.append("bearer token required")
        return lines


class _ScrapeWatch(Collector):
    """Counts scrapes of the registry (it yields no metrics), so shutdown can wait for one. The
    registry collects in registration order, so registered first it counts a scrape as it begins."""

    def __init__(self) -> None:
        self.count = 0
        self._cond = threading.Condition()

    def describe(self) -> Iterable[Metric]:
        return ()  # registration must not count as a scrape

    def collect(self) -> Iterable[Metric]:
        with self._cond:
            self.count += 1
            self._cond.notify_all()
        return ()

    def wait_beyond(self, count: int, timeout: float) -> None:
        """Wait for a scrape after the `count`-th, at most `timeout` seconds, and give its response
        a moment to be written (collect() runs before the body is sent)."""
        if timeout <= 0:
            return
        with self._cond:
            scraped = self._cond.wait_for(lambda: self.count > count, timeout)
        if scraped:
            time.sleep(_RESPONSE_GRACE_SECONDS)


def edge_limits(config: CollectorConfig) -> EdgeLimits:
    """What any one client may hold on a listener, from the `server.*` keys."""
    return EdgeLimits(
        idle_timeout=config.idle_timeout_seconds,
        read_timeout=config.read_timeout_seconds,
        max_connections=config.max_connections,
    )


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


def _service(config: CollectorConfig) -> CollectorService:
    """One process, or the main process of `workers` ingest processes (collector/workers.py)."""
    workers = config.resolved_workers()
    if workers == 1:
        return CollectorService(config)
    from otel_tokens.collector.workers import ScaledCollectorService

    return ScaledCollectorService(config, workers=workers)


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
        service = _service(config).start()
        unsettle = _settle_single_process_gc(service)
        try:
            logger.info("otel-tokens collector listening: %s", "; ".join(service.endpoints()))
            logger.info("%s", service.state_note)
            if service.ledger is not None:
                logger.info("tracking %d budgets from %s", len(service.ledger.status()), config.budgets_file)
            while not stop.wait(1.0):  # a timed wait keeps signal delivery prompt everywhere
                pass
        finally:
            service.stop(final_scrape_seconds=config.shutdown_scrape_seconds)
            if unsettle is not None:
                unsettle()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    logger.info("otel-tokens collector stopped; all received spans counted")
    return 0


def _settle_single_process_gc(service: CollectorService) -> Callable[[], None] | None:
    """The GC settings the multi-process collector runs with (`worker_process.settle_gc`), for the
    single-process one too, whose intake extracts, holds and counts every record in this process:
    with CPython's defaults, garbage collection was ~1.3 of ~7.4 us a span of openai-v2 traffic
    (mostly full collections re-walking the ~80k objects of modules and price data that never
    change). None when the service settled them itself."""
    if type(service) is not CollectorService:
        return None  # ScaledCollectorService settles its main process in _bind_intake
    from otel_tokens.collector.worker_process import settle_gc

    return settle_gc()

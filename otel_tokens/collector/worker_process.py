"""One ingest worker process: the OTLP receivers, decoding and extracting, counting nothing itself.

`run_worker` is the `multiprocessing` target the main process (workers.py) spawns. It builds a
pipeline whose gate is a `RemoteGate` (worker_link.py), so the receivers — the same `otlp_app` and
`GrpcReceiver` the single-process collector runs — send every extracted batch to the main process
and answer their exporter with its acknowledgement; the guard's decision events go there as well,
in the batch (`Batch.decisions`). It serves until SIGTERM (drain: stop accepting,
finish in-flight exports, exit) or until the main process is gone (exit at once: nothing can be
acknowledged any more, and a restarted collector needs the ports).
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from types import FrameType

from otel_tokens.collector.config import CollectorConfig
from otel_tokens.collector.grpc_receiver import GrpcReceiver
from otel_tokens.collector.http_edge import HttpEdge, Listener
from otel_tokens.collector.http_receiver import otlp_app
from otel_tokens.collector.presum import Presum
from otel_tokens.collector.service import _ssl_context, _tls, _token, edge_limits
from otel_tokens.collector.worker_link import RemoteGate, WorkerLink
from otel_tokens.pipeline import Pipeline

__all__ = ["run_worker", "settle_gc"]

logger = logging.getLogger("otel_tokens.collector")

#: Exit code of a worker whose main process vanished.
EXIT_MAIN_GONE = 3
#: Container allocations between two young-generation collections (CPython's default: 700).
GC_YOUNG_THRESHOLD = 20_000


def settle_gc() -> Callable[[], None]:
    """Once started: move everything allocated so far out of the collector's sight (`gc.freeze`),
    and collect the young generation every 20k container allocations instead of 700. A batch
    allocates tens of thousands of short-lived tuples and records, nearly none in cycles; with the
    defaults, rebuilding a batch's records in the main process took twice as long (1.5 -> 2.9 us a
    record, measured), most of it collections finding nothing. Memory cost: cyclic garbage waits a
    little longer. Returns what puts the previous settings back (a collector run inside a test)."""
    gc.collect()
    gc.freeze()
    before = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *before[1:])

    def restore() -> None:
        gc.unfreeze()
        gc.set_threshold(*before)

    return restore


def run_worker(
    index: int,
    config: CollectorConfig,
    http_sock: socket.socket,
    grpc_port: int,
    conn: Connection,
    max_in_flight: int,
    main_walks: ctypes.c_longlong,
) -> None:
    """Serve OTLP on the shared sockets until SIGTERM or until the main process is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group; the main process decides
    stop = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format=f"%(asctime)s %(levelname)s %(name)s[worker {index}]: %(message)s"
        )

    def main_gone() -> None:
        if not stop.is_set():
            os._exit(EXIT_MAIN_GONE)  # no thread may linger holding the ports

    link = WorkerLink(conn, max_in_flight=max_in_flight, on_lost=main_gone)
    pipeline = Pipeline(
        config.metrics_config(), dedupe=config.dedupe_config(), max_tokens_per_call=config.max_tokens_per_call
    )
    pipeline.gate = RemoteGate(link, pipeline.extract_stats, Presum(config.metrics_config()).columns)
    # while the main process tracks ancestor walks, batches carry their spans' links there
    pipeline.walks_elsewhere = lambda: bool(main_walks.value)
    settle_gc()
    _serve(config, pipeline, link, http_sock, grpc_port, stop)


def _serve(
    config: CollectorConfig,
    pipeline: Pipeline,
    link: WorkerLink,
    http_sock: socket.socket,
    grpc_port: int,
    stop: threading.Event,
) -> None:
    token = _token(config.auth_token_file, "auth.token_file")
    limits = edge_limits(config)
    edge = HttpEdge(limits, _ssl_context(config))
    http = Listener("otlp-http", http_sock, otlp_app(pipeline, edge, config.max_body_bytes, token))
    edge.add(http)
    link.start()
    grpc: GrpcReceiver | None = None
    if config.grpc_enabled:
        grpc = GrpcReceiver(
            config.grpc_host, grpc_port, pipeline, config.max_body_bytes,
            limits=limits, token=token, tls=_tls(config), reuse_port=True,
        )  # fmt: skip
        grpc.start()
    edge.start()
    link.send_ready((http.port, grpc.port if grpc is not None else 0))
    while not stop.wait(1.0):
        pass
    # Drain: in-flight exports finish and are answered (the main process still serves them).
    if grpc is not None:
        grpc.stop()
    edge.stop()
    link.close()

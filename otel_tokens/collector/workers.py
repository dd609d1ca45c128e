"""The collector on every core: N ingest processes on the same ports, one main process that counts.

`otel-tokens collector --workers N` (default: one per core; 1: the single-process collector) runs
`ScaledCollectorService`. Its main process binds the OTLP/HTTP socket and reserves the gRPC port (so
a port in use fails start-up with the usual message, and port 0 resolves once), then starts N worker
processes (`spawn`, so no thread or grpc state is forked). Each worker accepts on the shared HTTP
socket, binds gRPC on the reserved port with SO_REUSEPORT, and decodes and extracts there — the
CPU-heavy part, now in parallel, with as much of the counting as can be done before dedupe: the
batch summed per series. What it extracted (a `Batch`: records, their sums, rejections, task
completions) goes over a pipe to the main process (worker_link.py; packed by worker_wire.py), which
applies it through its one pipeline's gate: dedupe, counters, budget ledger, journal. The guard's
decision events found in a worker's spans travel in the batch and are counted (and journaled) there
too. So `/metrics`, the ledger and the data dir stay
single and exact, and a worker answers an export only after the main process acknowledged it (with
a data dir: after it is on disk).

A worker that dies is restarted (logged); whatever it had sent was applied, whatever it had not
was never acknowledged, so the exporter's resend is counted once (dedupe). If the main process
dies, its workers see the pipe close and exit, so a restarted collector finds its ports free. At
shutdown the workers are drained first (SIGTERM: they stop accepting and finish in-flight exports,
whose answers the main process still gives), then the main process flushes, persists and closes
`/metrics` as the single-process collector does.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

from otel_tokens.collector.config import CollectorConfig
from otel_tokens.collector.durable import Durability
from otel_tokens.collector.http_edge import AddressInUse, HttpEdge, bind_error, bind_socket
from otel_tokens.collector.service import CollectorService
from otel_tokens.collector.store import StoreError
from otel_tokens.collector.worker_link import (
    BATCH,
    ERROR,
    OK,
    READY,
    REJECTION,
    STORE_ERROR,
    add_stats,
    unpack_batch,
)
from otel_tokens.pipeline import Pipeline

__all__ = ["ScaledCollectorService", "WorkerPool"]

logger = logging.getLogger("otel_tokens.collector")

#: Requests of one worker waiting for the main process at once (the backpressure bound).
MAX_IN_FLIGHT_PER_WORKER = 64
#: How long a starting worker may take to import, bind and report ready (spawn imports afresh).
_START_TIMEOUT_SECONDS = 60.0
#: A worker that keeps dying is restarted at most this often.
_RESTART_EVERY_SECONDS = 1.0
_DRAIN_SECONDS = 10.0
#: How long start-up waits for a port still held by the exiting workers of a killed collector.
_PORT_FREED_SECONDS = 5.0
T = TypeVar("T")


class _Worker:
    """The main process's handle on one worker process: its pipe, and the thread reading it."""

    def __init__(self, index: int, process: BaseProcess, conn: Connection) -> None:
        self.index = index
        self.process = process
        self.conn = conn
        self.ready = threading.Event()
        self.started_at = time.monotonic()
        self._send_lock = threading.Lock()
        self.reader: threading.Thread | None = None

    def answer(self, rid: int, outcome: str, value: Any) -> None:
        try:
            with self._send_lock:
                self.conn.send((rid, outcome, value))
        except OSError:  # the worker died meanwhile: its exporter never got an OK and will resend
            pass


class WorkerPool:
    """Starts, feeds, restarts and drains the ingest workers of one main-process `Pipeline`."""

    def __init__(self, config: CollectorConfig, workers: int, pipeline: Pipeline) -> None:
        self.config = config
        self.size = workers
        self.pipeline = pipeline
        self.http_port = 0
        self.grpc_port = 0
        self._http_sock: socket.socket | None = None
        self._grpc_holders: list[socket.socket] = []
        self._ctx = multiprocessing.get_context("spawn")
        # how many ancestor walks the main pipeline tracks, read by every worker (see pipeline.py):
        # one word, written by one process under the pipeline's resolver lock, so no lock of its own
        self._walks = self._ctx.Value("q", 0, lock=False)
        pipeline.on_walks = self._publish_walks
        self._workers: list[_Worker | None] = [None] * workers
        self._apply = ThreadPoolExecutor(max(4, 2 * workers), thread_name_prefix="otel-tokens-apply")
        self._stats_lock = threading.Lock()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        self.restarts = 0

    # --- start ------------------------------------------------------------------------------------
    def start(self) -> WorkerPool:
        cfg = self.config
        self._http_sock = _retrying(
            lambda: bind_socket(cfg.http_host, cfg.http_port, "OTLP/HTTP", "--http-port (otlp.http.port)")
        )
        self.http_port = int(self._http_sock.getsockname()[1])
        if cfg.grpc_enabled:
            self.grpc_port = _retrying(lambda: self._reserve_grpc_port(cfg.grpc_host, cfg.grpc_port))
        for index in range(self.size):
            self._workers[index] = self._spawn(index)
        for worker in self._workers:
            assert worker is not None
            self._await_ready(worker)
        self._supervisor = threading.Thread(target=self._supervise, name="otel-tokens-workers", daemon=True)
        self._supervisor.start()
        return self

    def _publish_walks(self, waiting: int) -> None:
        self._walks.value = waiting

    def _reserve_grpc_port(self, host: str, port: int) -> int:
        """Check the port is free (a bind without SO_REUSEPORT fails against any listener, sharing
        or not), then hold it with SO_REUSEPORT so the workers can share it and no other socket can
        take it. SO_REUSEADDR on both, as grpc sets it: connections in TIME_WAIT do not count."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise bind_error(exc, host, port, "OTLP/gRPC", "--grpc-port (otlp.grpc.port)") from None
            port = int(probe.getsockname()[1])
        holder = socket.socket(family)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind((host, port))
        self._grpc_holders.append(holder)
        if host == "0.0.0.0":  # keep grpc on IPv4 alone (see grpc_receiver._ipv4_only), in every worker
            v6 = socket.socket(socket.AF_INET6)
            with contextlib.suppress(OSError):
                v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                v6.bind(("::", port))
            self._grpc_holders.append(v6)
        return port

    def _spawn(self, index: int) -> _Worker:
        from otel_tokens.collector.worker_process import run_worker

        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(
            target=run_worker,
            args=(
                index,
                self.config,
                self._http_sock,
                self.grpc_port,
                child,
                MAX_IN_FLIGHT_PER_WORKER,
                self._walks,
            ),
            name=f"otel-tokens-worker-{index}",
            daemon=True,
        )
        process.start()
        child.close()
        worker = _Worker(index, process, parent)
        reader = threading.Thread(target=self._serve, args=(worker,), name=f"otel-tokens-link-{index}")
        reader.daemon = True
        reader.start()
        worker.reader = reader
        return worker

    def _await_ready(self, worker: _Worker) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        while not worker.ready.wait(0.1):
            if not worker.process.is_alive() or time.monotonic() > deadline:
                raise OSError(
                    f"ingest worker {worker.index} did not start (exit code {worker.process.exitcode}); "
                    "its error is logged above"
                )

    # --- serve ------------------------------------------------------------------------------------
    def _serve(self, worker: _Worker) -> None:
        """Read the worker's requests and apply each. With a data dir on the pool, so the durable
        store can commit several exports together (each waits for its commit); else here, at once:
        nothing waits, and handing each batch to another thread cost the main process ~15% of its
        time (profiled)."""
        while True:
            try:
                rid, kind, payload = worker.conn.recv()
            except (EOFError, OSError):
                return
            if kind == READY:
                worker.ready.set()
            elif isinstance(self.pipeline.gate, Durability):
                self._apply.submit(self._apply_one, worker, rid, kind, payload)
            else:
                self._apply_one(worker, rid, kind, payload)

    def _apply_one(self, worker: _Worker, rid: int, kind: str, payload: Any) -> None:
        try:
            if kind == BATCH:
                keys_only = not isinstance(self.pipeline.gate, Durability)
                batch, delta = unpack_batch(payload, keys_only=keys_only)
                if delta is not None:
                    with self._stats_lock:
                        add_stats(self.pipeline.extract_stats, delta)
                worker.answer(rid, OK, self.pipeline.gate.batch(batch))
            elif kind == REJECTION:
                self.pipeline.gate.rejection(*payload)
                worker.answer(rid, OK, None)
            else:
                worker.answer(rid, ERROR, f"unknown request {kind!r}")
        except StoreError as exc:
            worker.answer(rid, STORE_ERROR, str(exc))
        except Exception as exc:
            logger.exception("applying an ingest worker's %s failed", kind)
            worker.answer(rid, ERROR, f"{type(exc).__name__}: {exc}")

    def _supervise(self) -> None:
        """Restart a worker that exited while the collector runs."""
        while not self._stopping.is_set():
            live = {w.process.sentinel: w for w in self._workers if w is not None}
            for sentinel in wait(list(live), timeout=0.5):
                if self._stopping.is_set():
                    return
                self._restart(live[sentinel])  # type: ignore[index]

    def _restart(self, dead: _Worker) -> None:
        dead.process.join(timeout=1)
        logger.warning("ingest worker %d (pid %s) exited with code %s; restarting it",
                       dead.index, dead.process.pid, dead.process.exitcode)  # fmt: skip
        dead.conn.close()
        wait_s = dead.started_at + _RESTART_EVERY_SECONDS - time.monotonic()
        if wait_s > 0 and self._stopping.wait(wait_s):
            return
        try:
            worker = self._spawn(dead.index)
        except OSError:
            logger.exception("could not restart ingest worker %d", dead.index)
            return
        self._workers[dead.index] = worker
        self.restarts += 1

    # --- stop -------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Drain: every worker stops accepting and finishes its in-flight exports (answered by this
        process, still serving), then exits; whatever it sent has been applied when this returns."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=5)
        workers = [w for w in self._workers if w is not None]
        for worker in workers:
            if worker.process.is_alive():
                worker.process.terminate()  # SIGTERM: the worker's graceful stop
        deadline = time.monotonic() + _DRAIN_SECONDS
        for worker in workers:
            worker.process.join(timeout=max(deadline - time.monotonic(), 0.1))
            if worker.process.is_alive():
                logger.warning("ingest worker %d did not stop in time; killing it", worker.index)
                worker.process.kill()
                worker.process.join(timeout=5)
        for worker in workers:  # its process exited: the pipe ends, once whatever it sent is applied
            if worker.reader is not None:
                worker.reader.join(timeout=_DRAIN_SECONDS)
        self._apply.shutdown(wait=True)  # every request a worker sent is applied (and answered)
        for worker in workers:
            worker.conn.close()
        for sock in [*self._grpc_holders, *([self._http_sock] if self._http_sock else [])]:
            sock.close()
        self._grpc_holders.clear()
        self._http_sock = None

    def pids(self) -> list[int]:
        """The live workers' process ids (tests kill one)."""
        return [w.process.pid for w in self._workers if w is not None and w.process.pid is not None]


def _retrying(bind: Callable[[], T]) -> T:
    """Bind, retrying a port in use for a moment: after a `kill -9` of the main process its
    workers exit as soon as they see the pipe close, but a restart may be quicker than that."""
    deadline = time.monotonic() + _PORT_FREED_SECONDS
    while True:
        try:
            return bind()
        except AddressInUse:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class ScaledCollectorService(CollectorService):
    """`CollectorService` with its OTLP intake in `workers` processes; everything else — `/metrics`,
    the API, the ledger, durability, the flusher — stays here, in the main process."""

    def __init__(self, config: CollectorConfig | None = None, *, workers: int | None = None) -> None:
        super().__init__(config)
        self.workers = workers if workers is not None else self.config.resolved_workers()
        self.pool: WorkerPool | None = None
        self._unsettle_gc: Callable[[], None] | None = None

    def _bind_intake(self, edge: HttpEdge) -> None:
        from otel_tokens.collector.worker_process import settle_gc

        self.pool = WorkerPool(self.config, self.workers, self.pipeline)
        try:
            self.pool.start()
        except BaseException:
            self.pool.stop()
            raise
        self._unsettle_gc = settle_gc()  # the main process rebuilds every record a worker sends

    def _stop_intake(self) -> None:
        if self.pool is not None:
            self.pool.stop()
        if self._unsettle_gc is not None:
            self._unsettle_gc()
            self._unsettle_gc = None

    def endpoints(self) -> list[str]:
        return [*super().endpoints(), f"{self.workers} OTLP ingest worker processes (server.workers)"]

    @property
    def http_port(self) -> int:
        return self.pool.http_port if self.pool is not None else 0

    @property
    def grpc_port(self) -> int:
        return self.pool.grpc_port if self.pool is not None else 0

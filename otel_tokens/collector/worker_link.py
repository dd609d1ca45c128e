"""The wire between an ingest worker and the collector's main process: one pipe, many requests.

A worker's receivers decode and extract in the worker (the CPU-heavy part) into a `Batch`; the
worker pipeline's gate is a `RemoteGate`, which ships the batch to the main process and waits for
its answer. The main process applies it through *its* pipeline's gate — dedupe, counters, ledger,
the guard's decision events the batch carries, journal — so there is still one state and one point
every change passes; the worker answers its
exporter only after that (with a data dir: after the change is on disk).

Messages are pickled tuples over a `multiprocessing` pipe (a batch packed by worker_wire.py, so
that pickling it stays cheap): worker → main `(id, kind, payload)`,
main → worker `(id, outcome, value)`. The pipe is shared by the worker's receiver threads, so
sends take a lock and a reader thread hands each answer to the request waiting for it. At most
`max_in_flight` requests of a worker wait for the main process at once; beyond that a receiver
thread blocks before sending (backpressure reaches the exporters as slower answers, never as an
unbounded queue).
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from multiprocessing.connection import Connection
from typing import Any

from otel_tokens.collector.store import StoreError
from otel_tokens.collector.worker_wire import Presum, StatsDelta, pack_batch, unpack_batch
from otel_tokens.extract_stats import ExtractStats
from otel_tokens.pipeline import Batch, IngestResult

__all__ = [
    "BATCH",
    "OK",
    "READY",
    "REJECTION",
    "STORE_ERROR",
    "MainProcessGone",
    "RemoteGate",
    "StatsDelta",
    "WorkerLink",
    "unpack_batch",
]

logger = logging.getLogger("otel_tokens.collector")

# request kinds (worker → main)
READY = "ready"
BATCH = "batch"
REJECTION = "rejection"
# outcomes (main → worker)
OK = "ok"
STORE_ERROR = "store_error"  # the change was not kept: the receiver answers 503 / UNAVAILABLE
ERROR = "error"


class MainProcessGone(StoreError):
    """The main process is gone (killed, or shutting down): nothing was acknowledged, so the
    receiver answers 503 / UNAVAILABLE and the exporter resends to the restarted collector."""


class WorkerLink:
    """The worker's end of the pipe: `call()` from any thread, answers matched by request id."""

    def __init__(self, conn: Connection, *, max_in_flight: int, on_lost: Callable[[], None]) -> None:
        self._conn = conn
        self._send_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._waiting: dict[int, Future[Any]] = {}
        self._waiting_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._lost = False
        self._on_lost = on_lost
        self._reader = threading.Thread(target=self._read, name="otel-tokens-worker-link", daemon=True)

    def start(self) -> WorkerLink:
        self._reader.start()
        return self

    def send_ready(self, ports: tuple[int, int]) -> None:
        with self._send_lock:
            self._conn.send((0, READY, ports))

    def call(self, kind: str, payload: Any) -> Any:
        """Send one request and wait for the main process's answer (there is no timeout to guess:
        the main process answers each request, or dies and closes the pipe)."""
        with self._slots:
            future: Future[Any] = Future()
            rid = next(self._ids)
            with self._waiting_lock:
                if self._lost:
                    raise MainProcessGone("the collector's main process is gone")
                self._waiting[rid] = future
            try:
                with self._send_lock:
                    self._conn.send((rid, kind, payload))
            except OSError:
                self._fail_all()
            return future.result()

    def _read(self) -> None:
        while True:
            try:
                rid, outcome, value = self._conn.recv()
            except (EOFError, OSError):
                break
            with self._waiting_lock:
                future = self._waiting.pop(rid, None)
            if future is None:
                continue
            if outcome == OK:
                future.set_result(value)
            elif outcome == STORE_ERROR:
                future.set_exception(StoreError(value))
            else:
                future.set_exception(RuntimeError(f"collector main process: {value}"))
        self._fail_all()
        self._on_lost()

    def _fail_all(self) -> None:
        with self._waiting_lock:
            self._lost = True
            waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(MainProcessGone("the collector's main process is gone"))

    def close(self) -> None:
        self._conn.close()


class RemoteGate:
    """A worker pipeline's gate: every change goes to the main process's gate (see the module
    docstring). The extractor's self-metrics counted since the last batch travel with it, and, with
    `presum` (`Presum.columns` of the collector's metrics config), its records summed per series."""

    def __init__(self, link: WorkerLink, stats: ExtractStats, presum: Presum | None = None) -> None:
        self._link = link
        self._stats = stats
        self._presum = presum
        self._sent: StatsDelta = stats.snapshot()
        self._stats_lock = threading.Lock()

    def batch(self, batch: Batch) -> IngestResult:
        result: IngestResult = self._link.call(BATCH, pack_batch(batch, self._stats_delta(), self._presum))
        return result

    def flush(self, until: float | None) -> None:
        """Nothing to do: a worker holds no spans, the main process flushes its own."""

    def rejection(self, reason: str, rejected: int, received: int) -> None:
        self._link.call(REJECTION, (reason, rejected, received))

    def _stats_delta(self) -> StatsDelta | None:
        with self._stats_lock:
            now = self._stats.snapshot()
            delta = tuple(
                {k: n - sent.get(k, 0) for k, n in current.items() if n != sent.get(k, 0)}
                for current, sent in zip(now, self._sent, strict=True)
            )
            self._sent = now
        clamped, failed = delta
        return (clamped, failed) if clamped or failed else None


def add_stats(stats: ExtractStats, delta: StatsDelta) -> None:
    """Add a worker's delta to the main process's stats (only the main process's link threads call
    this, under the caller's lock: nothing else counts into the main pipeline's extractor)."""
    clamped, failed = stats.snapshot()
    for k, n in delta[0].items():
        clamped[k] = clamped.get(k, 0) + n
    for k, n in delta[1].items():
        failed[k] = failed.get(k, 0) + n
    stats.restore(clamped, failed)

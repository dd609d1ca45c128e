"""What durability costs: spans/s into a running collector with and without a data directory.

With `--data-dir`, every export is in the SQLite journal (WAL, fsync'd) before its OK; group commit
lets concurrent exports share one fsync. Measured, interleaved round by round, end to end over
OTLP/HTTP (pre-encoded protobuf bodies of `BATCH` realistic GenAI spans, one keep-alive connection
per client thread):

- in memory vs data dir, 1 client (every export pays a whole commit);
- in memory vs data dir, `CLIENTS` concurrent clients (commits shared).

The ratio data-dir / in-memory is the headline; the spread (min..max of rounds) says how far to
trust it. Every block checks that every span it sent was counted. Batches are replayed, so the
dedupe memory holds one batch only: concurrent clients take batches from one shared cycle, and a
batch comes round again only after dozens of others evicted it (the LRU evicts one key per insert
either way, as in a steady-state collector whose memory is full).

Run: `.venv/bin/python benchmarks/bench_durability.py`.
"""

from __future__ import annotations

import http.client
import itertools
import statistics
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import replace

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from otel_tokens.collector import CollectorConfig, CollectorService
from otel_tokens.collector.durable import PinnedClock
from otel_tokens.pipeline import Pipeline

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _harness import QUICK, Block, interleave, record, rounds, spread
from bench_collector import make_batches

BENCH = "durability"
BATCH = 64  # spans per export: smaller than the collector benchmark's, so commits weigh more
N_BATCHES = 64
CLIENTS = 8
_lock = threading.Lock()


class Target:
    """One running collector and its pipeline, in memory or on a data dir."""

    def __init__(self, data_dir: str | None) -> None:
        config = CollectorConfig(http_port=0, grpc_enabled=False, metrics_port=0, data_dir=data_dir)
        dedupe = replace(config.dedupe_config(), max_remembered_spans=BATCH)
        self.pipeline = Pipeline(config.metrics_config(), dedupe=dedupe, clock=PinnedClock())
        self.service = CollectorService(config, pipeline=self.pipeline).start()
        self.before = 0
        self.groups: dict[str, list[float]] = {}  # block -> exports per journal commit, per round
        #: one replay order across all blocks: a batch comes round again only after all the others
        self.order = itertools.cycle(range(N_BATCHES))

    def requests(self) -> int:
        snap = self.pipeline.aggregator.snapshot()
        return sum(s.requests_ok + s.requests_error for s in snap.series.values())

    def _commits(self) -> tuple[int, int]:
        durability = self.service.durability
        return (durability.store.commits, durability.store.entries_committed) if durability else (0, 0)

    def setup(self) -> None:
        self.before = self.requests()
        self.commits_before = self._commits()

    def check(self, name: str, n: int) -> None:
        commits, entries = (a - b for a, b in zip(self._commits(), self.commits_before, strict=True))
        if commits:
            self.groups.setdefault(name, []).append(entries / commits)
        counted = self.requests() - self.before
        if counted != n * BATCH:
            raise AssertionError(f"{name}: {n * BATCH} spans sent, {counted} counted")


def _post_many(port: int, payloads: list[bytes], order: Iterator[int], n: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/x-protobuf"}
    try:
        for _ in range(n):
            with _lock:
                body = payloads[next(order)]
            conn.request("POST", "/v1/traces", body=body, headers=headers)
            response = conn.getresponse()
            reply = response.read()
            if response.status != 200:
                raise AssertionError(f"HTTP {response.status}: {reply[:200]!r}")
    finally:
        conn.close()


def _run(target: Target, payloads: list[bytes], clients: int, n: int) -> None:
    """n exports in all, split over `clients` threads (n is a multiple of `clients`)."""
    order = target.order
    port = target.service.http_port
    if clients == 1:
        _post_many(port, payloads, order, n)
        return
    errors: list[BaseException] = []

    def client() -> None:
        try:
            _post_many(port, payloads, order, n // clients)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _block(name: str, target: Target, payloads: list[bytes], clients: int) -> Block:
    def run(n: int) -> None:
        _run(target, payloads, clients, n * clients)

    def check(n: int) -> None:
        target.check(name, n * clients)

    return Block(name, run, setup=target.setup, check=check)


def main() -> None:
    big = make_batches(N_BATCHES * BATCH // 512)  # the collector benchmark's 512-span batches, cut up
    batches = [b[i : i + BATCH] for b in big for i in range(0, len(b), BATCH)]
    payloads = [encode_spans(b).SerializeToString() for b in batches]
    with tempfile.TemporaryDirectory(prefix="otel-tokens-bench-") as data_dir:
        memory, durable = Target(None), Target(data_dir)
        try:
            names = [
                ("in memory, 1 client", memory, 1),
                ("data dir, 1 client", durable, 1),
                (f"in memory, {CLIENTS} clients", memory, CLIENTS),
                (f"data dir, {CLIENTS} clients", durable, CLIENTS),
            ]
            blocks = [_block(name, target, payloads, clients) for name, target, clients in names]
            n_rounds = rounds(full=7)
            samples = interleave(blocks, n_rounds, target_s=0.05 if QUICK else 0.8)
        finally:
            memory.service.stop()
            durable.service.stop()
    print(
        f"OTLP/HTTP exports of {BATCH} spans: {n_rounds} rounds x {samples.ops_per_block} exports per "
        "client; spans/s, median (min..max of rounds)"
    )
    rates: dict[str, float] = {}
    for name, target, clients in names:
        per_round = [clients * BATCH / t for t in samples.per_op[name]]
        rates[name] = clients * BATCH / samples.median(name)
        groups = target.groups.get(name)
        group = f"; {statistics.median(groups):.1f} exports per fsync" if groups else ""
        print(f"  {name:<24}{rates[name]:>11,.0f} spans/s  ({spread(per_round, 1e-3, 1)}k){group}")
        record(BENCH, name, rates[name], "spans/s")
    for clients in (1, CLIENTS):
        suffix = "1 client" if clients == 1 else f"{clients} clients"
        mem, dur = f"in memory, {suffix}", f"data dir, {suffix}"
        ratios = sorted(m / d for m, d in zip(samples.per_op[mem], samples.per_op[dur], strict=True))
        mid = ratios[len(ratios) // 2]
        print(f"durability cost ({suffix}): data dir x{mid:.3f} of in memory (rounds {spread(ratios, 1, 3)})")
        record(BENCH, f"data dir / in memory, {suffix}", mid, "x", f"rounds {spread(ratios, 1, 3)}")


if __name__ == "__main__":
    main()

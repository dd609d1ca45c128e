"""`otel-tokens collector --workers 1` against `--workers 2`, side by side, over OTLP/HTTP.

Both collectors run as real processes (`otel-tokens collector`, gRPC off), started once and kept
up. Each round posts the same pre-encoded 512-span batches (bench_collector's payload shape) from
`CLIENTS` keep-alive connections, once to each collector in rotated order; the first round warms
up and is discarded. Reported per variant: spans/s (median, min..max of rounds), the per-round
ratio of 2 workers to 1, and CPU seconds per 10k spans of the main process and of the workers
(from /proc), which shows where the time goes on a machine shared with other work: the workers
decode and extract in parallel, the main process dedupes, counts and answers — the serial part.

The client's own CPU per span is reported too (pre-encoded bodies, so it is small and the same for
both variants), and the collector's CPU per span with 2 workers against 1: what the pipe costs,
whatever else the shared machine runs.

Every client has its own distinct batches and the dedupe memory is capped below one client's
cycle, so every span posted is counted; each round checks `llm_requests_total` moved by exactly the
spans sent (one exact /metrics, whichever worker decoded them).

Wall-clock rounds say little while other work holds a core (then both variants get about one), so
the same work is also measured in this process's CPU time, interleaved block by block: one
`Pipeline` doing everything (`ingest_otlp_bytes`) against a worker's share (decode, extract, sum
per series, pack, pickle, as `RemoteGate` does) and the main process's share (unpickle, rebuild,
dedupe, count, answer) of the same batches, over the real wire format. From those: the main
process's share of one process's cost (the serial part) and both shares together (what two cores
must carry), and the most two workers could give on two free cores: min(1 / main share, 2 / both).

Run: `.venv/bin/python benchmarks/bench_workers.py`.
"""

from __future__ import annotations

import http.client
import itertools
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import CPU, QUICK, Block, interleave, record, rounds, spread

BENCH = "workers"
CLIENTS = 4
VARIANTS = (1, 2)
_CODE = "import sys; from otel_tokens.collector import main; sys.exit(main(sys.argv[1:]))"
_TICK = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Collector:
    """One `otel-tokens collector --workers N` process and its ports."""

    workers: int
    http_port: int = field(default_factory=_free_port)
    metrics_port: int = field(default_factory=_free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self, dedupe_max_spans: int) -> Collector:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_TOKENS_COLLECTOR_")}
        args = [
            "--workers", str(self.workers), "--no-grpc", "--http-port", str(self.http_port),
            "--metrics-port", str(self.metrics_port), "--dedupe-max-spans", str(dedupe_max_spans),
        ]  # fmt: skip
        quiet = subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CODE, *args], env=env, stdout=quiet, stderr=quiet
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=2):
                    return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"collector --workers {self.workers} did not start") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def requests_counted(self) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        from otel_tokens import metric_names as mn

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=30) as r:
            text = r.read().decode()
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == mn.REQUESTS
        )

    def cpu_seconds(self) -> tuple[float, float]:
        """(main process, its child processes: the workers and multiprocessing's helper) CPU s."""
        assert self.proc is not None
        main = _cpu(self.proc.pid)
        children = sum(_cpu(pid) for pid in _children(self.proc.pid))
        return main, children


def _stat(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on


def _cpu(pid: int) -> float:
    try:
        fields = _stat(pid)
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(_stat(int(entry))[1]) == pid:
                    found.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return found


def _post(port: int, payloads: Iterator[bytes], n: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/x-protobuf"}
    for _ in range(n):
        conn.request("POST", "/v1/traces", body=next(payloads), headers=headers)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise AssertionError(f"HTTP {response.status}: {body[:200]!r}")
    conn.close()


@dataclass
class Round:
    rate: float  # spans/s
    main_cpu: float  # seconds per 10k spans
    worker_cpu: float
    client_cpu: float  # this process's posting threads: the load generator's share of the 2 cores


def _round(c: Collector, per_client: list[Iterator[bytes]], n: int, batch: int) -> Round:
    before = c.requests_counted()
    cpu0 = c.cpu_seconds()
    threads = [threading.Thread(target=_post, args=(c.http_port, p, n)) for p in per_client]
    start, client0 = time.perf_counter(), time.process_time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed, client = time.perf_counter() - start, time.process_time() - client0
    spans = len(per_client) * n * batch
    # Spans with a foreign parent wait for the dedupe hold, then the flusher counts them.
    deadline = time.monotonic() + 30
    while (counted := c.requests_counted() - before) != spans and time.monotonic() < deadline:
        time.sleep(0.1)
    if counted != spans:
        with urllib.request.urlopen(f"http://127.0.0.1:{c.metrics_port}/metrics", timeout=30) as r:
            own = [line for line in r.read().decode().splitlines() if line.startswith("otel_tokens_")]
        raise AssertionError(f"--workers {c.workers}: {spans} spans posted, {counted:.0f} counted: {own}")
    cpu1 = c.cpu_seconds()
    per10k = 1e4 / spans
    return Round(spans / elapsed, (cpu1[0] - cpu0[0]) * per10k, (cpu1[1] - cpu0[1]) * per10k, client * per10k)


class _CapturedLink:
    """A worker's link that keeps each request as the bytes the pipe would carry, and answers."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def call(self, kind: str, payload: Any) -> Any:
        from multiprocessing.reduction import ForkingPickler

        from otel_tokens.pipeline import IngestResult

        self.sent.append(bytes(ForkingPickler.dumps((len(self.sent), kind, payload))))
        return IngestResult(spans_received=len(payload[1][1][1][0]) if payload[1][0] == "columns" else 0)


def _cpu_shares() -> None:
    """One process's CPU per span against a worker's and the main process's share (see above)."""
    import pickle
    from multiprocessing.reduction import ForkingPickler

    from bench_collector import BATCH, make_batches
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    from otel_tokens.collector import CollectorConfig
    from otel_tokens.collector.presum import Presum
    from otel_tokens.collector.worker_link import OK, RemoteGate, unpack_batch
    from otel_tokens.collector.worker_process import settle_gc
    from otel_tokens.pipeline import Pipeline

    n_batches = 4 if QUICK else 16
    payloads = [encode_spans(b).SerializeToString() for b in make_batches(n_batches, seed=11)]
    cfg = CollectorConfig(dedupe_max_spans=BATCH * (n_batches - 2))  # replayed: every span counts

    def pipeline() -> Pipeline:
        return Pipeline(cfg.metrics_config(), dedupe=cfg.dedupe_config())

    def worker_side() -> tuple[Pipeline, _CapturedLink]:
        p, link = pipeline(), _CapturedLink()
        p.gate = RemoteGate(link, p.extract_stats, Presum(p.config).columns)  # type: ignore[arg-type]
        return p, link

    seed, captured = worker_side()
    for data in payloads:
        seed.ingest_otlp_bytes(data)
    messages = captured.sent
    single, main_side = pipeline(), pipeline()
    worker, link = worker_side()
    nth = {"single": itertools.cycle(payloads), "worker": itertools.cycle(payloads)}
    sent = itertools.cycle(messages)
    counted = [0]

    def run_single(n: int) -> None:
        for _ in range(n):
            single.ingest_otlp_bytes(next(nth["single"]))

    def run_worker(n: int) -> None:
        link.sent.clear()
        for _ in range(n):
            worker.ingest_otlp_bytes(next(nth["worker"]))

    def run_main(n: int) -> None:
        for _ in range(n):
            rid, _, payload = pickle.loads(next(sent))
            batch, _ = unpack_batch(payload, keys_only=True)  # the main process without a data dir
            result = main_side.gate.batch(batch)
            ForkingPickler.dumps((rid, OK, result))
            counted[0] += result.records_counted

    def check_main(n: int) -> None:
        if counted[0] != n * BATCH:
            raise AssertionError(f"main process share: {n * BATCH} spans applied, {counted[0]} counted")
        counted[0] = 0

    def reset(n: int) -> None:
        counted[0] = 0

    settle_gc()
    blocks = [
        Block("one process", run_single),
        Block("worker share", run_worker),
        Block("main share", run_main, setup=lambda: reset(0), check=check_main),
    ]
    samples = interleave(blocks, rounds(full=7), target_s=0.5, clock=CPU)
    _report_cpu({b.name: [t / BATCH * 1e6 for t in samples.per_op[b.name]] for b in blocks})


def _report_cpu(us: dict[str, list[float]]) -> None:
    """Per span in µs by share; the ratios per round, so the spread is the rounds'."""
    med = {name: statistics.median(v) for name, v in us.items()}
    one, worker, main = us["one process"], us["worker share"], us["main share"]
    main_share = [m / s for m, s in zip(main, one, strict=True)]
    both = [(m + w) / s for m, w, s in zip(main, worker, one, strict=True)]
    bound = [min(1 / m, 2 / b) for m, b in zip(main_share, both, strict=True)]
    shares = ", ".join(f"{name} {med[name]:.2f} us ({spread(v, 1, 2)})" for name, v in us.items())
    print(f"  in this process's CPU time, per span (median, min..max of rounds): {shares}")
    print(f"  main share / one process: x{statistics.median(main_share):.2f} ({spread(main_share, 1, 2)}); "
          f"both shares / one process: x{statistics.median(both):.2f} ({spread(both, 1, 2)}); "
          f"two workers on two free cores: at most x{statistics.median(bound):.2f} "
          f"({spread(bound, 1, 2)})")  # fmt: skip
    for name in med:
        record(BENCH, f"CPU per span, {name}", med[name], "us", f"rounds {spread(us[name], 1, 2)}")
    record(BENCH, "main share / one process (CPU)", statistics.median(main_share), "ratio",
           f"rounds {spread(main_share, 1, 2)}")  # fmt: skip
    note = f"rounds {spread(both, 1, 2)}; on two free cores at most x{statistics.median(bound):.2f}"
    record(BENCH, "both shares / one process (CPU)", statistics.median(both), "ratio", note)


def main() -> None:
    from bench_collector import BATCH, N_BATCHES, make_batches
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    payloads = [
        [encode_spans(b).SerializeToString() for b in make_batches(N_BATCHES, seed=7 + i)]
        for i in range(CLIENTS)
    ]
    # below one client's cycle of N_BATCHES batches: a replayed batch was forgotten, so it counts
    dedupe_cap = BATCH * (N_BATCHES - 2)
    collectors = [Collector(w) for w in VARIANTS]
    try:
        for c in collectors:
            c.start(dedupe_cap)
        n = 1 if QUICK else 12
        n_rounds = rounds(full=7)
        results: dict[int, list[Round]] = {w: [] for w in VARIANTS}
        # each client cycles through its own batches across rounds, per collector
        cursors = {c.workers: [itertools.cycle(p) for p in payloads] for c in collectors}
        for r in range(n_rounds + 1):
            order = collectors[r % 2 :] + collectors[: r % 2]
            for c in order:
                result = _round(c, cursors[c.workers], n, BATCH)
                if r:
                    results[c.workers].append(result)
    finally:
        for c in collectors:
            c.stop()
    _report(results, n_rounds, n, BATCH)
    _cpu_shares()


def _report(results: dict[int, list[Round]], n_rounds: int, n: int, batch: int) -> None:
    print(f"otel-tokens collector over OTLP/HTTP, {CLIENTS} keep-alive clients x {n} batches of {batch} "
          "spans, "
          f"{n_rounds} interleaved rounds, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
          "spans/s median (min..max of rounds); CPU s per 10k spans: main process / worker processes / "
          "the posting client (pre-encoded bodies, sharing the cores)")  # fmt: skip
    for w in VARIANTS:
        rs = results[w]
        rate = statistics.median(r.rate for r in rs)
        main_cpu = statistics.median(r.main_cpu for r in rs)
        worker_cpu = statistics.median(r.worker_cpu for r in rs)
        client_cpu = statistics.median(r.client_cpu for r in rs)
        print(f"  --workers {w}: {rate:>9,.0f} spans/s ({spread([r.rate for r in rs], 1e-3, 1)}k)  "
              f"CPU {main_cpu:.3f} s main / {worker_cpu:.3f} s workers / "
              f"{client_cpu:.3f} s client")  # fmt: skip
        record(BENCH, f"--workers {w}", rate, "spans/s", f"CPU/10k spans: main {main_cpu:.3f} s, "
               f"workers {worker_cpu:.3f} s, client {client_cpu:.3f} s")  # fmt: skip
    ratios = sorted(b.rate / a.rate for a, b in zip(results[1], results[2], strict=True))
    mid = ratios[len(ratios) // 2]
    print(f"  --workers 2 / --workers 1: x{mid:.2f} (per-round ratios {ratios[0]:.2f}..{ratios[-1]:.2f})")
    record(BENCH, "--workers 2 / --workers 1", mid, "ratio", f"rounds {ratios[0]:.2f}..{ratios[-1]:.2f}")
    # what the pipe costs, whatever else runs on the machine: collector CPU per span, 2 workers / 1
    cpu = {w: statistics.median(r.main_cpu + r.worker_cpu for r in results[w]) for w in VARIANTS}
    main_share = statistics.median(r.main_cpu / (r.main_cpu + r.worker_cpu) for r in results[2])
    print(f"  collector CPU per span, --workers 2 / --workers 1: x{cpu[2] / cpu[1]:.2f}; the main process "
          f"does {main_share:.0%} of it with 2 workers (the serial part)")  # fmt: skip
    record(BENCH, "collector CPU per span, --workers 2 / 1", cpu[2] / cpu[1], "ratio",
           f"main process share {main_share:.0%}")  # fmt: skip


if __name__ == "__main__":
    main()

"""The collector's HTTP edge against other server stacks, serving the same OTLP ingest, side by side.

Each server runs in its own process (so client and server do not share a GIL) and serves
`POST /v1/traces` with the same work — `otlp_codec.decode_protobuf`, `Pipeline.ingest_otlp`, the
encoded OTLP response — so what differs is only the server stack around it:
- `collector (aiohttp)`: the real `CollectorService` edge (routing, auth middleware, body limit and
  read timeout, worker pool, connection cap);
- `stdlib ThreadingHTTPServer`: the shape of the edge before aiohttp (a thread per connection,
  Content-Length bodies), the baseline;
- `uvicorn + starlette` and `hypercorn + starlette`, when installed (`pip install uvicorn starlette
  hypercorn`): the ASGI candidates that were compared before choosing aiohttp.

The client posts pre-encoded 512-span batches (the bench_collector payload) over keep-alive
connections from `CLIENTS` threads; rounds are interleaved, the first discarded, and each stack's
median spans/s is reported with the min..max over rounds and as a ratio of the baseline's.

Run: `.venv/bin/python benchmarks/bench_http_edge.py`.
"""

from __future__ import annotations

import http.client
import importlib.util
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import replace
from typing import Any

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _harness import QUICK, record, rounds, spread

BENCH = "http_edge"
BASELINE = "stdlib ThreadingHTTPServer"
STACKS = {
    "collector (aiohttp)": None,
    BASELINE: None,
    "uvicorn + starlette": ("uvicorn", "starlette"),
    "hypercorn + starlette": ("hypercorn", "starlette"),
}
CLIENTS = 2
MAX_BODY = 8 * 1024 * 1024


# --- the servers (each runs in a child process: `bench_http_edge.py --serve NAME`) ---------------


def _work() -> Any:
    """The shared per-request work: decode, ingest, encode the response."""
    from bench_collector import BATCH, N_BATCHES

    from otel_tokens.collector import CollectorConfig
    from otel_tokens.collector.http_receiver import ingest_decoded
    from otel_tokens.collector.otlp_codec import decode_protobuf, encode_message, partial_success
    from otel_tokens.pipeline import Pipeline

    config = CollectorConfig()
    # as in bench_collector: the replayed batches are forgotten by the dedupe memory before they return
    dedupe = replace(config.dedupe_config(), max_remembered_spans=BATCH * (N_BATCHES - 2))
    pipeline = Pipeline(config.metrics_config(), dedupe=dedupe)

    def handle(body: bytes) -> bytes:
        decoded = decode_protobuf(body)
        result = ingest_decoded(pipeline, decoded)
        return encode_message(partial_success(result), "application/x-protobuf")

    return pipeline, handle


def _serve_collector() -> None:
    from otel_tokens.collector import CollectorConfig, CollectorService

    pipeline, _ = _work()
    config = CollectorConfig(http_port=0, grpc_enabled=False, metrics_port=0)
    with CollectorService(config, pipeline=pipeline) as service:
        _announce(service.http_port)


def _serve_stdlib() -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    _, handle = _work()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_POST(self) -> None:
            body = handle(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _announce(server.server_address[1])


def _asgi_app() -> Any:
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    _, handle = _work()

    async def export(request: Request) -> Response:
        body = await request.body()
        reply = await run_in_threadpool(handle, body)
        return Response(reply, media_type="application/x-protobuf")

    return Starlette(routes=[Route("/v1/traces", export, methods=["POST"])])


def _serve_uvicorn() -> None:
    import socket

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(_asgi_app(), log_level="warning", access_log=False))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    _announce(sock.getsockname()[1])


def _serve_hypercorn() -> None:
    import asyncio
    import socket

    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    app = _asgi_app()

    async def forever() -> None:  # a shutdown trigger, so hypercorn installs no signal handlers
        await asyncio.Event().wait()

    threading.Thread(
        target=lambda: asyncio.run(serve(app, config, shutdown_trigger=forever)), daemon=True
    ).start()
    _announce(port)


def _announce(port: int) -> None:
    print(port, flush=True)
    sys.stdin.read()  # serve until the parent closes our stdin


SERVERS = {
    "collector (aiohttp)": _serve_collector,
    BASELINE: _serve_stdlib,
    "uvicorn + starlette": _serve_uvicorn,
    "hypercorn + starlette": _serve_hypercorn,
}


# --- the client ------------------------------------------------------------------------------------


def _wait_ready(port: int) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).connect()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _post_batches(port: int, payloads: list[bytes], n: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/x-protobuf"}
    for i in range(n):
        conn.request("POST", "/v1/traces", body=payloads[i % len(payloads)], headers=headers)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise AssertionError(f"HTTP {response.status}: {body[:200]!r}")
    conn.close()


def _timed(port: int, payloads: list[bytes], per_client: int) -> float:
    """Spans/s with CLIENTS concurrent keep-alive connections."""
    from bench_collector import BATCH

    threads = [
        threading.Thread(target=_post_batches, args=(port, payloads, per_client)) for _ in range(CLIENTS)
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return CLIENTS * per_client * BATCH / (time.perf_counter() - start)


def main() -> None:
    from bench_collector import N_BATCHES, make_batches
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    payloads = [encode_spans(b).SerializeToString() for b in make_batches(N_BATCHES)]
    names = [n for n, mods in STACKS.items() if not mods or all(importlib.util.find_spec(m) for m in mods)]
    missing = [n for n in STACKS if n not in names]
    procs: dict[str, subprocess.Popen[str]] = {}
    ports: dict[str, int] = {}
    try:
        for name in names:
            procs[name] = subprocess.Popen(
                [sys.executable, __file__, "--serve", name], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            assert procs[name].stdout is not None
            ports[name] = int(procs[name].stdout.readline())
            _wait_ready(ports[name])
        per_client = 2 if QUICK else 30
        n_rounds = rounds(full=7)
        rates: dict[str, list[float]] = {n: [] for n in names}
        for r in range(n_rounds + 1):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                rate = _timed(ports[name], payloads, per_client)
                if r:  # round 0 warms every server up
                    rates[name].append(rate)
    finally:
        for proc in procs.values():
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout=10)
    _report(names, rates, missing, n_rounds, per_client)


def _report(
    names: list[str], rates: dict[str, list[float]], missing: list[str], n_rounds: int, per_client: int
) -> None:
    print(f"OTLP/HTTP end to end, 512-span batches, {CLIENTS} keep-alive clients x {per_client} batches, "
          f"{n_rounds} interleaved rounds; spans/s, median (min..max of rounds); ratio: median of the "
          f"per-round ratios to {BASELINE} (min..max)")  # fmt: skip
    for name in names:
        median = statistics.median(rates[name])
        ratios = [a / b for a, b in zip(rates[name], rates[BASELINE], strict=True)]
        ratio = statistics.median(ratios)
        print(f"  {name:<28}{median:>10,.0f} spans/s  ({spread(rates[name], 1e-3, 1)}k)  "
              f"x{ratio:.2f} ({spread(ratios, 1, 2)})")  # fmt: skip
        record(BENCH, name, median, "spans/s", f"x{ratio:.2f} of {BASELINE}")
    if missing:
        print(f"  not installed, skipped: {', '.join(missing)} (pip install uvicorn starlette hypercorn)")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        SERVERS[sys.argv[2]]()
    else:
        main()

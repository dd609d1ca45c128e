"""Real Prometheus and Alertmanager processes for end-to-end tests, on loopback ports the test chose.

A missing binary skips the test locally and fails it in CI (`tests/ci_tools.py`).
Intervals are 200 ms and `group_wait` 0 s (measured here: counter bump → webhook POST < 0.3 s), so
tests poll with a deadline instead of sleeping. Alertmanager runs with `--cluster.listen-address=`
so it opens no cluster port.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

from tests.ci_tools import require_tool

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def poll(fn: Callable[[], T], until: Callable[[T], bool], timeout: float = 20.0, what: str = "") -> T:
    """Call `fn` until `until(result)`; fail with the last result after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except Exception as exc:  # a server still starting up
            last = exc
        else:
            if until(last):
                return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or fn}; last value: {last!r}")


def http_get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    def probe() -> int:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited: {log.read_text()[-2000:]}")
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if probe() == 200:
                return
        except RuntimeError:
            raise
        except Exception:
            time.sleep(0.05)
    raise AssertionError(f"{url} never became ready; log:\n{log.read_text()[-2000:]}")


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str) -> list[dict[str, Any]]:
        q = urllib.parse.urlencode({"query": expr})
        body = http_get_json(f"{self.url}/api/v1/query?{q}")
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def by_label(self, expr: str, label: str) -> dict[str, float]:
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(expr)}


@contextmanager
def run_prometheus(
    tmp: Path,
    targets: list[str],
    rule_files: list[Path] = (),
    alertmanager: str | None = None,  # type: ignore[assignment]
    job: dict[str, Any] | None = None,
) -> Iterator[Prometheus]:
    """A real Prometheus scraping `targets` every 200 ms. `job`: a scrape job to use instead of the
    plain one (e.g. the job `otel-tokens render` writes), its targets replaced by `targets`."""
    binary = require_tool("prometheus", install="Debian package 'prometheus' (make system-deps installs it)")
    port = free_port()
    config: dict[str, Any] = {
        "global": {"scrape_interval": "200ms", "evaluation_interval": "200ms"},
        "scrape_configs": [
            {**(job or {"job_name": "otel-tokens"}), "static_configs": [{"targets": targets}]}
        ],
        "rule_files": [str(p) for p in rule_files],
    }
    if alertmanager:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    cfg = tmp / "prometheus.yml"
    cfg.write_text(json.dumps(config))  # JSON is YAML
    log = tmp / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={cfg}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_ready(f"http://127.0.0.1:{port}/-/ready", proc, log)
        yield Prometheus(f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextmanager
def run_alertmanager(tmp: Path, config_text: str) -> Iterator[str]:
    """Start Alertmanager with `config_text`; yields its host:port."""
    binary = require_tool(
        "prometheus-alertmanager",
        "alertmanager",
        install="Debian package 'prometheus-alertmanager' (make system-deps installs it)",
    )
    port = free_port()
    cfg = tmp / "alertmanager.yml"
    cfg.write_text(config_text)
    log = tmp / "alertmanager.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={cfg}",
                f"--storage.path={tmp / 'am'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_ready(f"http://127.0.0.1:{port}/-/ready", proc, log)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class Webhook:
    """A local Alertmanager webhook receiver that keeps every POSTed notification."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        received = self

        class _Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with received._lock:
                    received.notifications.append(json.loads(body))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def alerts(self) -> list[dict[str, Any]]:
        with self._lock:
            return [a for n in self.notifications for a in n.get("alerts", [])]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

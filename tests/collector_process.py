"""The collector as a real process (`otel-tokens collector ...`), for tests that kill or signal it.

Ports are chosen by the test and kept across restarts, so an exporter configured once keeps
sending to the same endpoint while the process behind it is killed and started again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.services import free_port, http_get_json, poll

_CODE = "import sys; from otel_tokens.collector import main; sys.exit(main(sys.argv[1:]))"


class CollectorProcess:
    """One collector configuration; `start()` / `kill()` / `terminate()` as often as a test likes."""

    def __init__(self, log_dir: Path, *args: str, grpc: bool = False) -> None:
        self.http_port, self.metrics_port = free_port(), free_port()
        self.grpc_port = free_port() if grpc else 0
        grpc_args = ["--grpc-port", str(self.grpc_port)] if grpc else ["--no-grpc"]
        self.args = [
            "--http-port", str(self.http_port), "--metrics-port", str(self.metrics_port), *grpc_args, *args,
        ]  # fmt: skip
        self.log_dir = log_dir
        self.starts = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_TOKENS_COLLECTOR_")}

    @property
    def traces_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/v1/traces"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> CollectorProcess:
        self.starts += 1
        log = (self.log_dir / f"collector-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CODE, *self.args], stdout=log, stderr=subprocess.STDOUT, env=self.env
        )
        poll(self._healthz, lambda ok: ok, timeout=20, what="the collector's /healthz")
        return self

    def _healthz(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"collector exited {self.proc.returncode}: {self.log()}")
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=2) as r:
            return bool(r.status == 200)

    def kill(self) -> None:
        """`kill -9`: no flush, no snapshot, no goodbye."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self) -> int:
        """SIGTERM, as `docker stop` sends; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-3000:] for p in sorted(self.log_dir.glob("collector-*.log"))
        )

    def samples(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            text = response.read().decode()
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def total(self, name: str, **labels: str) -> float:
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples().items() if n == name and want <= ls)

    def budgets(self) -> dict[str, dict[str, Any]]:
        body = http_get_json(f"http://127.0.0.1:{self.metrics_port}/api/v1/budgets")
        return {b["name"]: b for b in body["budgets"]}


def collector_args(*, data_dir: Path | None = None, budgets: Path | None = None) -> Sequence[str]:
    args: list[str] = []
    if data_dir is not None:
        args += ["--data-dir", str(data_dir)]
    if budgets is not None:
        args += ["--budgets-file", str(budgets)]
    return args

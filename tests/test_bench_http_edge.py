"""The HTTP-edge benchmark still runs (quick mode) and prints its comparison; timings never asserted."""

from __future__ import annotations

import re
import sys

import pytest

from tests.test_benchmarks_smoke import BENCHMARKS, NUMBER, run_quick

pytestmark = pytest.mark.integration


def test_http_edge_benchmark_compares_the_collector_with_the_stdlib_server():
    out = run_quick(sys.executable, str(BENCHMARKS / "bench_http_edge.py"))
    for stack in ("collector (aiohttp)", "stdlib ThreadingHTTPServer"):
        assert re.search(rf"{re.escape(stack)} +{NUMBER} spans/s +\(.*\) +x{NUMBER} \(", out), out

"""The one Prometheus text parser the tests use: prometheus_client's own, read as Prometheus would.

Every test that checks a number on /metrics (or in a registry) goes through `samples()`, so all of
them agree on what a sample is: name (with its `_total`/`_bucket`/... suffix) and label set.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

Labels = frozenset[tuple[str, str]]
Samples = dict[tuple[str, Labels], float]
Source = str | CollectorRegistry | Mapping[tuple[str, Labels], float]


def samples(source: Source) -> Samples:
    """Every sample in exposition text, a registry's exposition, or already-parsed samples."""
    if isinstance(source, Mapping):
        return dict(source)
    text = source if isinstance(source, str) else generate_latest(source).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def series(source: Source, name: str) -> dict[Labels, float]:
    """Every sample called `name`, by its label set."""
    return {labels: v for (n, labels), v in samples(source).items() if n == name}


def total(source: Source, name: str, **labels: str) -> float:
    """Sum of `name` over every series whose labels include `labels` (0 when none does)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples(source).items() if n == name and want <= ls)


def scrape(port: int, *, accept: str = "", host: str = "127.0.0.1") -> str:
    """GET /metrics from a local server, as exposition text."""
    request = urllib.request.Request(f"http://{host}:{port}/metrics", headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(response.read().decode())

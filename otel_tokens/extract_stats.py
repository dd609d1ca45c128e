"""What the extractor changed or was told about records, counted: clamps and enrichment failures.

The extractor accepts a span whose numbers contradict themselves (reasoning larger than output, a
1-hour cache-write split larger than the cache writes) after making them consistent, and a span
whose source says an enrichment step failed (`otel_tokens.enrichment.failed`). Both are rare, so
they are counted here under a lock rather than threaded through the per-span batch, and exposed by
their own small `prometheus_client` Collector. Reasons and steps are fixed sets: whatever a sender
puts in a span, these series stay bounded.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from otel_tokens import metric_names as mn
from otel_tokens import semconv as sc

__all__ = ["CLAMP_REASONS", "ExtractStats", "ExtractStatsCollector"]

#: reasoning > output: the output was reported without its reasoning (a dialect that counts them
#: apart); the whole is raised to include the part, as input is for cache tokens.
REASONING_EXCEEDS_OUTPUT = "reasoning_exceeds_output"
#: cache read + write > input: input was reported without cache tokens (Anthropic's raw meaning).
CACHE_EXCEEDS_INPUT = "cache_exceeds_input"
#: the 1-hour cache-write split > cache writes: the split is cut to the writes (it only sets a rate).
CACHE_WRITE_1H_EXCEEDS_CACHE_WRITE = "cache_write_1h_exceeds_cache_write"
CLAMP_REASONS: tuple[str, ...] = (
    REASONING_EXCEEDS_OUTPUT,
    CACHE_EXCEEDS_INPUT,
    CACHE_WRITE_1H_EXCEEDS_CACHE_WRITE,
)


class ExtractStats:
    """Thread-safe counters of clamped records by reason and of enrichment failures by step."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clamped = dict.fromkeys(CLAMP_REASONS, 0)
        self._failed = dict.fromkeys(sc.ENRICHMENT_STEPS, 0)

    def clamped(self, reason: str) -> None:
        if reason in self._clamped:
            with self._lock:
                self._clamped[reason] += 1

    def enrichment_failed(self, steps: Iterable[str]) -> None:
        with self._lock:
            for step in steps:
                if step in self._failed:
                    self._failed[step] += 1

    def snapshot(self) -> tuple[dict[str, int], dict[str, int]]:
        """(clamped by reason, enrichment failures by step), copied under the lock."""
        with self._lock:
            return dict(self._clamped), dict(self._failed)

    def restore(self, clamped: dict[str, int], failed: dict[str, int]) -> None:
        """Take back a `snapshot()` (the collector's durable store keeps it); unknown keys are dropped."""
        with self._lock:
            self._clamped.update((k, int(n)) for k, n in clamped.items() if k in self._clamped)
            self._failed.update((k, int(n)) for k, n in failed.items() if k in self._failed)


class ExtractStatsCollector(Collector):
    """Exposes an `ExtractStats`; every reason and step is always present (0 until it happens), so
    an alert on `increase(...) > 0` has a series to start from."""

    def __init__(self, stats: ExtractStats) -> None:
        self._stats = stats

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        clamped, failed = self._stats.snapshot()
        clamped_family, failed_family = self._families()
        for reason, n in sorted(clamped.items()):
            clamped_family.add_metric([reason], n)
        for step, n in sorted(failed.items()):
            failed_family.add_metric([step], n)
        yield clamped_family
        yield failed_family

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, CounterMetricFamily]:
        return (
            CounterMetricFamily(
                mn.RECORDS_CLAMPED,
                "Usage records whose token counts contradicted themselves and were made consistent.",
                labels=[mn.REASON],
            ),
            CounterMetricFamily(
                mn.ENRICHMENT_FAILURES,
                "Usage records whose source could not price, estimate or attribute them "
                "(their reported tokens are still counted).",
                labels=[mn.STEP],
            ),
        )

"""The aggregator as Prometheus metrics: a custom prometheus_client Collector.

`collect()` reads one consistent snapshot per scrape (the client_python model for proxies and
exporters), so the aggregator stays free of any Prometheus import. The usage families (tokens,
cost, requests, estimated tokens, input histogram: nearly all of a large page) come out as
`RenderedFamily` objects whose sample lines are kept per series between scrapes and re-rendered
only for series whose values changed (exposition_text.py); their `samples` are still built the
prometheus_client way when read, so every reader sees the same families as before.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import cast

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from otel_tokens import metric_names as names
from otel_tokens.aggregate import UNPRICED_LABELS, Aggregator, Series, Snapshot
from otel_tokens.exposition_text import RenderedFamily, SeriesLines
from otel_tokens.keyed import Key
from otel_tokens.metric_names import TASK_LABELS, TOKEN_TYPES

__all__ = ["TokenMetricsCollector"]

_go_float = cast(Callable[[float], str], floatToGoString)  # untyped upstream

_HELP = {
    names.TOKENS: f"LLM tokens by type; types are disjoint, so a sum over {names.TOKEN_TYPE} is the total.",
    names.COST: f"LLM cost in USD; unpriced calls add 0 (see {names.UNPRICED}).",
    names.REQUESTS: "LLM calls, counted once each after deduplication.",
    names.ESTIMATED: "Tokens counted with a tokenizer because the provider reported no usage.",
    names.INPUT_HISTOGRAM: "Input tokens per request (including cache): context growth shows here.",
    names.TASK_TOKENS: "Tokens per completed task instance (all its calls, every process); count = tasks.",
    names.TASK_COST: "USD per completed task instance (unpriced calls add 0).",
}


class TokenMetricsCollector(Collector):
    """Exposes an Aggregator; register it in the registry that /metrics serves."""

    def __init__(self, aggregator: Aggregator) -> None:
        self._aggregator = aggregator
        #: per series: (the values its lines were rendered from, its lines in each usage family)
        self._lines: dict[Key, tuple[Series, tuple[str, str, str, str, str]]] = {}
        self._lines_for: tuple[tuple[str, ...], tuple[float, ...]] | None = None

    def describe(self) -> Iterator[Metric]:
        """Names only, so a registry detects a second registration without a snapshot."""
        dims = list(self._aggregator.config.dimensions)
        yield from self._usage_families(dims)
        yield from _task_families()
        yield from _self_families()

    def collect(self) -> Iterator[Metric]:
        snap = self._aggregator.snapshot()
        yield from self._rendered_usage_families(snap)
        yield from _task_families(snap)
        yield from _self_families(snap)

    def _rendered_usage_families(self, snap: Snapshot) -> list[RenderedFamily]:
        """The five usage families, each series' lines reused from the last scrape when unchanged."""
        dims = snap.dimensions
        if self._lines_for != (dims, snap.buckets):  # another layout: nothing rendered can be kept
            self._lines, self._lines_for = {}, (dims, snap.buckets)
        bounds = [_go_float(b) for b in snap.buckets] + ["+Inf"]
        previous, current = self._lines, {}
        for key in sorted(snap.series):
            series = snap.series[key]
            kept = previous.get(key)
            if kept is None or kept[0] != series:
                kept = (series, _render_series(dims, key, series, bounds))
            current[key] = kept
        self._lines = current  # replaced whole: a concurrent scrape reads one or the other
        bodies = ["".join(chunks[i] for _, chunks in current.values()) for i in range(5)]
        build = functools.partial(self._usage_samples, snap)
        return [
            RenderedFamily(family.name, family.documentation, family.type, body, functools.partial(build, i))
            for i, (family, body) in enumerate(zip(self._usage_families(list(dims)), bodies, strict=True))
        ]

    def _usage_samples(self, snap: Snapshot, index: int) -> list[Sample]:
        """Family `index`'s samples the prometheus_client way (what a reader of `samples` gets)."""
        families = self._usage_families(list(snap.dimensions))
        tokens, cost, requests, estimated, hist = families
        bounds = [_go_float(b) for b in snap.buckets] + ["+Inf"]
        for key, s in sorted(snap.series.items()):
            labels = list(key)
            for token_type, n in zip(TOKEN_TYPES, s.tokens, strict=True):
                tokens.add_metric([*labels, token_type], n)
            cost.add_metric(labels, s.cost_usd)
            if s.requests_ok:
                requests.add_metric([*labels, "ok"], s.requests_ok)
            if s.requests_error:
                requests.add_metric([*labels, "error"], s.requests_error)
            if s.estimated_tokens:
                estimated.add_metric(labels, s.estimated_tokens)
            hist.add_metric(labels, _cumulative(bounds, s.input_buckets), s.input_sum)
        return families[index].samples

    @staticmethod
    def _usage_families(
        dims: list[str],
    ) -> tuple[
        CounterMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        HistogramMetricFamily,
    ]:
        return (
            CounterMetricFamily(names.TOKENS, _HELP[names.TOKENS], labels=[*dims, names.TOKEN_TYPE]),
            CounterMetricFamily(names.COST, _HELP[names.COST], labels=dims),
            CounterMetricFamily(names.REQUESTS, _HELP[names.REQUESTS], labels=[*dims, names.STATUS]),
            CounterMetricFamily(names.ESTIMATED, _HELP[names.ESTIMATED], labels=dims),
            HistogramMetricFamily(names.INPUT_HISTOGRAM, _HELP[names.INPUT_HISTOGRAM], labels=dims),
        )


def _render_series(
    dims: tuple[str, ...], key: Key, s: Series, bounds: list[str]
) -> tuple[str, str, str, str, str]:
    """One series' sample lines in each usage family, as prometheus_client renders them."""
    labels = list(zip(dims, key, strict=True))
    plain = SeriesLines(labels)
    by_type = SeriesLines(labels, names.TOKEN_TYPE)
    tokens_name = names.TOKENS
    tokens = "".join(
        by_type.extra_line(tokens_name, t, n) for t, n in zip(TOKEN_TYPES, s.tokens, strict=True)
    )
    cost = plain.line(names.COST, s.cost_usd)
    requests = ""
    if s.requests_ok or s.requests_error:
        by_status = SeriesLines(labels, names.STATUS)
        if s.requests_ok:
            requests += by_status.extra_line(names.REQUESTS, "ok", s.requests_ok)
        if s.requests_error:
            requests += by_status.extra_line(names.REQUESTS, "error", s.requests_error)
    estimated = plain.line(names.ESTIMATED, s.estimated_tokens) if s.estimated_tokens else ""
    by_le = SeriesLines(labels, "le")
    bucket_name = names.INPUT_HISTOGRAM + "_bucket"
    lines = [by_le.extra_line(bucket_name, b, n) for b, n in _cumulative(bounds, s.input_buckets)]
    lines.append(plain.line(names.INPUT_HISTOGRAM + "_count", sum(s.input_buckets)))
    lines.append(plain.line(names.INPUT_HISTOGRAM + "_sum", s.input_sum))
    return tokens, cost, requests, estimated, "".join(lines)


def _task_families(snap: Snapshot | None = None) -> Iterator[Metric]:
    """Tokens and cost per completed task instance, by (agent, task, model, status, verified)."""
    labels = list(TASK_LABELS)
    tokens = HistogramMetricFamily(names.TASK_TOKENS, _HELP[names.TASK_TOKENS], labels=labels)
    cost = HistogramMetricFamily(names.TASK_COST, _HELP[names.TASK_COST], labels=labels)
    if snap is not None:
        token_bounds = [_go_float(b) for b in snap.task_token_buckets] + ["+Inf"]
        cost_bounds = [_go_float(b) for b in snap.task_cost_buckets] + ["+Inf"]
        for key, s in sorted(snap.task_series.items()):
            tokens.add_metric(list(key), _cumulative(token_bounds, s.token_buckets), s.token_sum)
            cost.add_metric(list(key), _cumulative(cost_bounds, s.cost_buckets), s.cost_sum)
    yield from (tokens, cost)


def _cumulative(bounds: list[str], per_bucket: list[int]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    running = 0
    for bound, n in zip(bounds, per_bucket, strict=True):
        running += n
        out.append((bound, running))
    return out


def _self_families(snap: Snapshot | None = None) -> Iterator[Metric]:
    """The collector's own health: what came in, what was refused, what was merged or capped."""
    received = CounterMetricFamily(names.SPANS_RECEIVED, "Spans received (all kinds).")
    rejected = CounterMetricFamily(
        names.SPANS_REJECTED, "Spans or payloads refused, by reason.", labels=[names.REASON]
    )
    duplicates = CounterMetricFamily(
        names.DUPLICATES_DROPPED, "Usage spans dropped as another span of a counted call."
    )
    overflow = CounterMetricFamily(
        names.SERIES_OVERFLOW,
        f"Records sent to the {names.OVERFLOW} series by the series limit.",
        labels=[names.METRIC],
    )
    late = CounterMetricFamily(
        names.VERDICTS_LATE, "Verdicts that arrived after their task was observed (too late to count)"
    )
    unpriced = CounterMetricFamily(
        names.UNPRICED,
        "Records whose model has no known price (cost counted as 0).",
        labels=list(UNPRICED_LABELS),
    )
    if snap is not None:
        received.add_metric([], snap.spans_received)
        duplicates.add_metric([], snap.duplicates_dropped)
        late.add_metric([], snap.verdicts_late)
        for reason, n in sorted(snap.spans_rejected.items()):
            rejected.add_metric([reason], n)
        for metric, n in sorted(snap.series_overflow.items()):
            overflow.add_metric([metric], n)
        for (provider, model), n in sorted(snap.unpriced.items()):
            unpriced.add_metric([provider, model], n)
    yield from (received, rejected, duplicates, overflow, unpriced, late)

"""The fast /metrics encoders write exactly what prometheus_client writes for the same families.

Our usage families keep their rendered lines between scrapes (exposition_text.py); a scrape must
still read, byte for byte and parsed, as prometheus_client's own rendering of the same registry, in
the text format and in OpenMetrics, after changes, new series, expired series and hostile label
values. Prometheus' view is checked too: the page parses with prometheus_client's parser (the same
grammar Prometheus reads) into the same families.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from otel_tokens.aggregate import Aggregator, MetricsConfig
from otel_tokens.exposition import TokenMetricsCollector
from otel_tokens.exposition_text import choose_encoder, generate_openmetrics
from otel_tokens.exposition_text import generate_latest as fast_text
from otel_tokens.record import Attribution, TokenCounts, UsageRecord

HOSTILE = ('quote " in it', "back\\slash", "new\nline", "ünïcode ✓", "", "{brace}=,")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(agent: str | None, task: str, model: str = "gpt-4o", **kw: object) -> UsageRecord:
    return UsageRecord(
        provider="openai",
        request_model=model,
        tokens=kw.pop("tokens", TokenCounts(1500, 120, 300, 40, 20)),  # type: ignore[arg-type]
        cost_usd=kw.pop("cost", 0.0123),  # type: ignore[arg-type]
        attribution=Attribution(agent=agent, task=task, task_id=kw.pop("task_id", None)),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def both_renderings_agree(registry: CollectorRegistry) -> str:
    theirs, ours = generate_latest(registry), fast_text(registry)
    assert ours == theirs
    their_om, our_om = openmetrics_latest(registry), generate_openmetrics(registry)
    assert our_om == their_om
    assert families(parse_text(ours.decode())) == families(parse_text(theirs.decode()))
    assert families(parse_openmetrics(our_om.decode())) == families(parse_openmetrics(their_om.decode()))
    return ours.decode()


def families(
    parsed: Iterable[Metric],
) -> list[tuple[str, str, list[tuple[str, list[tuple[str, str]], float]]]]:
    """Parsed families as comparable values: name, type, samples (labels sorted)."""
    return [
        (f.name, f.type, sorted((s.name, sorted(s.labels.items()), s.value) for s in f.samples))
        for f in parsed
    ]


@pytest.mark.parametrize(
    "dimensions", [("agent", "task", "model", "provider"), ("agent",), ("user", "agent", "step", "operation")]
)
def test_fast_pages_equal_prometheus_clients_through_changes(dimensions: tuple[str, ...]) -> None:
    clock = Clock()
    agg = Aggregator(MetricsConfig(dimensions=dimensions, series_idle_seconds=60), clock=clock)
    registry = CollectorRegistry()
    registry.register(TokenMetricsCollector(agg))
    other = Counter("other_things", "A family of another collector.", ["kind"], registry=registry)
    other.labels(kind="x").inc(3)
    both_renderings_agree(registry)  # empty families

    agg.add_many([record(a, t) for a in ("coder", "reviewer", None) for t in ("fix", "test")])
    agg.add_many([record(h, "fix", status="error", error_type="RateLimit") for h in HOSTILE])
    agg.add_many([record("coder", "fix", estimated=True, task_id="run-1", tokens=TokenCounts(10**7, 3))])
    first = both_renderings_agree(registry)
    assert 'agent="quote \\" in it"' in first and 'agent="new\\nline"' in first

    agg.add_many([record("coder", "fix", cost=None)])  # one series changes, the rest is reused
    clock.now += 30
    agg.add_many([record("newcomer", "triage", model="o3", tokens=TokenCounts(1, 2))])
    second = both_renderings_agree(registry)
    assert second != first and 'agent="newcomer"' in second

    clock.now += 45  # all but the newcomer idle for 75 s > 60 s: they expire from the page
    third = both_renderings_agree(registry)
    assert 'agent="coder"' not in third and 'agent="newcomer"' in third
    assert both_renderings_agree(registry) == third  # a scrape with nothing changed


def test_rendered_families_keep_their_samples_for_every_reader() -> None:
    agg = Aggregator(MetricsConfig())
    agg.add_many([record("coder", "fix"), record("coder", "fix", status="error")])
    registry = CollectorRegistry()
    registry.register(TokenMetricsCollector(agg))
    labels = {"agent": "coder", "task": "fix", "model": "gpt-4o", "provider": "openai"}
    assert registry.get_sample_value("llm_tokens_total", {**labels, "token_type": "input"}) == 2 * (
        1500 - 300 - 40
    )
    assert registry.get_sample_value("llm_requests_total", {**labels, "status": "error"}) == 1
    assert registry.get_sample_value("llm_request_input_tokens_count", labels) == 2


@pytest.mark.parametrize(
    ("accept", "fast", "content_type"),
    [
        ("", fast_text, "text/plain; version=0.0.4; charset=utf-8"),
        ("text/plain", fast_text, "text/plain; version=0.0.4; charset=utf-8"),
        ("application/openmetrics-text; version=1.0.0", generate_openmetrics, "application/openmetrics-text"),
        ("application/openmetrics-text", generate_openmetrics, "application/openmetrics-text"),
    ],
)
def test_choose_encoder_answers_like_prometheus_client(accept: str, fast: object, content_type: str) -> None:
    encoder, ctype = choose_encoder(accept)
    assert encoder is fast and ctype.startswith(content_type)


def test_other_escaping_schemes_keep_prometheus_clients_encoder() -> None:
    accept = "application/openmetrics-text; version=1.0.0; escaping=dots"
    encoder, _ = choose_encoder(accept)
    assert encoder not in (fast_text, generate_openmetrics)
    registry = CollectorRegistry()
    agg = Aggregator(MetricsConfig(dimensions=("agent",)))
    agg.add_many([record("coder", "fix")])
    registry.register(TokenMetricsCollector(agg))
    assert b"# TYPE llm__tokens counter" in encoder(registry)  # the dots scheme's names, not ours


def test_a_gzip_page_inflates_to_the_same_page() -> None:
    agg = Aggregator(MetricsConfig())
    agg.add_many([record(f"agent-{i}", "fix") for i in range(50)])
    registry = CollectorRegistry()
    registry.register(TokenMetricsCollector(agg))
    page = fast_text(registry)
    assert gzip.decompress(gzip.compress(page, compresslevel=1)) == page == generate_latest(registry)

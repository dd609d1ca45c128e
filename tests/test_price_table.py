"""Pricing a batch at a time (`pricing.PriceTable`, and in C by the compiled record build) costs every
record exactly (==, not approx) what pricing it alone through the price book costs.

- The C price of every price set genai-prices has (every model, every dated set, every service-tier
  variant) equals the generated `fast` over random counts, odd ones and tier boundaries included.
- The same spans — many models, unknown ones, dated snapshot names, service tiers, tiered prices,
  cache and reasoning tokens — counted by the pure-Python pipeline and by the compiled walk, both with
  the default prices, give the same records and the same /metrics page; and each record's cost is
  the price book's for that record alone.
- The table forgets rates that may have changed: new price data, or a dated price's next change.
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest

from otel_tokens import pricing
from otel_tokens import semconv as sc
from otel_tokens.accelerator import rates_compiler, record_builder, scanner
from otel_tokens.extract import _price
from otel_tokens.pipeline import DedupeConfig, Pipeline
from otel_tokens.pricing import PriceBook, PriceTable, default_price_book
from otel_tokens.record import TokenCounts, UsageRecord

compiled_only = pytest.mark.skipif(rates_compiler() is None, reason="the compiled record build is not built")


def every_price_set() -> list[tuple[str, Any]]:
    """(a name, compiled rates) of every price set of every model genai-prices knows."""
    from genai_prices.data_snapshot import get_snapshot

    sets: list[tuple[str, Any]] = []
    for provider in get_snapshot().providers:
        for model in provider.models:
            name = f"{provider.id}/{model.id}"
            entry = pricing._compile_model(model)
            if entry.rates is not None:
                sets.append((name, entry.rates))
            sets += [(f"{name} (dated {i})", rates) for i, (_, rates) in enumerate(entry.conditional)]
            sets += [(f"{name} ({tier})", prices.rates_now()) for tier, prices in entry.tiers.items()]
    return sets


def random_counts(rnd: random.Random, thresholds: tuple[int, ...]) -> tuple[int, ...]:
    """Six counts: mostly plausible ones, sometimes huge, zero or negative, the input sometimes on
    a tier boundary."""

    def one() -> int:
        kind = rnd.random()
        if kind < 0.6:
            return rnd.randint(0, 200_000)
        if kind < 0.75:
            return rnd.randint(0, 10**9)
        if kind < 0.9:
            return 0
        return -rnd.randint(1, 10**6)

    counts = [one() for _ in range(6)]
    if thresholds and rnd.random() < 0.3:
        counts[0] = rnd.choice(thresholds) + rnd.choice((-1, 0, 1))
    return tuple(counts)


@compiled_only
def test_the_c_price_is_the_generated_cost_bit_for_bit() -> None:
    from otel_tokens import _otlp_scan  # type: ignore[attr-defined]

    compile_rates = rates_compiler()
    assert compile_rates is not None
    sets = every_price_set()
    assert len(sets) > 500  # every model genai-prices has, not a sample
    rnd = random.Random(5)
    tiered = 0
    for name, rates in sets:
        linear = compile_rates(rates)
        assert linear is not None, name  # every price set genai-prices has is priced in C
        tiered += bool(rates.thresholds)
        for _ in range(200):
            counts = random_counts(rnd, rates.thresholds)
            got, expected = _otlp_scan.price(linear, counts), rates.fast(*counts)
            assert got == expected and math.copysign(1, got) == math.copysign(1, expected), (name, counts)
    assert tiered > 10  # tiered prices were among them


def spans() -> list[ReadableSpan]:
    """Usage spans of many price keys, as other instrumentations export them (no cost on the span)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({sc.SERVICE_NAME: "agent"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("opentelemetry.instrumentation.openai_v2")
    keys: list[tuple[str, str, str | None, str | None]] = [
        ("openai", "gpt-4o", "gpt-4o-2024-08-06", None),
        ("openai", "gpt-4o-mini", "gpt-4o-mini-2024-07-18", "default"),
        ("openai", "o3", "o3-2025-04-16", "flex"),
        ("openai", "gpt-5", None, "priority"),
        ("OpenAI", "gpt-4.1", "gpt-4.1", None),  # a provider name to lower
        ("openai", "no-such-model", "no-such-model-2025", None),  # unpriced
        ("openai", "no-such-model", "gpt-4o-mini-2024-07-18", None),  # priced by its response model
        ("anthropic", "claude-sonnet-4-5", "claude-sonnet-4-5-20250929", None),  # tiered above 200k
        ("gcp.gemini", "gemini-2.5-pro", None, None),
        ("deepseek", "deepseek-chat", None, None),  # prices by time of day
    ]
    rnd = random.Random(3)
    for i in range(600):
        provider_name, model, response_model, tier = keys[i % len(keys)]
        inp = rnd.choice((rnd.randint(1, 5000), rnd.randint(150_000, 400_000)))
        out = rnd.randint(1, 5000)
        attributes: dict[str, Any] = {
            sc.GEN_AI_SYSTEM: provider_name,
            sc.GEN_AI_REQUEST_MODEL: model,
            sc.GEN_AI_USAGE_INPUT_TOKENS: inp,
            sc.GEN_AI_USAGE_OUTPUT_TOKENS: out,
            sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: rnd.choice((0, inp // 3)),
            sc.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS: rnd.choice((0, inp // 5)),
            sc.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: rnd.choice((0, out // 2)),
        }
        if response_model is not None:
            attributes[sc.GEN_AI_RESPONSE_MODEL] = response_model
        if tier is not None:
            attributes[sc.GEN_AI_OPENAI_RESPONSE_SERVICE_TIER] = tier
        tracer.start_span("chat", attributes=attributes).end()
    return list(exporter.get_finished_spans())


class Run:
    def __init__(self, compiled: bool) -> None:
        self.pipeline = Pipeline(
            registry=CollectorRegistry(),
            clock=lambda: 1_000.0,
            compiled=compiled,
            dedupe=DedupeConfig(hold_seconds=2.0),
        )
        self.records: list[UsageRecord] = []
        self.pipeline.add_listener(self.records.append)

    def page(self) -> bytes:
        self.pipeline.flush(now=float("inf"))
        return generate_latest(self.pipeline.registry)


def test_a_batch_is_priced_as_each_record_alone_on_both_paths() -> None:
    all_spans = spans()
    payloads = [encode_spans(all_spans[i : i + 200]).SerializeToString() for i in range(0, 600, 200)]
    pure, over_bytes, over_request = Run(False), Run(True), Run(True)
    for data in payloads:
        pure.pipeline.ingest_otlp(ExportTraceServiceRequest.FromString(data))
        over_bytes.pipeline.ingest_otlp_bytes(data)
        over_request.pipeline.ingest_otlp(ExportTraceServiceRequest.FromString(data))
    page = pure.page()
    assert len(pure.records) == 600
    for run in (over_bytes, over_request):
        assert run.page() == page
        assert [repr(r) for r in run.records] == [repr(r) for r in pure.records]
    book = default_price_book()
    priced = 0
    for record in pure.records:
        alone, failed = _price(
            book.strict_cost_usd, record.provider, record.request_model, record.response_model,
            record.tokens, record.service_tier,
        )  # fmt: skip
        assert not failed and record.cost_usd == alone, record
        priced += alone is not None
    assert 0 < priced < 600  # the unknown model stayed unpriced


@pytest.mark.skipif(scanner() is None, reason="the compiled walk is not built")
def test_the_compiled_build_prices_what_the_table_holds_and_hands_back_the_rest() -> None:
    data = encode_spans(spans()[:10]).SerializeToString()
    _, _, scopes, hits, _ = scanner()(data, None)  # type: ignore[misc]
    table = PriceTable(default_price_book(), rates_compiler())
    table.refresh()
    table.learn(("openai", "gpt-4o", "gpt-4o-2024-08-06", None))
    unpriced: list[UsageRecord] = []
    build = record_builder()
    assert build is not None
    assert build(hits, [None] * len(scopes), [False] * len(scopes), 10**7, table.compiled, unpriced) == 10
    priced = [r for r in hits if r.cost_usd is not None]
    assert [r.request_model for r in priced] == ["gpt-4o"]
    assert priced[0].cost_usd == book_cost(priced[0])
    assert len(unpriced) == 9 and all(r.cost_usd is None for r in unpriced)


def book_cost(record: UsageRecord) -> float | None:
    return PriceBook().cost_usd(record.provider, record.response_model or record.request_model, record.tokens)


def test_the_table_forgets_rates_new_price_data_or_the_clock_may_have_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from genai_prices import data_snapshot

    book = PriceBook()
    table = PriceTable(book)
    table.refresh()
    key = ("openai", "gpt-4o", None, None)
    assert table.learn(key) is table.rates[key]
    table.refresh()
    assert key in table.rates  # nothing changed: kept
    snapshot = data_snapshot.get_snapshot()
    updated = data_snapshot.DataSnapshot(providers=snapshot.providers, from_auto_update=True)
    monkeypatch.setattr(data_snapshot, "_custom_snapshot", updated)
    table.refresh()
    assert table.rates == {}  # new price data: every rate resolved again
    dated = ("deepseek", "deepseek-chat", None, None)  # its price changes by the time of day
    table.learn(dated)
    table.refresh()
    assert dated in table.rates
    _, until = book.rates_until("deepseek", "deepseek-chat")
    assert until < math.inf
    monkeypatch.setattr(pricing.time, "time", lambda: until)
    table.refresh()
    assert table.rates == {}  # its next change came: resolved again


def test_the_table_is_bounded() -> None:
    table = PriceTable(PriceBook(), max_entries=3)
    table.refresh()
    for i in range(10):
        table.learn(("openai", f"model-{i}", None, None))
        assert len(table.rates) <= 3


def test_a_record_priced_by_the_table_costs_what_the_price_book_says() -> None:
    table = PriceTable(default_price_book())
    table.refresh()
    book = default_price_book()
    tokens = TokenCounts(
        input=300_000, output=70, cache_read=1000, cache_write=250_000, cache_write_1h=100_000
    )
    for provider, model, response, tier in [
        ("anthropic", "claude-sonnet-4-5", None, None),
        ("openai", "gpt-5", "gpt-5-2025-08-07", "flex"),
        ("openai", "nope", None, None),
    ]:
        expected = book.cost_usd(provider, response or model, tokens, tier)
        if expected is None and response is not None:
            expected = book.cost_usd(provider, model, tokens, tier)
        assert _price(book.strict_cost_usd, provider, model, response, tokens, tier, table) == (
            expected,
            False,
        )
        assert (provider, model, response, tier) in table.rates

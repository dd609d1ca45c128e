"""Our compiled prices must cost every call exactly as genai-prices' own `calc_price` does."""

from __future__ import annotations

import math
import threading
from decimal import Decimal
from typing import Any

import pytest
from genai_prices import Usage, calc_price
from genai_prices.types import ModelPrice

from otel_tokens import pricing
from otel_tokens.pricing import PriceBook, default_price_book
from otel_tokens.record import TokenCounts

# (our semconv provider name, model): OpenAI and Anthropic flagships, a reasoning model, an embedding
# model, tiered prices (claude-sonnet-4-5, gemini-2.5-pro above 200k input), prices that change by
# date (o3, claude-opus-4-6) and by time of day (deepseek-chat), a reasoning-token price and a
# per-request fee (perplexity).
MODELS = [
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("openai", "gpt-4.1"),
    ("openai", "gpt-5"),
    ("openai", "o3-mini"),
    ("openai", "o3"),
    ("openai", "text-embedding-3-small"),
    ("anthropic", "claude-sonnet-4-5"),
    ("anthropic", "claude-3-5-haiku-20241022"),
    ("anthropic", "claude-opus-4-1"),
    ("anthropic", "claude-haiku-4-5"),
    ("anthropic", "claude-opus-4-6"),
    ("gcp.gemini", "gemini-2.5-pro"),
    ("deepseek", "deepseek-chat"),
    ("perplexity", "sonar-deep-research"),
    ("perplexity", "sonar"),
]

TOKENS = [
    TokenCounts(),
    TokenCounts(input=1000, output=200),
    TokenCounts(input=5000, output=300, cache_read=4000),
    TokenCounts(input=5000, output=300, cache_write=1000),
    TokenCounts(input=12_000, output=800, cache_read=3000, cache_write=2000),
    TokenCounts(input=2000, output=5000, reasoning=4000),
    TokenCounts(input=200_000, output=100, cache_read=150_000),  # at the 200k tier start: base rate
    TokenCounts(input=200_001, output=100, cache_read=150_000),  # one above: tier rate for all tokens
    TokenCounts(input=250_000, output=1000, cache_read=100_000, cache_write=50_000, reasoning=500),
    TokenCounts(input=1_000_000, output=10_000, reasoning=9_000),
    TokenCounts(input=4100, output=70, cache_write=4000, cache_write_1h=4000),  # all 1-hour writes
    TokenCounts(input=9000, output=70, cache_read=1000, cache_write=6000, cache_write_1h=2500),
    TokenCounts(input=300_000, output=70, cache_write=250_000, cache_write_1h=100_000),  # tier
]


def reference_cost(
    provider_id: str | None, model: str, tokens: TokenCounts, service_tier: str | None = None
) -> float:
    usage = Usage(
        input_tokens=tokens.input,
        output_tokens=tokens.output,
        cache_read_tokens=tokens.cache_read,
        cache_write_tokens=tokens.cache_write,
        output_reasoning_tokens=tokens.reasoning,
        cache_write_1h_tokens=tokens.cache_write_1h,
    )
    context = {"service_tier": service_tier} if service_tier is not None else None
    return float(calc_price(usage, model, provider_id=provider_id, price_context=context).total_price)


@pytest.mark.parametrize(("provider", "model"), MODELS)
def test_cost_equals_genai_prices(provider: str, model: str):
    book = PriceBook()
    provider_id = pricing.PROVIDER_IDS[provider]
    for tokens in TOKENS:
        ours = book.cost_usd(provider, model, tokens)
        expected = reference_cost(provider_id, model, tokens)
        assert ours is not None
        assert math.isclose(ours, expected, rel_tol=1e-12, abs_tol=0.0), (model, tokens, ours, expected)


def test_tier_threshold_is_total_input_including_cache():
    """claude-sonnet-4-5 doubles its input rate above 200k input tokens, cache reads included."""
    book = PriceBook()
    below = book.cost_usd("anthropic", "claude-sonnet-4-5", TokenCounts(input=200_000))
    above = book.cost_usd("anthropic", "claude-sonnet-4-5", TokenCounts(input=200_001))
    assert below is not None and above is not None
    assert below == pytest.approx(0.6)  # $3/MTok
    assert above == pytest.approx(200_001 * 6 / 1e6)  # $6/MTok on every token


def test_cache_reads_without_a_cache_price_are_billed_as_input():
    book = PriceBook()
    plain = book.cost_usd("openai", "text-embedding-3-small", TokenCounts(input=1000))
    cached = book.cost_usd("openai", "text-embedding-3-small", TokenCounts(input=1000, cache_read=600))
    assert plain == cached == pytest.approx(1000 * 0.02 / 1e6)


def test_unknown_model_is_unpriced_and_resolved_once(monkeypatch: pytest.MonkeyPatch):
    calls: list[tuple[str, str]] = []
    real_resolve = pricing._resolve

    def counting_resolve(provider: str, model: str) -> Any:
        calls.append((provider, model))
        return real_resolve(provider, model)

    monkeypatch.setattr(pricing, "_resolve", counting_resolve)
    book = PriceBook()
    for _ in range(3):
        assert book.cost_usd("openai", "my-private-finetune-xyz", TokenCounts(input=10)) is None
    assert calls == [("openai", "my-private-finetune-xyz")]


def test_dated_snapshot_name_is_priced_like_its_model():
    book = PriceBook()
    tokens = TokenCounts(input=1000, output=100)
    assert book.cost_usd("openai", "gpt-4o-2024-08-06", tokens) == pytest.approx(0.0035)
    assert book.cost_usd("openai", "gpt-4o-2024-08-06", tokens) == book.cost_usd("openai", "gpt-4o", tokens)


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("some.new.provider", "gpt-4o"),  # unknown provider: genai-prices picks by model name
        ("openai", "claude-haiku-4-5"),  # an OpenAI-compatible gateway serving another vendor's model
        ("aws.bedrock", "anthropic.claude-3-5-haiku-20241022-v1:0"),
        ("azure.ai.openai", "gpt-4o"),
        ("gcp.vertex_ai", "gemini-2.5-flash"),
    ],
)
def test_provider_names_resolve(provider: str, model: str):
    assert default_price_book().cost_usd(provider, model, TokenCounts(input=1000, output=10))


def test_cache_is_bounded():
    book = PriceBook(max_models=2)
    for model in ("gpt-4o", "gpt-4.1", "gpt-5", "unknown-1", "unknown-2"):
        book.cost_usd("openai", model, TokenCounts(input=1))
    assert len(book._entries) == 2


def test_odd_counts_never_raise():
    book = PriceBook()
    # Cache reads above the input total (partial usage seen in the field): genai-prices raises,
    # we bill the fresh-input leaf as zero.
    odd = TokenCounts(input=100, output=-5, cache_read=500, cache_write=-1, reasoning=-2)
    assert book.cost_usd("openai", "gpt-4o", odd) == pytest.approx(500 * 1.25 / 1e6)


@pytest.mark.parametrize(("provider", "model"), MODELS)
def test_generated_cost_is_bit_identical_to_its_definition(provider: str, model: str):
    """The straight-line cost function generated per price set gives exactly (==, not approx) the
    float its term loop gives, odd and negative counts included, in every tier regime."""
    entry = PriceBook()._entry(provider, model)
    assert entry is not None
    price_sets = [entry.rates] if entry.rates is not None else [rates for _, rates in entry.conditional]
    grid = [
        (t.input, t.output, t.cache_read, t.cache_write, t.reasoning, t.cache_write_1h) for t in TOKENS
    ] + [(100, -5, 500, -1, -2, 0), (-7, 3, 0, 9, 0, 11), (1, 1, 1, 1, 1, 1), (0, 0, 0, 0, 0, 3)]
    for rates in price_sets:
        for counts in grid:
            clamped = tuple(max(count, 0) for count in counts)
            assert rates.fast(*counts) == rates.reference_cost(clamped), counts


def test_provider_map_targets_real_genai_prices_providers():
    from genai_prices.data_snapshot import find_provider_by_id, get_snapshot

    for provider_id in pricing.PROVIDER_IDS.values():
        found = find_provider_by_id(get_snapshot().providers, provider_id)
        assert found is not None and found.id == provider_id


def test_prices_updated_by_genai_prices_drop_the_cache(monkeypatch: pytest.MonkeyPatch):
    from genai_prices import data_snapshot

    book = PriceBook()
    tokens = TokenCounts(input=1_000_000)
    assert book.cost_usd("openai", "gpt-4o", tokens) == pytest.approx(2.5)
    snapshot = data_snapshot.get_snapshot()
    gpt4o = next(m for p in snapshot.providers if p.id == "openai" for m in p.models if m.id == "gpt-4o")
    cheaper = ModelPrice(**{**vars(gpt4o.prices), "input_mtok": Decimal("1")})
    monkeypatch.setattr(gpt4o, "prices", cheaper)
    updated = data_snapshot.DataSnapshot(providers=snapshot.providers, from_auto_update=True)
    monkeypatch.setattr(data_snapshot, "_custom_snapshot", updated)
    assert book.cost_usd("openai", "gpt-4o", tokens) == pytest.approx(1.0)


def test_default_price_book_is_a_singleton():
    assert default_price_book() is default_price_book()


def test_concurrent_callers_agree():
    book = PriceBook(max_models=8)
    expected = {
        m: reference_cost("openai", m, TokenCounts(input=3000, output=70)) for m in ("gpt-4o", "gpt-5")
    }
    errors: list[str] = []

    def work() -> None:
        for i in range(300):
            model = ("gpt-4o", "gpt-5")[i % 2]
            got = book.cost_usd("openai", model, TokenCounts(input=3000, output=70))
            if got is None or not math.isclose(got, expected[model], rel_tol=1e-12):
                errors.append(f"{model}: {got}")
            book.cost_usd("openai", f"unknown-{i % 20}", TokenCounts(input=1))  # churns the LRU

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(book._entries) <= 8


# --- the right rate: 1-hour cache writes and service tiers ------------------------------------------
def test_one_hour_cache_writes_cost_the_one_hour_rate():
    """The issue's call on claude-sonnet-4-5: 100 fresh input, 4,000 cache-write and 70 output tokens
    cost $0.01635 written with the 5-minute TTL ($3.75/MTok) and $0.02535 with the 1-hour TTL ($6)."""
    book = PriceBook()
    five_minutes = TokenCounts.from_anthropic(100, 70, cache_write=4000)
    one_hour = TokenCounts.from_anthropic(100, 70, cache_write=4000, cache_write_1h=4000)
    assert book.cost_usd("anthropic", "claude-sonnet-4-5", five_minutes) == pytest.approx(0.01635, abs=1e-12)
    assert book.cost_usd("anthropic", "claude-sonnet-4-5", one_hour) == pytest.approx(0.02535, abs=1e-12)
    assert reference_cost("anthropic", "claude-sonnet-4-5", one_hour) == pytest.approx(0.02535, abs=1e-12)
    # the split changes the price, never the token metric: one cache_write type, disjoint unchanged
    assert one_hour.disjoint() == five_minutes.disjoint()


def test_one_hour_writes_on_a_model_without_that_price_bill_at_the_write_rate():
    book = PriceBook()
    tokens = TokenCounts(input=5000, output=300, cache_write=1000)
    split = TokenCounts(input=5000, output=300, cache_write=1000, cache_write_1h=1000)
    assert book.cost_usd("openai", "gpt-4o", split) == book.cost_usd("openai", "gpt-4o", tokens)
    assert book.cost_usd("openai", "gpt-4o", split) == pytest.approx(
        reference_cost("openai", "gpt-4o", split)
    )


TIER_MODELS = [("openai", "gpt-5"), ("openai", "gpt-4o"), ("openai", "gpt-4.1"), ("openai", "o3")]
TIERS = [None, "default", "auto", "flex", "priority", "scale", "no-such-tier"]


@pytest.mark.parametrize(("provider", "model"), TIER_MODELS)
@pytest.mark.parametrize("tier", TIERS)
def test_service_tier_cost_equals_genai_prices(provider: str, model: str, tier: str | None):
    book = PriceBook()
    for tokens in TOKENS:
        ours = book.cost_usd(provider, model, tokens, service_tier=tier)
        expected = reference_cost(pricing.PROVIDER_IDS[provider], model, tokens, service_tier=tier)
        assert ours is not None
        assert math.isclose(ours, expected, rel_tol=1e-12, abs_tol=0.0), (model, tier, tokens, ours, expected)


def test_flex_costs_half_and_priority_double():
    """The issue's gpt-5 call: $0.225 at the standard rate, $0.1125 flex, $0.45 priority."""
    book = PriceBook()
    tokens = TokenCounts(input=100_000, output=10_000)
    assert book.cost_usd("openai", "gpt-5", tokens) == pytest.approx(0.225, abs=1e-12)
    assert book.cost_usd("openai", "gpt-5", tokens, service_tier="default") == pytest.approx(0.225, abs=1e-12)
    assert book.cost_usd("openai", "gpt-5", tokens, service_tier="flex") == pytest.approx(0.1125, abs=1e-12)
    assert book.cost_usd("openai", "gpt-5", tokens, service_tier="priority") == pytest.approx(0.45, abs=1e-12)


def test_tier_of_a_model_served_by_a_fallback_provider_is_the_standard_price():
    """genai-prices ignores the price context for a model found through another provider's list."""
    book = PriceBook()
    tokens = TokenCounts(input=100_000, output=10_000)
    for tier in ("flex", "priority"):
        got = book.cost_usd("azure.ai.openai", "gpt-5", tokens, service_tier=tier)
        assert got == pytest.approx(reference_cost("azure", "gpt-5", tokens, service_tier=tier))


def test_dated_rates_are_kept_only_until_a_constraint_can_change():
    """The rates date constraints select are cached until `_next_change`: no constraint may answer
    differently anywhere between the selection and that instant, and one must change right at it
    (a start date's UTC midnight; a time of day's start or end, also across midnight)."""
    from datetime import date, datetime, time, timedelta, timezone

    from genai_prices.types import StartDateConstraint, TimeOfDateConstraint

    utc = timezone.utc
    offset = timezone(timedelta(hours=8))
    cases = [
        [StartDateConstraint(start_date=date(2026, 3, 1))],
        [TimeOfDateConstraint(start_time=time(16, 30), end_time=time(0, 30))],
        [TimeOfDateConstraint(start_time=time(0, 30, tzinfo=offset), end_time=time(8, 30, tzinfo=offset))],
        [StartDateConstraint(start_date=date(2026, 2, 28)), TimeOfDateConstraint(time(1), time(2))],
    ]
    for constraints in cases:
        now = datetime(2026, 2, 27, 23, 59, 59, tzinfo=utc)
        for _ in range(12):
            next_change = pricing._next_change(constraints, now)
            if next_change == math.inf:
                assert all(isinstance(c, StartDateConstraint) and c.active(now) for c in constraints)
                break
            until = datetime.fromtimestamp(next_change, tz=utc)
            assert until > now
            before = [c.active(now) for c in constraints]
            step = (until - now) / 50
            assert all([c.active(now + k * step) for c in constraints] == before for k in range(50)), (
                constraints,
                now,
            )
            assert [c.active(until) for c in constraints] != before, (constraints, until)
            now = until
    started = [StartDateConstraint(start_date=date(2025, 6, 10))]  # in the past: never changes again
    assert pricing._next_change(started, datetime(2026, 1, 1, tzinfo=utc)) == math.inf


def test_a_constraint_of_an_unknown_kind_is_evaluated_on_every_call():
    from datetime import datetime, timezone

    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert pricing._next_change([object()], now) == now.timestamp()  # valid until now: no cache

"""Cost in USD of one LLM call, from the prices maintained by `genai-prices`.

This module owns the hot-path price computation. `genai_prices.calc_price` costs ~90 µs a call
(model matching, Decimal arithmetic, unit decomposition), far too slow for a collector handling tens
of thousands of spans a second. So each (provider, model) pair is resolved through genai-prices
once, its prices are compiled into plain floats, and every later call is a few multiply-adds.

The compiled form reproduces genai-prices' own semantics (checked by a golden test against
`calc_price` over a grid of models and token vectors):

- Prices apply to *leaf* counts: a price key the model does not have leaves its tokens in the
  parent bucket. E.g. a model without `cache_read_mtok` bills cache reads at the input rate, and
  one without `output_reasoning_mtok` bills reasoning at the output rate.
- Tiers ("cliff" pricing) are chosen for every price key by the call's *total* input tokens
  (cache included): above `tier.start` the tier rate applies to all tokens of that key.
- Conditional prices (a new price from a start date, DeepSeek's off-peak hours) are evaluated at
  call time, never frozen in the cache.
- Price variants selected by request context (batch / flex / priority service tiers) are not
  applied: spans do not carry the service tier, so the standard price is used.
- Cache writes are billed at the default (5-minute TTL) write rate; semconv does not report the
  1-hour TTL split.
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Protocol

from otel_tokens._safety import swallow_internal_errors
from otel_tokens.record import TokenCounts

__all__ = ["PriceBook", "default_price_book"]

#: Our provider names are semconv `gen_ai.provider.name` values; genai-prices has its own ids.
#: Names missing here go to genai-prices with provider_id=None, which picks the provider from the
#: model name.
PROVIDER_IDS: dict[str, str] = {
    "openai": "openai",
    "anthropic": "anthropic",
    "aws.bedrock": "aws",
    "gcp.gemini": "google",
    "gcp.vertex_ai": "google",
    "gcp.gen_ai": "google",
    "azure.ai.openai": "azure",
    "azure.ai.inference": "azure",
    "azure": "azure",
    "mistral_ai": "mistral",
    "groq": "groq",
    "deepseek": "deepseek",
    "x_ai": "x-ai",
    "perplexity": "perplexity",
    "cohere": "cohere",
    "together_ai": "together",
    "fireworks": "fireworks",
    "openrouter": "openrouter",
    "cerebras": "cerebras",
    "moonshot_ai": "moonshotai",
}

# The token counts we can report, in the order of the vector `_Entry.cost` reads. The reasoning
# count only matters for the few models with an `output_reasoning_mtok` price.
_REPORTED_KEYS: tuple[str, ...] = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_reasoning_tokens",
)
_DEFAULT_MAX_MODELS = 4096


@dataclass(frozen=True, slots=True)
class _Term:
    """One priced unit: its leaf count as a linear form of the reported counts, and its per-token
    rate in each tier regime."""

    coefs: tuple[tuple[int, int], ...]  # (index into the reported vector, coefficient)
    constant: int  # the `requests` unit counts 1 per call
    rates: tuple[float, ...]  # USD per unit, by regime (see _Rates.thresholds)


@dataclass(frozen=True, slots=True)
class _Rates:
    """One `ModelPrice` compiled to floats. Regime k applies when exactly k tier starts lie strictly
    below the total input tokens, matching genai-prices' `total_input_tokens > tier.start`."""

    thresholds: tuple[int, ...]
    terms: tuple[_Term, ...]

    def cost(self, counts: Sequence[int]) -> float:
        regime = bisect.bisect_left(self.thresholds, counts[0]) if self.thresholds else 0
        total = 0.0
        for term in self.terms:
            leaf = term.constant
            for index, coef in term.coefs:
                leaf += coef * counts[index]
            if leaf > 0:  # genai-prices rejects negative leaves (bad usage); we bill them as zero
                total += term.rates[regime] * leaf
        return total


class _Constraint(Protocol):
    """genai-prices' StartDateConstraint / TimeOfDateConstraint."""

    def active(self, request_timestamp: datetime) -> bool: ...


@dataclass(frozen=True, slots=True)
class _Entry:
    """Everything needed to price one (provider, model): either a single price set (almost all
    models) or genai-prices' conditional prices, which depend on when the call happens."""

    rates: _Rates | None
    conditional: tuple[tuple[_Constraint | None, _Rates], ...] = ()

    def rates_now(self) -> _Rates:
        if self.rates is not None:
            return self.rates
        # Same rule as genai-prices' ModelInfo.get_prices: the last active price wins; if none is
        # active, the first one applies.
        now = datetime.now(tz=timezone.utc)
        for constraint, rates in reversed(self.conditional):
            if constraint is None or constraint.active(now):
                return rates
        return self.conditional[0][1]


class PriceBook:
    """Prices LLM calls fast. Thread-safe; one instance per process is enough (`default_price_book`).

    Model names come from outsiders (any string a client sends), so the cache of resolved models is
    bounded (least recently resolved evicted first) and remembers unknown models too, so a stream
    of spans for an unpriced model does not pay the slow lookup every time.
    """

    def __init__(self, max_models: int = _DEFAULT_MAX_MODELS) -> None:
        self._max_models = max_models
        self._entries: OrderedDict[tuple[str, str], _Entry | None] = OrderedDict()
        self._lock = threading.Lock()
        self._snapshot: object = None
        # Imported here, not at module level, so `import otel_tokens` stays light.
        from genai_prices import data_snapshot

        self._snapshots: Any = data_snapshot

    def cost_usd(self, provider: str, model: str, tokens: TokenCounts) -> float | None:
        """USD cost of a call, or None when genai-prices knows no price for the model."""
        try:
            entry = self._entry(provider, model)
            if entry is None:
                return None
            return entry.rates_now().cost(_counts(tokens))
        except Exception:
            # Re-raised inside the shared policy so it is logged once (or raised under tests); the
            # context manager itself stays off the hot path, where it would cost a third of the call.
            with swallow_internal_errors("pricing.cost_usd"):
                raise
            return None

    def _entry(self, provider: str, model: str) -> _Entry | None:
        key = (provider, model)
        snapshot = self._current_snapshot()
        try:
            return self._entries[key]  # lock-free read: a dict lookup is atomic
        except KeyError:
            pass
        entry = _resolve(provider, model)  # slow; outside the lock, a duplicate resolve is harmless
        with self._lock:
            if snapshot is self._snapshot:  # else resolved from prices replaced meanwhile: don't keep
                self._entries[key] = entry
                while len(self._entries) > self._max_models:
                    self._entries.popitem(last=False)
        return entry

    def _current_snapshot(self) -> object:
        """genai-prices' optional updater swaps in a new data snapshot; cached rates are then stale."""
        snapshot = self._snapshots.get_snapshot()
        if snapshot is not self._snapshot:
            with self._lock:
                self._entries.clear()
                self._snapshot = snapshot
        return snapshot


def _counts(tokens: TokenCounts) -> tuple[int, ...]:
    """The reported vector, in `_REPORTED_KEYS` order; negative counts (impossible, but spans come
    from outsiders) count as zero."""
    counts = (tokens.input, tokens.output, tokens.cache_read, tokens.cache_write, tokens.reasoning)
    if min(counts) < 0:
        return tuple(max(count, 0) for count in counts)
    return counts


def _resolve(provider: str, model: str) -> _Entry | None:
    """Find the model through genai-prices' own matching (aliases, dated snapshots, provider
    fallbacks) and compile its prices. None when no provider knows the model."""
    from genai_prices import Usage, calc_price

    provider_id = PROVIDER_IDS.get(provider.strip().lower())
    for candidate in (provider_id, None) if provider_id else (None,):
        try:
            model_info = calc_price(Usage(), model, provider_id=candidate).model
        except LookupError:
            continue  # e.g. an OpenAI-compatible gateway serving another vendor's model
        return _compile_model(model_info)
    return None


def _compile_model(model_info: Any) -> _Entry:
    from genai_prices.types import ModelPrice

    prices = model_info.prices
    if isinstance(prices, ModelPrice):
        return _Entry(rates=_compile_prices(prices))
    return _Entry(rates=None, conditional=tuple((c.constraint, _compile_prices(c.prices)) for c in prices))


def _compile_prices(model_price: Any) -> _Rates:
    """Compile one genai-prices `ModelPrice` into float rates and leaf formulas."""
    priced = _priced_units(model_price)
    thresholds = sorted(
        {tier.start for _, price in priced if not isinstance(price, Decimal) for tier in price.tiers}
    )
    leaves = _leaf_forms([unit for unit, _ in priced])
    terms = []
    for unit, price in priced:
        coefs, constant = leaves[unit.usage_key]
        if not coefs and not constant:
            continue  # a unit spans never report (web searches, audio, ...): always zero here
        rates = tuple(_rate_in_regime(price, thresholds, k) / unit.per for k in range(len(thresholds) + 1))
        terms.append(_Term(coefs=coefs, constant=constant, rates=rates))
    return _Rates(thresholds=tuple(thresholds), terms=tuple(terms))


def _priced_units(model_price: Any) -> list[tuple[Any, Any]]:
    """(unit definition, Decimal or TieredPrices) for every price key this model sets."""
    registry = _registry()
    priced = []
    for key, value in vars(model_price).items():
        if value is None or key.startswith("_"):
            continue
        try:
            priced.append((registry.unit_for_price_key(key), value))
        except KeyError:
            continue  # a price key newer than this genai-prices; calc_price skips it too (with a warning)
    return priced


def _rate_in_regime(price: Any, thresholds: Sequence[int], regime: int) -> float:
    """The rate genai-prices' `calc_unit_price` applies when `regime` thresholds are exceeded."""
    if isinstance(price, Decimal):
        return float(price)
    applicable = price.base
    for tier in price.tiers:  # sorted ascending; the highest tier below the input count wins
        if regime > 0 and tier.start <= thresholds[regime - 1]:
            applicable = tier.price
    return float(applicable)


def _leaf_forms(units: Sequence[Any]) -> dict[str, tuple[tuple[tuple[int, int], ...], int]]:
    """Leaf count of each priced unit as a linear form of the reported counts.

    Mirrors `genai_prices.decompose.compute_leaf_values`: most specific units first, each unit's
    leaf is its reported value minus the leaves of all priced units below it. A unit we cannot
    report (audio, images, ...) has value 0, as genai-prices infers for unreported usage.
    """
    from genai_prices.decompose import is_descendant_or_self

    ordered = sorted(units, key=lambda u: (-len(u.dimensions), u.usage_key))
    forms: dict[str, list[int]] = {}
    for unit in ordered:
        form = _reported_form(unit.usage_key)
        for other in ordered:
            if other is not unit and is_descendant_or_self(unit, other) and other.usage_key in forms:
                form = [a - b for a, b in zip(form, forms[other.usage_key], strict=True)]
        forms[unit.usage_key] = form
    return {key: (_sparse(form[:-1]), form[-1]) for key, form in forms.items()}


def _reported_form(usage_key: str) -> list[int]:
    """A unit's raw value as coefficients over `_REPORTED_KEYS` plus a trailing constant."""
    form = [0] * (len(_REPORTED_KEYS) + 1)
    if usage_key in _REPORTED_KEYS:
        form[_REPORTED_KEYS.index(usage_key)] = 1
    elif usage_key == "requests":
        form[-1] = 1
    return form


def _sparse(coefs: Sequence[int]) -> tuple[tuple[int, int], ...]:
    return tuple((index, coef) for index, coef in enumerate(coefs) if coef)


_registry_instance: Any = None


def _registry() -> Any:
    """genai-prices' unit registry (dimensions and `per` of every price key), built once."""
    global _registry_instance
    if _registry_instance is None:
        from genai_prices.data_units import unit_data
        from genai_prices.units import UnitRegistry

        _registry_instance = UnitRegistry(unit_data)
    return _registry_instance


_default: PriceBook | None = None
_default_lock = threading.Lock()


def default_price_book() -> PriceBook:
    """The process-wide price book, so every instrumentation and the collector share one cache."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = PriceBook()
    return _default

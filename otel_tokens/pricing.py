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
  call time, never frozen in the cache: the rates they select are kept only until the next instant
  one of the model's constraints can change (`_UntilNextChange`), then selected again.
- Price variants selected by the response's service tier (OpenAI's `flex` at half price,
  `priority` at double) are applied as genai-prices' `price_context={"service_tier": tier}` does:
  only for a model of the provider's own list, with each variant's start date checked at call
  time. A tier without a variant (or no tier) is the standard price.
- A batch of records (the collector's) is priced through a `PriceTable`: the rates of each price key
  resolved once and kept until one of them may change, checked once per batch, so a record costs a
  dict lookup and the generated function (or its C twin in the compiled record build).
- Cache writes with Anthropic's 1-hour TTL are a *subset* of cache writes
  (`TokenCounts.cache_write_1h`), reported to genai-prices as `cache_write_1h_tokens`: on a model
  with a `cache_write_1h_mtok` price they leave the 5-minute bucket and bill at the 1-hour rate; on
  one without, they stay at the write rate.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Protocol, cast

from otel_tokens._safety import swallow_internal_errors
from otel_tokens.record import TokenCounts

__all__ = ["PriceBook", "PriceKey", "PriceTable", "PricingUnavailable", "default_price_book"]

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
    "cache_write_1h_tokens",
)
#: The one request-context key we know per call (genai-prices' `price_context`).
_SERVICE_TIER = "service_tier"
#: Tier variants compiled per model: (tier, which constraints are active) is a handful of keys,
#: but a model's variants come from the price data, so the cache is bounded anyway.
_MAX_TIER_RATES = 64
_DEFAULT_MAX_MODELS = 4096


@dataclass(frozen=True, slots=True)
class _Term:
    """One priced unit: its leaf count as a linear form of the reported counts, and its per-token
    rate in each tier regime."""

    coefs: tuple[tuple[int, int], ...]  # (index into the reported vector, coefficient)
    constant: int  # the `requests` unit counts 1 per call
    rates: tuple[float, ...]  # USD per unit, by regime (see _Rates.thresholds)


#: A compiled price function: (input, output, cache_read, cache_write, reasoning, cache_write_1h)
#: → USD, counts in `_REPORTED_KEYS` order.
CostFn = Callable[[int, int, int, int, int, int], float]


@dataclass(frozen=True, slots=True)
class _Rates:
    """One `ModelPrice` compiled to floats. Regime k applies when exactly k tier starts lie strictly
    below the total input tokens, matching genai-prices' `total_input_tokens > tier.start`.

    `fast` is the same arithmetic as `reference_cost`, generated once as straight-line Python (no
    loops over terms and coefficients): it runs on every instrumented call and every collected span.
    """

    thresholds: tuple[int, ...]
    terms: tuple[_Term, ...]
    fast: CostFn = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fast", _generate_cost(self.thresholds, self.terms))

    def estimate_cost(self, input_tokens: int, output_tokens: int) -> float:
        """`cost` of the vector (input_tokens, output_tokens, 0, 0, 0, 0): a budget guard's
        pre-flight estimate has no cache or reasoning split. The same generated function, so the
        same float as the call's cost once it reports those counts."""
        return self.fast(input_tokens, output_tokens, 0, 0, 0, 0)

    def cost(self, counts: Sequence[int]) -> float:
        return self.fast(*counts)

    def reference_cost(self, counts: Sequence[int]) -> float:
        """The definition `fast` is generated from (a test holds them bit-equal)."""
        regime = bisect.bisect_left(self.thresholds, counts[0]) if self.thresholds else 0
        total = 0.0
        for term in self.terms:
            leaf = term.constant
            for index, coef in term.coefs:
                leaf += coef * counts[index]
            if leaf > 0:  # genai-prices rejects negative leaves (bad usage); we bill them as zero
                total += term.rates[regime] * leaf
        return total


_COUNT_ARGS = ("c0", "c1", "c2", "c3", "c4", "c5")  # one per `_REPORTED_KEYS` entry


def _generate_cost(thresholds: tuple[int, ...], terms: tuple[_Term, ...]) -> CostFn:
    """`_Rates.reference_cost` unrolled for one price set, as `dataclasses` generates `__init__`:
    the same integer leaves and the same float operations in the same order, so the result is
    bit-identical. Counts below zero (impossible, but spans come from outsiders) count as zero.
    Only integers and fixed names go into the source; the rates are bound by name."""
    lines = [f"def cost({', '.join(_COUNT_ARGS)}):"]
    used = sorted({index for term in terms for index, _ in term.coefs})
    lines += [f"    if c{i} < 0: c{i} = 0" for i in used]
    if thresholds:
        lines.append("    regime = _bisect(_thresholds, c0)")
    lines.append("    total = 0.0")
    namespace: dict[str, Any] = {"_bisect": bisect.bisect_left, "_thresholds": thresholds}
    for n, term in enumerate(terms):
        lines.append(f"    leaf = {_linear_source(term)}")
        if thresholds:
            lines.append(f"    if leaf > 0: total += _rates{n}[regime] * leaf")
            namespace[f"_rates{n}"] = term.rates
        else:  # one regime: the rate itself, no indexing
            lines.append(f"    if leaf > 0: total += _rate{n} * leaf")
            namespace[f"_rate{n}"] = term.rates[0]
    lines.append("    return total")
    exec("\n".join(lines), namespace)  # the source holds only integers and fixed names
    return cast("CostFn", namespace["cost"])


def _linear_source(term: _Term) -> str:
    """A term's leaf count as a Python expression over the count arguments (integers: exact)."""
    source = str(int(term.constant)) if term.constant else ""
    for index, coef in term.coefs:
        sign, magnitude = ("-" if coef < 0 else "+"), abs(int(coef))
        factor = f"c{int(index)}" if magnitude == 1 else f"{magnitude} * c{int(index)}"
        source = f"{source} {sign} {factor}" if source else (f"-{factor}" if coef < 0 else factor)
    return source or "0"


class _Constraint(Protocol):
    """genai-prices' StartDateConstraint / TimeOfDateConstraint."""

    def active(self, request_timestamp: datetime) -> bool: ...


@dataclass(frozen=True, slots=True)
class _Entry:
    """Everything needed to price one (provider, model): either a single price set (almost all
    models) or genai-prices' conditional prices, which depend on when the call happens; plus the
    model's service-tier variants, if it has any."""

    rates: _Rates | None
    conditional: tuple[tuple[_Constraint | None, _Rates], ...] = ()
    tiers: Mapping[str, _TierPrices] = field(default_factory=dict)
    _dated: _UntilNextChange | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.rates is None:
            constraints = [c for c, _ in self.conditional if c is not None]
            object.__setattr__(self, "_dated", _UntilNextChange(constraints, self._select))

    def rates_now(self) -> _Rates:
        if self.rates is not None:
            return self.rates
        return cast("_UntilNextChange", self._dated).rates()

    def rates_until(self, service_tier: str | None) -> tuple[_Rates, float]:
        """The rates `strict_cost_usd` prices a call answered in `service_tier` with now, and the
        epoch second until which that choice holds (inf: until the price data is replaced)."""
        if service_tier is not None and service_tier in self.tiers:
            return self.tiers[service_tier].rates_until()
        if self.rates is not None:
            return self.rates, math.inf
        return cast("_UntilNextChange", self._dated).rates_until()

    def _select(self, now: datetime) -> _Rates:
        # Same rule as genai-prices' ModelInfo.get_prices: the last active price wins; if none is
        # active, the first one applies.
        for constraint, rates in reversed(self.conditional):
            if constraint is None or constraint.active(now):
                return rates
        return self.conditional[0][1]

    def rates_for(self, service_tier: str | None) -> _Rates:
        """The rates of a call answered in `service_tier` (None, or a tier without a variant: the
        standard rates)."""
        if service_tier is not None and self.tiers:
            tier = self.tiers.get(service_tier)
            if tier is not None:
                return tier.rates_now()
        return self.rates_now()


class _TierPrices:
    """One service tier's prices for one model: genai-prices' `get_prices(now, price_context)`,
    compiled once per combination of active date constraints (variants start on a date, so which
    apply changes over time; the combination is a few booleans, re-checked when one can change)."""

    __slots__ = ("_compiled", "_constraints", "_dated", "_model_info", "_tier")

    def __init__(self, model_info: Any, tier: str, constraints: Sequence[_Constraint]) -> None:
        self._model_info = model_info
        self._tier = tier
        self._constraints = tuple(constraints)
        self._compiled: dict[tuple[bool, ...], _Rates] = {}
        self._dated = _UntilNextChange(self._constraints, self._select)

    def rates_now(self) -> _Rates:
        return self._dated.rates()

    def rates_until(self) -> tuple[_Rates, float]:
        return self._dated.rates_until()

    def _select(self, now: datetime) -> _Rates:
        active = tuple(c.active(now) for c in self._constraints)
        try:
            return self._compiled[active]  # lock-free read: a dict lookup is atomic
        except KeyError:
            pass
        rates = _compile_prices(self._model_info.get_prices(now, {_SERVICE_TIER: self._tier}))
        if len(self._compiled) < _MAX_TIER_RATES:
            self._compiled[active] = rates
        return rates


class _UntilNextChange:
    """The rates date constraints select, kept from the instant they were selected until the next
    instant any of the constraints can change its answer (a start date's UTC midnight, a time of
    day's start or end). Between two such instants every constraint answers the same, so the
    selection is the same as evaluating them per call — which cost a `datetime.now()` and one
    `active()` per constraint on every priced span. A constraint of a kind not known here is never
    cached past the call. Thread-safe: the memo is one tuple, replaced whole."""

    __slots__ = ("_constraints", "_memo", "_select")

    def __init__(self, constraints: Sequence[object], select: Callable[[datetime], _Rates]) -> None:
        self._constraints = tuple(constraints)
        self._select = select
        self._memo: tuple[_Rates, float, float] | None = None  # (rates, valid from, valid until)

    def rates(self) -> _Rates:
        memo = self._memo  # `rates_until()[0]`, inline: this runs per priced call
        if memo is not None and memo[1] <= time.time() < memo[2]:
            return memo[0]
        return self.rates_until()[0]

    def rates_until(self) -> tuple[_Rates, float]:
        """The rates selected now, and the instant until which they stay selected."""
        memo = self._memo
        if memo is not None and memo[1] <= time.time() < memo[2]:
            return memo[0], memo[2]
        now = datetime.now(tz=timezone.utc)
        rates = self._select(now)
        until = _next_change(self._constraints, now)
        self._memo = (rates, now.timestamp(), until)
        return rates, until


def _next_change(constraints: Sequence[object], now: datetime) -> float:
    """The first instant after `now` (epoch seconds) at which one of `constraints` may answer
    differently than at `now`; `now` itself for a constraint kind not known here (no caching)."""
    from genai_prices.types import StartDateConstraint, TimeOfDateConstraint

    until = math.inf
    for constraint in constraints:
        if isinstance(constraint, StartDateConstraint):
            starts = _utc_midnight(constraint.start_date)
            if starts > now:
                until = min(until, starts.timestamp())
        elif isinstance(constraint, TimeOfDateConstraint):
            for at in (constraint.start_time, constraint.end_time):
                until = min(until, _next_time_of_day(at, now).timestamp())
        else:
            return now.timestamp()
    return until


def _utc_midnight(day: date) -> datetime:
    """Where genai-prices' StartDateConstraint turns active: it compares the request's UTC date."""
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)


def _next_time_of_day(at: Any, now: datetime) -> datetime:
    """The first instant after `now` whose UTC time of day is `at` (naive: UTC, as genai-prices
    reads it). Every moment of the day is covered, including offsets that cross midnight."""
    aware = at if at.tzinfo is not None else at.replace(tzinfo=timezone.utc)
    today = datetime.combine(now.date(), aware).astimezone(timezone.utc)
    # the UTC day of `now` can differ from the day `combine` assumed: step to the first one after
    while today <= now:
        today += timedelta(days=1)
    while today - timedelta(days=1) > now:
        today -= timedelta(days=1)
    return today


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

    def cost_usd(
        self, provider: str, model: str, tokens: TokenCounts, service_tier: str | None = None
    ) -> float | None:
        """USD cost of a call, or None when genai-prices knows no price for the model (or pricing
        failed: logged once, never raised).

        `service_tier` is the tier the provider says it served the call in (OpenAI's response
        `service_tier`); a tier genai-prices has no variant for costs the standard price.
        """
        try:
            return self.strict_cost_usd(provider, model, tokens, service_tier)
        except Exception:
            # Re-raised inside the shared policy so it is logged once (or raised under tests); the
            # context manager itself stays off the hot path, where it would cost a third of the call.
            with swallow_internal_errors("pricing.cost_usd"):
                raise
            return None

    def strict_cost_usd(
        self, provider: str, model: str, tokens: TokenCounts, service_tier: str | None = None
    ) -> float | None:
        """`cost_usd` that raises on an internal error instead of logging it, for callers that
        mark the record as unpriced-by-failure themselves (an unknown model is still None)."""
        # The cached entry read inline (what `_entry` does, minus two calls: this runs per call).
        if self._snapshots.get_snapshot() is self._snapshot:
            try:
                entry = self._entries[(provider, model)]
            except KeyError:
                entry = self._entry(provider, model)
        else:
            entry = self._entry(provider, model)
        if entry is None:
            return None
        rates = entry.rates  # the common case: one price set, and no tier variant for this call
        if rates is None or (service_tier is not None and service_tier in entry.tiers):
            rates = entry.rates_for(service_tier)
        return rates.fast(
            tokens.input,
            tokens.output,
            tokens.cache_read,
            tokens.cache_write,
            tokens.reasoning,
            tokens.cache_write_1h,
        )

    def estimate_cost_usd(
        self, provider: str, model: str, input_tokens: int, output_tokens: int
    ) -> float | None:
        """`cost_usd(provider, model, TokenCounts(input=input_tokens, output=output_tokens))` (the
        same float; counts at least 0), for the budget guard, which prices its estimate of every
        call before sending it: no `TokenCounts`, and only the terms such a call has. Standard
        rates (the service tier is not known before the call)."""
        try:
            entry: _Entry | None = None
            try:
                if self._snapshots.get_snapshot() is self._snapshot:
                    entry = self._entries[(provider, model)]  # lock-free read, as in strict_cost_usd
                else:
                    entry = self._entry(provider, model)
            except KeyError:
                entry = self._entry(provider, model)
            if entry is None:
                return None
            return (entry.rates or entry.rates_now()).estimate_cost(input_tokens, output_tokens)
        except Exception:
            with swallow_internal_errors("pricing.estimate_cost_usd"):
                raise
            return None

    def rates_until(
        self, provider: str, model: str, service_tier: str | None = None
    ) -> tuple[_Rates | None, float]:
        """The rates `strict_cost_usd` prices a call with now (None: no price known for the model),
        and the epoch second until which that choice holds (inf: as long as the price data stays,
        see `data_version`). Raises on an internal error, as `strict_cost_usd` does."""
        entry = self._entry(provider, model)
        if entry is None:
            return None, math.inf
        return entry.rates_until(service_tier)

    def data_version(self) -> object:
        """The price data in use: a new object once genai-prices' updater replaced it."""
        return self._snapshots.get_snapshot()

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


def _resolve(provider: str, model: str) -> _Entry | None:
    """Find the model through genai-prices' own matching (aliases, dated snapshots, provider
    fallbacks) and compile its prices. None when no provider knows the model."""
    from genai_prices import Usage, calc_price

    provider_id = PROVIDER_IDS.get(provider.strip().lower())
    for candidate in (provider_id, None) if provider_id else (None,):
        try:
            found = calc_price(Usage(), model, provider_id=candidate)
        except LookupError:
            continue  # e.g. an OpenAI-compatible gateway serving another vendor's model
        # genai-prices applies a price context only to a model of the provider's own list (not
        # to one it fell back to from another provider)
        own = any(m is found.model for m in found.provider.models)
        return _compile_model(found.model, with_tiers=own)
    return None


def _compile_model(model_info: Any, with_tiers: bool = True) -> _Entry:
    from genai_prices.types import ModelPrice

    prices = model_info.prices
    tiers = _tier_prices(model_info) if with_tiers else {}
    if isinstance(prices, ModelPrice):
        return _Entry(rates=_compile_prices(prices), tiers=tiers)
    conditional = tuple((c.constraint, _compile_prices(c.prices)) for c in prices)
    return _Entry(rates=None, conditional=conditional, tiers=tiers)


def _tier_prices(model_info: Any) -> dict[str, _TierPrices]:
    """A `_TierPrices` for every service tier one of the model's variants is selected by alone
    (variants keyed on other context, e.g. batch processing, never match a tier-only context).
    A variant that changes no price (OpenAI's `default` tier) is left out: standard rates apply."""
    tiers: dict[str, _TierPrices] = {}
    variants = model_info.price_variants or ()
    for variant in variants:
        tier = variant.when.get(_SERVICE_TIER)
        if tier is None or set(variant.when) != {_SERVICE_TIER} or tier in tiers:
            continue
        if all(v is None for k, v in vars(variant.prices).items() if not k.startswith("_")):
            continue
        constraints = [c.constraint for c in _conditional(model_info) if c.constraint is not None]
        constraints += [v.constraint for v in variants if v.constraint is not None]
        tiers[tier] = _TierPrices(model_info, tier, constraints)
    return tiers


def _conditional(model_info: Any) -> Sequence[Any]:
    from genai_prices.types import ModelPrice

    return () if isinstance(model_info.prices, ModelPrice) else model_info.prices


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


#: A record's price key: (provider, request model, response model, service tier), its fields.
PriceKey = tuple[str, str, "str | None", "str | None"]


class PriceTable:
    """Prices a batch of records with one dict lookup each: the rates of every (provider, request
    model, response model, service tier) seen, resolved once through the price book as
    `extract._price` picks them (the response model first, else the request model), and kept until
    one of them may change (a dated price's next change, or new price data) — `refresh()`, once per
    batch, checks both, so a batch is priced at the instant it is refreshed.

    `compile` (the compiled build's, accelerator.py) turns rates into the form the C record build
    prices with; `compiled` holds those, for the keys it could compile. Keys come from outsiders, so
    both are bounded (past `max_entries` they start over). Thread-safe: lookups read a dict that is
    replaced whole, never cleared in place; learning is locked.
    """

    def __init__(
        self,
        book: PriceBook,
        compile: Callable[[_Rates], object | None] | None = None,
        max_entries: int = _DEFAULT_MAX_MODELS,
    ) -> None:
        self._book = book
        self._compile = compile
        self._max_entries = max_entries
        self._lock = threading.Lock()
        self.rates: dict[PriceKey, _Rates | None] = {}
        self.compiled: dict[PriceKey, object] = {}
        self._until = -math.inf  # the first refresh starts the table
        self._version: object = None

    def refresh(self) -> None:
        """Forget the rates if any may have changed since they were resolved."""
        if time.time() < self._until and self._book.data_version() is self._version:
            return
        with self._lock:
            self._version = self._book.data_version()  # before resolving: a newer one forgets again
            self._until = math.inf
            self.rates, self.compiled = {}, {}

    def learn(self, key: PriceKey) -> _Rates | None:
        """The rates of `key` now (None: neither model has a price), resolved and kept. Raises on an
        internal error (the caller then prices the record the slow way, which reports it)."""
        provider, request_model, response_model, tier = key
        version = self._version  # a refresh meanwhile (new price data): not kept
        rates, until = None, math.inf
        if response_model and response_model != request_model:
            rates, until = self._book.rates_until(provider, response_model, tier)
        if rates is None:
            rates, until = self._book.rates_until(provider, request_model, tier)
        compiled = self._compile(rates) if rates is not None and self._compile is not None else None
        with self._lock:
            if version is not self._version:
                return rates
            if len(self.rates) >= self._max_entries:
                self.rates, self.compiled = {}, {}
            self.rates[key] = rates
            if compiled is not None:
                self.compiled[key] = compiled
            self._until = min(self._until, until)
        return rates


class PricingUnavailable(RuntimeError):
    """genai-prices could not be loaded in this process: no call can be priced."""


_default: PriceBook | None = None
_default_error: str | None = None  # why genai-prices could not be loaded
_default_lock = threading.Lock()


def default_price_book() -> PriceBook:
    """The process-wide price book, so every instrumentation and the collector share one cache.

    Raises `PricingUnavailable` when genai-prices cannot be imported; the failure is remembered, so
    an environment without it pays for one failed import, not one per call.
    """
    global _default, _default_error
    if _default is None:
        with _default_lock:
            if _default_error is not None:  # a fresh exception: a re-raised one grows its traceback
                raise PricingUnavailable(_default_error)
            if _default is None:
                try:
                    _default = PriceBook()
                except Exception as exc:
                    _default_error = f"genai-prices cannot be loaded: {exc!r}"
                    raise PricingUnavailable(_default_error) from exc
    return _default

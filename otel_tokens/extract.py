"""Span → UsageRecord, for every dialect of GenAI usage attributes we know.

The dialect table (`_DIALECTS`: one slot per thing we read, its attribute names best first) and the
logic over it (`record_from_slots`) are written once; two thin adapters fill the slots: OTLP
protobuf spans (the collector) and SDK `ReadableSpan`s (the in-process processor), and
`record_from_attributes` takes any plain mapping. Converting every attribute of every protobuf span
costs several times the decode itself, so the OTLP adapter makes one pass over the keys (a dict
lookup each) and converts only the values of the attributes we read, from the AnyValue field the
table expects them in.

Normalisation: records keep the semconv meaning (input includes cache read and write). Ours, the
anthropic SDK's own spans, the official OpenAI instrumentation, current OpenLLMetry and
OpenInference already report it that way; an Anthropic-style raw input (excluding cache) is
recognised when it is smaller than the cache tokens, or when a reported total only adds up with
the cache added, and is then normalised.

Agent attribution: the span's own (`gen_ai.agent.name` and the other dialects'), else an ancestor
`invoke_agent` span's (resolved by the pipeline, `ancestry.py`; `scan_*` below give it the links),
else the resource's `gen_ai.agent.name`, else the resource's `agent_fallback_attribute`
(`service.name` by default; the SDK's made-up `unknown_service...` never counts). A record whose
agent is only the resource's says so (`agent_from_resource`), so an ancestor can still name it.

Malformed values never raise: the span becomes a `Rejection` with a bounded reason.

Hostile numbers: every count is bounded (`MAX_TOKENS`), and so is a call's total (input + output,
the semconv totals that include cache and reasoning) by `max_tokens_per_call`, configurable,
default `DEFAULT_MAX_TOKENS_PER_CALL`: a record above it is rejected as `token_count_too_large`.
Counts that contradict themselves are made consistent and counted in `ExtractStats` (exposed as
`otel_tokens_records_clamped_total{reason}`) rather than rejected, because each has an honest
reading that loses nothing a provider billed: a part larger than its whole means the whole was
reported without the part, so the whole is raised to include it — cache tokens above input
(Anthropic's raw `input_tokens`, the long-standing rule) and reasoning above output (a dialect
that counts thoughts apart from the answer). Afterwards cache read + write <= input and reasoning
<= output always hold; the per-call ceiling bounds what a sender can add this way. The 1-hour
cache-write split only selects a rate, so above the cache writes it is cut down to them.

One kind of span without usage is not skipped: the task span an `attribute(task_id=...)` scope opens
(marked `otel_tokens.task.scope`) becomes a `TaskCompletion`, so the aggregator can observe the
instance's total. The marker is one more slot in the table, so a span with neither usage nor the
marker is skipped exactly as cheaply as before.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry.trace import StatusCode

from otel_tokens import semconv as sc
from otel_tokens._safety import swallow_internal_errors
from otel_tokens.accelerator import LinksWalk, ScanResult, links_walk, rates_compiler, record_builder, scanner
from otel_tokens.ancestry import Links, Scope, Scopes
from otel_tokens.extract_stats import (
    CACHE_EXCEEDS_INPUT,
    CACHE_WRITE_1H_EXCEEDS_CACHE_WRITE,
    REASONING_EXCEEDS_OUTPUT,
    ExtractStats,
)
from otel_tokens.record import (
    ATTRIBUTION_FIELDS,
    Attribution,
    TaskCompletion,
    TokenCounts,
    UsageRecord,
    Verdict,
)

if TYPE_CHECKING:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.sdk.trace import ReadableSpan

    from otel_tokens.pricing import PriceTable

__all__ = [
    "Extractor",
    "PriceFn",
    "Rejection",
    "record_from_attributes",
    "record_from_slots",
]

#: (provider, model, tokens[, service_tier]) → USD, or None for a model without a known price. The
#: service tier is passed only when the span carries one, so a 3-argument function still works.
PriceFn = Callable[..., "float | None"]

MAX_TOKENS = 10**9  # more than any context window by far: a larger count is a bug or an attack
#: The default ceiling on one call's input + output tokens: five times the largest context window
#: on sale (2M input + 128k output), so no genuine call comes near it; configurable per Extractor.
DEFAULT_MAX_TOKENS_PER_CALL = 10_000_000
MAX_COST_USD = 1e6
MAX_LABEL = 128
_OTLP_STATUS_ERROR = 2  # opentelemetry.proto.trace.v1.Status.STATUS_CODE_ERROR
_TL = sc.OPENLLMETRY_ASSOCIATION_PREFIX

# --- the dialect table: one slot per thing we read, its attribute names best first ---------------
(IN, OUT, CACHE_READ, CACHE_WRITE, REASONING, TOTAL) = range(6)
(REQUEST_MODEL, RESPONSE_MODEL, PROVIDER, OPERATION) = range(6, 10)
(AGENT, TASK, TASK_ID, USER, SESSION, STEP, WORKFLOW) = range(10, 17)  # Attribution's field order
(COST, ESTIMATED, MARKER, ERROR_TYPE, TASK_SCOPE) = range(17, 22)
(CACHE_WRITE_1H, SERVICE_TIER, ENRICHMENT_FAILED) = range(22, 25)
(VERIFY_PASSED, VERIFY_CHECK) = range(25, 27)
_N_SLOTS = 27
_NO_RANK = 99

_DIALECTS: tuple[tuple[str, ...], ...] = (
    (sc.GEN_AI_USAGE_INPUT_TOKENS, sc.OPENLLMETRY_PROMPT_TOKENS, sc.OPENINFERENCE_PROMPT_TOKENS),
    (sc.GEN_AI_USAGE_OUTPUT_TOKENS, sc.OPENLLMETRY_COMPLETION_TOKENS, sc.OPENINFERENCE_COMPLETION_TOKENS),
    (
        sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS,
        sc.OPENLLMETRY_CACHE_READ_INPUT_TOKENS,
        sc.OPENINFERENCE_CACHE_READ,
    ),
    (
        sc.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS,
        sc.GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS,
        sc.OPENLLMETRY_CACHE_CREATION_INPUT_TOKENS,
        sc.OPENINFERENCE_CACHE_WRITE,
    ),
    (sc.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS, sc.OPENINFERENCE_REASONING),
    (sc.OPENLLMETRY_TOTAL_TOKENS, sc.OPENINFERENCE_TOTAL_TOKENS),
    (sc.GEN_AI_REQUEST_MODEL, sc.OPENINFERENCE_MODEL_NAME),  # then the response model
    (sc.GEN_AI_RESPONSE_MODEL,),
    (sc.GEN_AI_PROVIDER_NAME, sc.GEN_AI_SYSTEM, sc.OPENINFERENCE_PROVIDER, sc.OPENINFERENCE_SYSTEM),
    (sc.GEN_AI_OPERATION_NAME, sc.OPENLLMETRY_REQUEST_TYPE),
    # attribution: ours first, then other dialects' nearest equivalents. `service.name` is absent on
    # purpose: a service is not an agent, only the last resort (`agent_fallback_attribute`).
    (sc.GEN_AI_AGENT_NAME, sc.GEN_AI_AGENT_ID, _TL + "agent_name", _TL + "agent"),
    (sc.OTEL_TOKENS_TASK, _TL + "task_name", _TL + "task"),
    (sc.OTEL_TOKENS_TASK_ID, _TL + "task_id"),
    (sc.OTEL_TOKENS_USER, sc.USER_ID, _TL + "user_id"),
    (sc.GEN_AI_CONVERSATION_ID, sc.SESSION_ID, _TL + "session_id", _TL + "conversation_id"),
    (sc.OTEL_TOKENS_STEP,),
    (sc.GEN_AI_WORKFLOW_NAME, sc.OPENLLMETRY_WORKFLOW_NAME, _TL + "workflow_name", _TL + "workflow"),
    (sc.OTEL_TOKENS_COST_USD,),
    (sc.OTEL_TOKENS_ESTIMATED,),
    (sc.OTEL_TOKENS_MARKER,),
    (sc.ERROR_TYPE,),
    (sc.OTEL_TOKENS_TASK_SCOPE,),
    (sc.OTEL_TOKENS_CACHE_WRITE_1H,),
    (sc.OPENAI_RESPONSE_SERVICE_TIER, sc.GEN_AI_OPENAI_RESPONSE_SERVICE_TIER),
    (sc.OTEL_TOKENS_ENRICHMENT_FAILED,),
    (sc.OTEL_TOKENS_VERIFY_PASSED,),
    (sc.OTEL_TOKENS_VERIFY_CHECK,),
)
assert len(_DIALECTS) == _N_SLOTS

#: attribute name → (slot, rank); rank 0 is the preferred name for that slot.
SLOT_OF: dict[str, tuple[int, int]] = {
    key: (slot, rank) for slot, keys in enumerate(_DIALECTS) for rank, key in enumerate(keys)
}
_ATTRIBUTION_KEYS: frozenset[str] = frozenset(k for keys in _DIALECTS[AGENT : WORKFLOW + 1] for k in keys)

_Slots = list[Any]  # one value per slot (None: absent)

#: The AnyValue field each slot normally arrives in (one attribute read instead of WhichOneof).
_EXPECTED_FIELD: tuple[str, ...] = (
    ("int_value",) * 6
    + ("string_value",) * 11
    + ("double_value", "bool_value", "bool_value", "string_value", "bool_value")
    + ("int_value", "string_value", "array_value")
    + ("bool_value", "string_value")
)
assert len(_EXPECTED_FIELD) == _N_SLOTS
#: attribute name → (slot, rank, the AnyValue field it normally arrives in): the OTLP walk's table.
_OTLP_ENTRY: dict[str, tuple[int, int, str]] = {
    key: (slot, rank, _EXPECTED_FIELD[slot]) for key, (slot, rank) in SLOT_OF.items()
}
_resource_values = attrgetter(*ATTRIBUTION_FIELDS)  # an Attribution's fields as one tuple

# What the compiled walk (accelerator.py) is configured with: the same table, read by the same rules.
OTLP_ENTRIES = _OTLP_ENTRY
N_SLOTS, NO_RANK = _N_SLOTS, _NO_RANK
#: a span with one of these is read; TASK_SCOPE only if True, VERIFY_PASSED only if a bool
USAGE_SLOTS = (IN, OUT, TOTAL, TASK_SCOPE, VERIFY_PASSED)
ATTRIBUTION_SLOTS = frozenset(range(AGENT, WORKFLOW + 1))
#: the slots `_record` reads as labels: the compiled walk hands them over already made labels
LABEL_SLOTS = frozenset(range(REQUEST_MODEL, WORKFLOW + 1))


class Rejection:
    """Why a usage span was not counted: a bounded `reason` (a metric label) and a free `detail`."""

    __slots__ = ("detail", "reason")

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail

    def message(self) -> str:
        return f"{self.reason}: {self.detail}"

    def __repr__(self) -> str:
        return f"Rejection({self.reason!r}, {self.detail!r})"


Outcome = UsageRecord | Rejection | TaskCompletion | Verdict | None


class _Batch(Protocol):
    spans_received: int
    records: list[UsageRecord]

    def add(self, outcome: Outcome) -> None: ...


_book_cost: PriceFn | None = None  # the process-wide price book's strict_cost_usd, once it loaded


def _default_price(
    provider: str, model: str, tokens: TokenCounts, service_tier: str | None = None
) -> float | None:
    """genai-prices' price; raises on our own error (genai-prices missing), which `_price` logs once
    and marks on the record, unlike an unknown model (None). The price book is looked up once (it
    is a singleton), not per span; while it cannot load, every call tries again and raises."""
    global _book_cost
    cost = _book_cost
    if cost is None:
        from otel_tokens.pricing import default_price_book  # owned elsewhere; loaded on first use

        cost = _book_cost = default_price_book().strict_cost_usd
    return cost(provider, model, tokens, service_tier)


def _label(value: object) -> str | None:
    if type(value) is str:
        return value[:MAX_LABEL] or None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)[:MAX_LABEL]
    return None


def _labels(values: Iterable[object]) -> list[str | None]:
    """`_label` of each value, with the common cases (absent, a string) inline: this is per span."""
    return [None if v is None else (v[:MAX_LABEL] or None) if type(v) is str else _label(v) for v in values]


def _malformed(reason: str, slot: int, ranks: Sequence[int], value: object) -> Rejection:
    key = _DIALECTS[slot][ranks[slot]] if ranks[slot] != _NO_RANK else f"slot {slot}"
    return Rejection(reason, f"{key}={str(value)[:64]!r}")


def _token_count(vals: _Slots, ranks: Sequence[int], slot: int) -> int | Rejection:
    value = vals[slot]
    if type(value) is int and 0 <= value <= MAX_TOKENS:
        return value  # the fast path: everything else is rare
    if value is None:
        return 0
    if type(value) is float and value.is_integer():
        value = int(value)
    if type(value) is not int:
        return _malformed("invalid_token_value", slot, ranks, value)
    if value < 0:
        return _malformed("negative_token_count", slot, ranks, value)
    if value > MAX_TOKENS:
        return _malformed("token_count_too_large", slot, ranks, value)
    return value


def tokens_from(
    vals: _Slots, ranks: Sequence[int], stats: ExtractStats | None = None
) -> TokenCounts | Rejection:
    """Token counts in semconv meaning, whichever dialect reported them; self-contradicting counts
    made consistent (and counted in `stats`), see the module docstring."""
    counts = vals[IN : TOTAL + 1]  # the token slots are 0..5
    inp, out, cache_read, cache_write, reasoning, total = counts
    if (  # the common case judged at once: plain counts, no total, nothing to make consistent
        type(inp) is int
        and type(out) is int
        and total is None
        and vals[CACHE_WRITE_1H] is None
        and MAX_TOKENS >= inp >= 0
        and MAX_TOKENS >= out >= 0
    ):
        cache_read = 0 if cache_read is None else cache_read
        cache_write = 0 if cache_write is None else cache_write
        reasoning = 0 if reasoning is None else reasoning
        if (
            type(cache_read) is int
            and type(cache_write) is int
            and type(reasoning) is int
            and cache_read >= 0
            and cache_write >= 0
            and inp >= cache_read + cache_write
            and out >= reasoning >= 0
        ):
            return TokenCounts(inp, out, cache_read, cache_write, reasoning)
    for slot, value in enumerate(counts):
        if type(value) is int and 0 <= value <= MAX_TOKENS:
            continue  # the common case, judged in one line
        if value is None:
            counts[slot] = 0
        else:  # rare: let _token_count judge
            count = _token_count(vals, ranks, slot)
            if type(count) is Rejection:
                return count
            counts[slot] = count
    inp, out, cache_read, cache_write, reasoning, total = counts  # ints now (vals holds Any)
    if vals[IN] is None and vals[OUT] is None:
        inp = total  # only a total: the best split we have puts it all on input
    cached = cache_read + cache_write
    if cached and (inp < cached or (vals[TOTAL] is not None and total == inp + out + cached)):
        if inp < cached and stats is not None:
            stats.clamped(CACHE_EXCEEDS_INPUT)
        inp += cached  # Anthropic's raw input_tokens, which excludes cache tokens
    if reasoning > out:
        if stats is not None:
            stats.clamped(REASONING_EXCEEDS_OUTPUT)
        out += reasoning  # an output reported without its reasoning tokens
    if vals[CACHE_WRITE_1H] is None:
        return TokenCounts(inp, out, cache_read, cache_write, reasoning)
    one_hour = _token_count(vals, ranks, CACHE_WRITE_1H)
    if type(one_hour) is Rejection:
        return one_hour
    assert isinstance(one_hour, int)
    if one_hour > cache_write:
        if stats is not None:
            stats.clamped(CACHE_WRITE_1H_EXCEEDS_CACHE_WRITE)
        one_hour = cache_write
    return TokenCounts(inp, out, cache_read, cache_write, reasoning, one_hour)


def _consistent(tokens: TokenCounts, stats: ExtractStats) -> TokenCounts:
    """`tokens_from`'s consistency rules over counts already in a TokenCounts; the same object when
    nothing contradicts (the common case)."""
    cached = tokens.cache_read + tokens.cache_write
    if (
        tokens.input >= cached
        and tokens.output >= tokens.reasoning
        and tokens.cache_write_1h <= tokens.cache_write
    ):
        return tokens
    inp, out, one_hour = tokens.input, tokens.output, tokens.cache_write_1h
    if inp < cached:
        stats.clamped(CACHE_EXCEEDS_INPUT)
        inp += cached
    if tokens.reasoning > out:
        stats.clamped(REASONING_EXCEEDS_OUTPUT)
        out += tokens.reasoning
    if one_hour > tokens.cache_write:
        stats.clamped(CACHE_WRITE_1H_EXCEEDS_CACHE_WRITE)
        one_hour = tokens.cache_write
    return TokenCounts(inp, out, tokens.cache_read, tokens.cache_write, tokens.reasoning, one_hour)


def _cost(vals: _Slots, ranks: Sequence[int]) -> float | Rejection | None:
    value = vals[COST]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _malformed("invalid_cost", COST, ranks, value)
    if not math.isfinite(value) or not 0 <= value <= MAX_COST_USD:
        return _malformed("invalid_cost", COST, ranks, value)
    return float(value)


def attribution_from(vals: _Slots) -> Attribution:
    return Attribution(*_labels(vals[AGENT : WORKFLOW + 1]))


def slots_from_mapping(attrs: Mapping[str, object]) -> tuple[_Slots, list[int]]:
    """The attributes we read, one per slot, the best-ranked name winning."""
    vals: _Slots = [None] * _N_SLOTS
    ranks = [_NO_RANK] * _N_SLOTS
    for key, value in attrs.items():
        entry = SLOT_OF.get(key)
        if entry is not None and value is not None and entry[1] < ranks[entry[0]]:
            vals[entry[0]] = value
            ranks[entry[0]] = entry[1]
    return vals, ranks


def _failed_steps(value: object) -> tuple[str, ...]:
    """`otel_tokens.enrichment.failed`: a tuple (SDK spans) or an OTLP ArrayValue of strings. Only
    known step names are kept, so a sender cannot grow anything with it."""
    items = getattr(value, "values", value)
    if not isinstance(items, Iterable) or isinstance(items, (str, bytes)):
        return ()
    steps: list[str] = []
    for item in items:
        step = item if type(item) is str else getattr(item, "string_value", None)
        if step in sc.ENRICHMENT_STEPS and step not in steps:
            steps.append(step)
        if len(steps) == len(sc.ENRICHMENT_STEPS):
            break
    return tuple(steps)


def _has_usage(vals: _Slots) -> bool:
    return vals[IN] is not None or vals[OUT] is not None or vals[TOTAL] is not None


def record_from_attributes(
    attrs: Mapping[str, object],
    *,
    price: PriceFn = _default_price,
    resource: Attribution | None = None,
    scope_ours: bool = False,
    error: bool = False,
    max_tokens_per_call: int = DEFAULT_MAX_TOKENS_PER_CALL,
    stats: ExtractStats | None = None,
) -> UsageRecord | Rejection | None:
    """The dialect logic over a plain mapping: None when the attributes carry no GenAI usage."""
    vals, ranks = slots_from_mapping(attrs)
    if not _has_usage(vals):
        return None
    return record_from_slots(
        vals,
        ranks,
        price=price,
        resource=resource,
        scope_ours=scope_ours,
        error=error,
        max_tokens_per_call=max_tokens_per_call,
        stats=stats,
    )


#: A span's identity for the record: (trace id, span id, parent span id or None, start ns, end ns).
SpanIds = tuple[int, int, "int | None", int, int]
_NO_IDS: SpanIds = (0, 0, None, 0, 0)


def record_from_slots(
    vals: _Slots,
    ranks: Sequence[int],
    *,
    price: PriceFn,
    resource: Attribution | None,
    scope_ours: bool,
    error: bool,
    max_tokens_per_call: int = DEFAULT_MAX_TOKENS_PER_CALL,
    stats: ExtractStats | None = None,
    ids: SpanIds = _NO_IDS,
) -> UsageRecord | Rejection:
    """A UsageRecord (with the adapter's span `ids`) or a Rejection; never raises on bad input."""
    return _record(vals, ranks, price, resource, scope_ours, error, max_tokens_per_call, stats, ids)


def _record(
    vals: _Slots,
    ranks: Sequence[int],
    price: PriceFn,
    resource: Attribution | None,
    scope_ours: bool,
    error: bool,
    max_tokens_per_call: int,
    stats: ExtractStats | None,
    ids: SpanIds,
    labelled: bool = False,
    prices: PriceTable | None = None,
) -> UsageRecord | Rejection:
    """`record_from_slots` with positional arguments (this runs once per usage span): the record
    is built in one constructor call and each check has its common case first (a plain value),
    leaving the rare ones to the helpers. `labelled`: the label slots hold labels already (the
    compiled walk makes them, `LABEL_SLOTS`), so `_labels` (idempotent) is not run again. `prices`:
    the batch's price table, when `price` is the default one (see `_price`)."""
    tokens = tokens_from(vals, ranks, stats)
    if type(tokens) is Rejection:
        return tokens
    assert isinstance(tokens, TokenCounts)
    if tokens.input + tokens.output > max_tokens_per_call:
        total = tokens.input + tokens.output
        return Rejection("token_count_too_large", f"{total} tokens in one call, above {max_tokens_per_call}")
    cost = vals[COST]
    if cost is not None and not (type(cost) is float and 0.0 <= cost <= MAX_COST_USD):  # NaN fails too
        cost = _cost(vals, ranks)
        if type(cost) is Rejection:
            return cost
    assert cost is None or isinstance(cost, float)
    # slots REQUEST_MODEL..WORKFLOW are adjacent: one pass labels them all (this runs per span)
    labels = vals[REQUEST_MODEL : WORKFLOW + 1]
    request_model, response_model, provider, operation, *who = labels if labelled else _labels(labels)
    provider = (provider or "unknown").lower()
    request_model = request_model or response_model or "unknown"
    from_resource = False
    if resource is not None:  # == resource.merged(attribution), without building the inner one
        inherited = _resource_values(resource)
        from_resource = who[0] is None and inherited[0] is not None
        who = [v if v is not None else r for v, r in zip(who, inherited, strict=True)]
    error_type = _label(vals[ERROR_TYPE]) if vals[ERROR_TYPE] is not None else None
    service_tier = _label(vals[SERVICE_TIER]) if vals[SERVICE_TIER] is not None else None
    failed_steps = _failed_steps(vals[ENRICHMENT_FAILED]) if vals[ENRICHMENT_FAILED] is not None else ()
    if failed_steps and stats is not None:
        stats.enrichment_failed(failed_steps)
    if cost is None:
        cost, pricing_failed = _price(
            price, provider, request_model, response_model, tokens, service_tier, prices
        )
        if pricing_failed and sc.ENRICHMENT_PRICING not in failed_steps:
            failed_steps += (sc.ENRICHMENT_PRICING,)
    trace_id, span_id, parent_span_id, start_ns, end_ns = ids
    return UsageRecord(
        provider,
        request_model,
        operation or "chat",
        response_model,
        tokens,
        vals[ESTIMATED] is True,  # estimated
        cost,
        Attribution(*who),
        "error" if error or error_type is not None else "ok",  # status
        error_type,
        trace_id,
        span_id,
        parent_span_id,
        start_ns,
        end_ns,
        scope_ours or vals[MARKER] is True,  # ours
        service_tier,
        failed_steps,
        from_resource,  # agent_from_resource
    )


_UNSEEN: Any = object()  # a price key the table has not resolved yet


def _price(
    price: PriceFn,
    provider: str,
    request_model: str,
    response_model: str | None,
    tokens: TokenCounts,
    service_tier: str | None,
    prices: PriceTable | None = None,
) -> tuple[float | None, bool]:
    """(cost, whether pricing failed). The response model (often a dated snapshot) prices more
    exactly; fall back to the request's. The tier is passed only when the span has one.

    With the batch's price table (`price` is then the default), the rates the price book would pick
    are looked up once per price key, not per record; an internal error resolving them takes the
    way below, which reports it."""
    if prices is not None:
        key = (provider, request_model, response_model, service_tier)
        rates = prices.rates.get(key, _UNSEEN)
        if rates is _UNSEEN:
            try:
                rates = prices.learn(key)
            except Exception:
                rates = _UNSEEN
        if rates is not _UNSEEN:
            if rates is None:
                return None, False
            t = tokens
            return rates.fast(
                t.input, t.output, t.cache_read, t.cache_write, t.reasoning, t.cache_write_1h
            ), False
    if price is _default_price and _book_cost is not None:
        price = _book_cost  # what `_default_price` forwards to once loaded, without its frame
    extra = (service_tier,) if service_tier is not None else ()
    try:
        cost = None
        if response_model and response_model != request_model:
            cost = price(provider, response_model, tokens, *extra)
        if cost is None:
            cost = price(provider, request_model, tokens, *extra)
        return cost, False
    except Exception:
        # the shared policy logs once (or re-raises under tests); a `with` around the happy path
        # would cost more than the cached price lookup itself
        with swallow_internal_errors("extract pricing"):
            raise
        return None, True


def _slots_from_otlp(
    attributes: Any, _entry: Callable[[str], tuple[int, int, str] | None] = _OTLP_ENTRY.get
) -> tuple[_Slots, list[int]] | None:
    """One pass over the keys; only the AnyValues of names we read are converted. A span without
    a name we read allocates nothing (most spans of mixed traffic); `_entry` is bound once, as a
    default, because this loop runs per attribute of every span."""
    vals: _Slots | None = None
    ranks: list[int] = []
    for kv in attributes:
        entry = _entry(kv.key)
        if entry is None:
            continue
        if vals is None:
            vals = [None] * _N_SLOTS
            ranks = [_NO_RANK] * _N_SLOTS
        slot, rank, expected = entry
        if rank < ranks[slot]:
            value = kv.value
            # read the field the slot expects; a zero/empty result may be another kind: ask then
            converted = getattr(value, expected)
            if not converted:
                kind = value.WhichOneof("value")
                converted = getattr(value, kind) if kind is not None else None
            vals[slot] = converted
            ranks[slot] = rank
    # usage is decided on the names present (an empty AnyValue under a usage name still counts)
    if vals is None:
        return None
    if (
        ranks[IN] == ranks[OUT] == ranks[TOTAL] == _NO_RANK
        and vals[TASK_SCOPE] is not True
        and type(vals[VERIFY_PASSED]) is not bool
    ):
        return None
    return vals, ranks


def _completion(
    vals: _Slots, resource: Attribution | None, error: bool, trace_id: int, span_id: int, end_time_ns: int
) -> TaskCompletion | None:
    """A task span's completion event; None without a task id (nothing to complete)."""
    agent, task, task_id = _labels(vals[AGENT : TASK_ID + 1])
    if task_id is None:
        return None
    if resource is not None:
        agent, task = agent or resource.agent, task or resource.task
    return TaskCompletion(
        task_id,
        task,
        agent,
        "error" if error or vals[ERROR_TYPE] is not None else "ok",
        trace_id=trace_id,
        span_id=span_id,
        end_time_ns=end_time_ns,
    )


def _verdict(vals: _Slots, trace_id: int, span_id: int, end_time_ns: int) -> Verdict | None:
    """A verify span's verdict; None without a task id (nothing to join it to)."""
    task_id = _label(vals[TASK_ID]) if vals[TASK_ID] is not None else None
    if task_id is None:
        return None
    check = (_label(vals[VERIFY_CHECK]) if vals[VERIFY_CHECK] is not None else None) or "tests"
    return Verdict(task_id, vals[VERIFY_PASSED] is True, check, trace_id, span_id, end_time_ns)


def _otlp_resource_attribution(attributes: Any, fallback: str | None = None) -> Attribution | None:
    found = {kv.key: kv.value for kv in attributes if kv.key in _ATTRIBUTION_KEYS or kv.key == fallback}
    if not found:
        return None
    return _resource_attribution(
        {k: getattr(v, v.WhichOneof("value") or "string_value") for k, v in found.items()}, fallback
    )


def _resource_attribution(attrs: Mapping[str, object], fallback: str | None = None) -> Attribution | None:
    """Resource-level attribution (an agent deployed as its own service may set
    `gen_ai.agent.name` there, else the `fallback` attribute, normally `service.name`, names it);
    None when there is none, so spans skip the merge."""
    attribution = attribution_from(slots_from_mapping(attrs)[0])
    if attribution.agent is None and fallback is not None:
        agent = _label(attrs.get(fallback))
        if agent is not None and not agent.startswith(sc.UNKNOWN_SERVICE_PREFIX):
            attribution = dataclasses.replace(attribution, agent=agent)
    return attribution if any(v is not None for _, v in attribution.items()) else None


# --- ancestry: the links and agent scopes of the spans of some traces (see ancestry.py) -----------


def _scope(operation: object, agent: object, workflow: object) -> Scope | None:
    """What an `invoke_agent` / `invoke_workflow` span tells its descendants; None for other spans."""
    if operation == sc.OPERATION_INVOKE_AGENT:
        scope = Scope(_label(agent), _label(workflow))
    elif operation == sc.OPERATION_INVOKE_WORKFLOW:
        scope = Scope(None, _label(workflow))
    else:
        return None
    return scope if scope.agent is not None or scope.workflow is not None else None


_SCOPE_KEYS = (sc.GEN_AI_OPERATION_NAME, sc.GEN_AI_AGENT_NAME, sc.GEN_AI_WORKFLOW_NAME)
#: The operations `_scope` reads a scope from; every other span opens none.
_SCOPE_OPERATIONS = frozenset((sc.OPERATION_INVOKE_AGENT, sc.OPERATION_INVOKE_WORKFLOW))


def scan_otlp(
    request: ExportTraceServiceRequest, traces: Container[int], links: Links, scopes: Scopes
) -> None:
    """Add the parent link of every span of `traces` in the request, and the scope of each agent or
    workflow span among them (only traces with records awaiting an ancestor are walked)."""
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                trace_id = int.from_bytes(span.trace_id, "big")
                if trace_id not in traces:
                    continue
                key = (trace_id << 64) | int.from_bytes(span.span_id, "big")
                links[key] = (trace_id << 64) | int.from_bytes(span.parent_span_id, "big")
                values = {kv.key: kv.value.string_value for kv in span.attributes if kv.key in _SCOPE_KEYS}
                if values.get(sc.GEN_AI_OPERATION_NAME):
                    found = _scope(*(values.get(k) or None for k in _SCOPE_KEYS))
                    if found is not None:
                        scopes[key] = found


def scan_otlp_bytes(
    data: bytes, traces: Container[int], links: Links, scopes: Scopes, compiled: LinksWalk | None
) -> None:
    """`scan_otlp` over the serialized request `data` (one the compiled walk accepted): read by the
    compiled `links` walk when there is one and it does not decline, else decoded."""
    # the compiled walk filters by a real set; "every trace" (a collector worker's) is decoded
    found = None
    if compiled is not None and isinstance(traces, set):
        found = compiled(data, traces, _SCOPE_KEYS, _SCOPE_OPERATIONS)
    if found is None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        scan_otlp(ExportTraceServiceRequest.FromString(data), traces, links, scopes)
        return
    found_links, scoped = found
    links.update(found_links)
    # only spans naming one of _SCOPE_OPERATIONS come back (the walk filters them; `_scope` is None
    # for any other operation anyway)
    for key, operation, agent, workflow in scoped:
        # as `kv.value.string_value` reads them: a value of another kind is ""
        scope = _scope(operation, *(v if type(v) is str and v else None for v in (agent, workflow)))
        if scope is not None:
            scopes[key] = scope


def scan_readable(
    spans: Iterable[ReadableSpan], traces: Container[int], links: Links, scopes: Scopes
) -> None:
    """`scan_otlp` for SDK spans (the in-process path)."""
    for span in spans:
        ctx = span.get_span_context()
        if ctx is None or ctx.trace_id not in traces:
            continue
        key = (ctx.trace_id << 64) | ctx.span_id
        links[key] = (ctx.trace_id << 64) | (span.parent.span_id if span.parent is not None else 0)
        attrs = span.attributes or {}
        if attrs.get(sc.GEN_AI_OPERATION_NAME):
            found = _scope(*(attrs.get(k) for k in _SCOPE_KEYS))
            if found is not None:
                scopes[key] = found


class Extractor:
    """Both adapters around `record_from_slots`, with a price function injected.

    `max_tokens_per_call` is the ceiling on one call's input + output tokens (above it the span
    is rejected as `token_count_too_large`); `stats` counts clamped records and enrichment
    failures (one is made when none is given; expose it with `ExtractStatsCollector`);
    `compiled=False` keeps the OTLP walk in Python even when the compiled one is built.
    """

    def __init__(
        self,
        price: PriceFn | None = None,
        *,
        max_tokens_per_call: int = DEFAULT_MAX_TOKENS_PER_CALL,
        stats: ExtractStats | None = None,
        agent_fallback_attribute: str | None = sc.SERVICE_NAME,
        compiled: bool = True,
    ) -> None:
        if type(max_tokens_per_call) is not int or max_tokens_per_call < 1:
            raise ValueError(f"max_tokens_per_call: expected a positive integer, got {max_tokens_per_call!r}")
        self._price = price if price is not None else _default_price
        self.max_tokens_per_call = max_tokens_per_call
        self.stats = stats if stats is not None else ExtractStats()
        #: the resource attribute naming the agent when nothing else does (`service.name`; None: off)
        self.agent_fallback_attribute = agent_fallback_attribute
        # (resource, its attribution) as one tuple: replaced atomically, so threads may share it
        self._resource_cache: tuple[object, Attribution | None] = (None, None)
        #: the compiled OTLP walk (accelerator.py), when built and not switched off
        self._scan = scanner() if compiled else None
        self._links = links_walk() if compiled else None
        self._build = record_builder() if compiled else None
        self._compile_rates = rates_compiler() if compiled else None
        #: the default price function's table (`_batch_prices`), made on first use
        self._prices: PriceTable | None = None

    def extract_otlp(self, request: ExportTraceServiceRequest, batch: _Batch) -> None:
        """Every span of an export request, counted into `batch` (received, records, rejections).
        With the compiled walk, the request is re-serialized and walked in C (cheaper than reading
        its attributes in Python), unless the walk declines."""
        if self._scan is not None:
            found = self.scan(request.SerializeToString())
            if found is not None:
                self.count_scanned(found, batch)
                return
        from_span, add = self._from_otlp_span, batch.add  # looked up once, not per span
        slots_of = _slots_from_otlp
        price, ceiling, stats = self._price, self.max_tokens_per_call, self.stats
        prices = self._batch_prices()
        for resource_spans in request.resource_spans:
            fallback = self.agent_fallback_attribute
            resource = _otlp_resource_attribution(resource_spans.resource.attributes, fallback)
            for scope_spans in resource_spans.scope_spans:
                scope_ours = scope_spans.scope.name == sc.INSTRUMENTATION_SCOPE
                spans = scope_spans.spans
                batch.spans_received += len(spans)
                for span in spans:
                    # the attribute walk inline: a span without usage (most spans) costs only this
                    found_slots = slots_of(span.attributes)
                    if found_slots is None:
                        continue
                    vals, ranks = found_slots
                    if vals[TASK_SCOPE] is True or type(vals[VERIFY_PASSED]) is bool:  # rare
                        outcome = from_span(span, resource, scope_ours, found_slots, prices)
                    else:  # `_outcome`'s usage case, inline: this runs per usage span
                        ids = (
                            int.from_bytes(span.trace_id, "big"),
                            int.from_bytes(span.span_id, "big"),
                            int.from_bytes(span.parent_span_id, "big") or None,
                            span.start_time_unix_nano,
                            span.end_time_unix_nano,
                        )
                        error = span.status.code == _OTLP_STATUS_ERROR
                        outcome = _record(
                            vals,
                            ranks,
                            price,
                            resource,
                            scope_ours,
                            error,
                            ceiling,
                            stats,
                            ids,
                            False,
                            prices,
                        )
                    if outcome is not None:
                        add(outcome)

    @property
    def compiled(self) -> bool:
        """Whether the compiled walk is on for this extractor."""
        return self._scan is not None

    def scan(self, data: bytes) -> ScanResult | None:
        """The compiled walk over a serialized request; None without it, or when it declines (the
        caller then decodes `data` and takes `extract_otlp`)."""
        return self._scan(data, self.agent_fallback_attribute) if self._scan is not None else None

    def scan_links(self, data: bytes, traces: Container[int], links: Links, scopes: Scopes) -> None:
        """`scan_otlp` over a payload `scan` accepted, by the compiled walk when it is on."""
        scan_otlp_bytes(data, traces, links, scopes, self._links)

    def count_scanned(self, found: ScanResult, batch: _Batch) -> None:
        """What the compiled walk found, counted into `batch` as `extract_otlp` would have."""
        n_spans, raw_resources, scopes, hits, _ = found
        batch.spans_received += n_spans
        if not hits:
            return
        fallback = self.agent_fallback_attribute
        resources = [_resource_attribution(r, fallback) if r is not None else None for r in raw_resources]
        scope_resource = [resources[index] for index, _ in scopes]
        ours = [name == sc.INSTRUMENTATION_SCOPE for _, name in scopes]
        price, ceiling, stats, add = self._price, self.max_tokens_per_call, self.stats, batch.add
        prices = self._batch_prices()
        if self._build is not None:  # the plain usage spans' records, built (and priced) in C
            inherited = [None if r is None else _resource_values(r) for r in scope_resource]
            unpriced: list[UsageRecord] = []
            compiled_prices = prices.compiled if prices is not None else None
            if self._build(hits, inherited, ours, ceiling, compiled_prices, unpriced) == len(hits):
                for record in unpriced:  # every hit is a record (the common case): no loop over them
                    self._price_built(record, prices)
                batch.records.extend(hits)
                return
        for hit in hits:
            if type(hit) is UsageRecord:
                if hit.cost_usd is None:
                    self._price_built(hit, prices)
                add(hit)
                continue
            scope, vals, ranks, trace_id, span_id, parent, start, end, code = hit
            error = code == _OTLP_STATUS_ERROR
            if vals[TASK_SCOPE] is True or type(vals[VERIFY_PASSED]) is bool:  # rare: one per task
                ids = (trace_id, span_id, parent, start, end)
                outcome = self._outcome(vals, ranks, scope_resource[scope], ours[scope], error, ids)
            else:  # `_outcome`'s usage case, inline: this runs per usage span
                outcome = _record(
                    vals, ranks, price, scope_resource[scope], ours[scope], error, ceiling, stats,
                    (trace_id, span_id, parent or None, start, end), True, prices,
                )  # fmt: skip
            if outcome is not None:
                add(outcome)

    def _batch_prices(self) -> PriceTable | None:
        """The price table, refreshed for a new batch (see `_price`); None when the price function
        is not the default one, or while genai-prices cannot load (each record then reports it)."""
        table = self._prices
        if table is None:
            if self._price is not _default_price:
                return None
            from otel_tokens.pricing import PriceTable, PricingUnavailable, default_price_book

            try:
                book = default_price_book()
            except PricingUnavailable:
                return None
            table = self._prices = PriceTable(book, self._compile_rates)
        table.refresh()
        return table

    def _price_built(self, record: UsageRecord, prices: PriceTable | None) -> None:
        """`_record`'s pricing, for a record the compiled build made without a cost (it has no
        failed steps: the build leaves such spans to `_record`)."""
        cost, failed = _price(
            self._price, record.provider, record.request_model, record.response_model, record.tokens,
            record.service_tier, prices,
        )  # fmt: skip
        record.cost_usd = cost
        if failed:
            record.failed_steps = (sc.ENRICHMENT_PRICING,)

    def from_otlp_span(
        self,
        span: Any,
        resource: Attribution | None = None,
        scope_ours: bool = False,
        found: tuple[_Slots, Sequence[int]] | None = None,
    ) -> Outcome:
        """None for a span without GenAI usage (most spans), else a record or a rejection; a task
        span is a TaskCompletion. `found`: the span's slots, when the caller walked them already."""
        return self._from_otlp_span(span, resource, scope_ours, found, None)

    def _from_otlp_span(
        self,
        span: Any,
        resource: Attribution | None,
        scope_ours: bool,
        found: tuple[_Slots, Sequence[int]] | None,
        prices: PriceTable | None,
    ) -> Outcome:
        """`from_otlp_span`, priced with a batch's price table."""
        if found is None:
            found = _slots_from_otlp(span.attributes)
            if found is None:
                return None
        ids = (
            int.from_bytes(span.trace_id, "big"),
            int.from_bytes(span.span_id, "big"),
            int.from_bytes(span.parent_span_id, "big"),
            span.start_time_unix_nano,
            span.end_time_unix_nano,
        )
        error = span.status.code == _OTLP_STATUS_ERROR
        return self._outcome(*found, resource, scope_ours, error, ids, prices)

    def _outcome(
        self,
        vals: _Slots,
        ranks: Sequence[int],
        resource: Attribution | None,
        scope_ours: bool,
        error: bool,
        ids: tuple[int, int, int, int, int],
        prices: PriceTable | None = None,
    ) -> Outcome:
        """One usage, task or verify span's outcome from its slots and ids (trace, span, parent or 0,
        start, end): both OTLP walks end here."""
        if vals[TASK_SCOPE] is True:
            return _completion(vals, resource, error, ids[0], ids[1], ids[4])
        if type(vals[VERIFY_PASSED]) is bool:
            return _verdict(vals, ids[0], ids[1], ids[4])
        trace_id, span_id, parent, start, end = ids
        return _record(
            vals, ranks, self._price, resource, scope_ours, error, self.max_tokens_per_call, self.stats,
            (trace_id, span_id, parent or None, start, end), False, prices,
        )  # fmt: skip

    def from_readable_span(self, span: ReadableSpan) -> Outcome:
        """The in-process adapter: same logic over an SDK span's attributes."""
        raw = span.attributes
        if not raw:
            return None
        vals, ranks = slots_from_mapping(raw)
        if vals[TASK_SCOPE] is True:
            return self._readable_completion(span, vals)
        if type(vals[VERIFY_PASSED]) is bool:
            ctx = span.get_span_context()
            trace_id, span_id = (ctx.trace_id, ctx.span_id) if ctx is not None else (0, 0)
            return _verdict(vals, trace_id, span_id, span.end_time or 0)
        if not _has_usage(vals):
            return None
        scope = span.instrumentation_scope
        ctx = span.get_span_context()
        return record_from_slots(
            vals,
            ranks,
            price=self._price,
            resource=self._sdk_resource_attribution(span),
            scope_ours=scope is not None and scope.name == sc.INSTRUMENTATION_SCOPE,
            error=span.status.status_code == StatusCode.ERROR,
            max_tokens_per_call=self.max_tokens_per_call,
            stats=self.stats,
            ids=(
                ctx.trace_id if ctx is not None else 0,
                ctx.span_id if ctx is not None else 0,
                span.parent.span_id if span.parent is not None else None,
                span.start_time or 0,
                span.end_time or 0,
            ),
        )

    def admit_record(self, record: UsageRecord) -> UsageRecord | Rejection:
        """A record built in this process (our instrumentation's, handed over by `otel_tokens.sinks`
        instead of a span) held to the rules a span's record is: counts made consistent (and
        counted), the per-call ceiling, reported enrichment failures counted, and priced here when
        it arrived unpriced. The record is not changed in place (other sinks share it)."""
        tokens = _consistent(record.tokens, self.stats)
        if tokens.input + tokens.output > self.max_tokens_per_call:
            total = tokens.input + tokens.output
            return Rejection(
                "token_count_too_large", f"{total} tokens in one call, above {self.max_tokens_per_call}"
            )
        if record.failed_steps:
            self.stats.enrichment_failed(record.failed_steps)
        if record.cost_usd is None:
            cost, failed = _price(
                self._price, record.provider, record.request_model, record.response_model, tokens,
                record.service_tier,
            )  # fmt: skip
            steps = record.failed_steps
            if failed and sc.ENRICHMENT_PRICING not in steps:
                steps += (sc.ENRICHMENT_PRICING,)
            return dataclasses.replace(record, tokens=tokens, cost_usd=cost, failed_steps=steps)
        return record if tokens is record.tokens else dataclasses.replace(record, tokens=tokens)

    def _readable_completion(self, span: ReadableSpan, vals: _Slots) -> TaskCompletion | None:
        ctx = span.get_span_context()
        return _completion(
            vals,
            self._sdk_resource_attribution(span),
            span.status.status_code == StatusCode.ERROR,
            ctx.trace_id if ctx is not None else 0,
            ctx.span_id if ctx is not None else 0,
            span.end_time or 0,
        )

    def _sdk_resource_attribution(self, span: ReadableSpan) -> Attribution | None:
        """A provider's spans share one Resource object: convert it once, not per span."""
        resource = span.resource
        cached, attribution = self._resource_cache
        if resource is not cached:
            attribution = _resource_attribution(resource.attributes, self.agent_fallback_attribute)
            self._resource_cache = (resource, attribution)
        return attribution

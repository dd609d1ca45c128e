"""Span → UsageRecord, for every dialect of GenAI usage attributes we know.

The dialect logic is written once over a plain mapping of the attributes we care about
(`record_from_attributes`); two thin adapters feed it: OTLP protobuf spans (the collector) and SDK
`ReadableSpan`s (the in-process processor). Walking every attribute value of every protobuf span
costs ~6x the decode itself, so the OTLP adapter makes one pass over the keys, keeps only names in
`WANTED` (a frozenset lookup) and converts values only for spans that carry a usage key.

Normalisation: records keep the semconv meaning (input includes cache read and write). Ours, the
anthropic SDK's own spans, the official OpenAI instrumentation, current OpenLLMetry and
OpenInference already report it that way; an Anthropic-style raw input (excluding cache) is
recognised when it is smaller than the cache tokens, or when a reported total only adds up with
the cache added, and is then normalised.

Malformed values never raise: the span becomes a `Rejection` with a bounded reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from otel_tokens import semconv as sc
from otel_tokens._safety import swallow_internal_errors
from otel_tokens.record import Attribution, TokenCounts, UsageRecord

if TYPE_CHECKING:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.sdk.trace import ReadableSpan

__all__ = ["WANTED", "Extractor", "PriceFn", "Rejection", "record_from_attributes"]

#: (provider, model, tokens) → USD, or None for a model without a known price.
PriceFn = Callable[[str, str, TokenCounts], "float | None"]

MAX_TOKENS = 10**9  # more than any context window by far: a larger count is a bug or an attack
MAX_COST_USD = 1e6
MAX_LABEL = 128
_OTLP_STATUS_ERROR = 2  # opentelemetry.proto.trace.v1.Status.STATUS_CODE_ERROR
_TL = sc.OPENLLMETRY_ASSOCIATION_PREFIX

_INPUT = (sc.GEN_AI_USAGE_INPUT_TOKENS, sc.OPENLLMETRY_PROMPT_TOKENS, sc.OPENINFERENCE_PROMPT_TOKENS)
_OUTPUT = (
    sc.GEN_AI_USAGE_OUTPUT_TOKENS,
    sc.OPENLLMETRY_COMPLETION_TOKENS,
    sc.OPENINFERENCE_COMPLETION_TOKENS,
)
_CACHE_READ = (
    sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS,
    sc.OPENLLMETRY_CACHE_READ_INPUT_TOKENS,
    sc.OPENINFERENCE_CACHE_READ,
)
_CACHE_WRITE = (
    sc.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS,
    sc.GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS,
    sc.OPENLLMETRY_CACHE_CREATION_INPUT_TOKENS,
    sc.OPENINFERENCE_CACHE_WRITE,
)
_REASONING = (sc.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS, sc.OPENINFERENCE_REASONING)
_TOTAL = (sc.OPENLLMETRY_TOTAL_TOKENS, sc.OPENINFERENCE_TOTAL_TOKENS)
_REQUEST_MODEL = (sc.GEN_AI_REQUEST_MODEL, sc.OPENINFERENCE_MODEL_NAME, sc.GEN_AI_RESPONSE_MODEL)
_PROVIDER = (sc.GEN_AI_PROVIDER_NAME, sc.GEN_AI_SYSTEM, sc.OPENINFERENCE_PROVIDER, sc.OPENINFERENCE_SYSTEM)
_OPERATION = (sc.GEN_AI_OPERATION_NAME, sc.OPENLLMETRY_REQUEST_TYPE)

#: Attribution field → attribute names, ours first, then other dialects' nearest equivalents.
#: `service.name` is deliberately absent: a service is not an agent.
_ATTRIBUTION: tuple[tuple[str, ...], ...] = (
    (sc.GEN_AI_AGENT_NAME, sc.GEN_AI_AGENT_ID, _TL + "agent_name", _TL + "agent"),  # agent
    (sc.OTEL_TOKENS_TASK, _TL + "task_name", _TL + "task"),  # task
    (sc.OTEL_TOKENS_TASK_ID, _TL + "task_id"),  # task_id
    (sc.OTEL_TOKENS_USER, sc.USER_ID, _TL + "user_id"),  # user
    (sc.GEN_AI_CONVERSATION_ID, sc.SESSION_ID, _TL + "session_id", _TL + "conversation_id"),  # session
    (sc.OTEL_TOKENS_STEP,),  # step
    (sc.GEN_AI_WORKFLOW_NAME, sc.OPENLLMETRY_WORKFLOW_NAME, _TL + "workflow_name", _TL + "workflow"),
)
_ATTRIBUTION_KEYS: frozenset[str] = frozenset(k for keys in _ATTRIBUTION for k in keys)

#: A span carries GenAI usage iff it has one of these.
USAGE_KEYS: frozenset[str] = frozenset(_INPUT + _OUTPUT + _TOTAL)
#: Every attribute name the extractor reads; the OTLP adapter keeps only these.
WANTED: frozenset[str] = (
    USAGE_KEYS
    | _ATTRIBUTION_KEYS
    | frozenset(_CACHE_READ + _CACHE_WRITE + _REASONING + _REQUEST_MODEL + _PROVIDER + _OPERATION)
    | {sc.OTEL_TOKENS_COST_USD, sc.OTEL_TOKENS_ESTIMATED, sc.OTEL_TOKENS_MARKER, sc.ERROR_TYPE}
)


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


class _Malformed(Exception):
    def __init__(self, reason: str, key: str, value: object) -> None:
        super().__init__(reason)
        self.rejection = Rejection(reason, f"{key}={str(value)[:64]!r}")


class _Batch(Protocol):
    spans_received: int

    def add(self, outcome: UsageRecord | Rejection | None) -> None: ...


def _default_price(provider: str, model: str, tokens: TokenCounts) -> float | None:
    from otel_tokens.pricing import default_price_book  # owned elsewhere; loaded on first use

    return default_price_book().cost_usd(provider, model, tokens)


def _label(value: object) -> str | None:
    if isinstance(value, str):
        return value[:MAX_LABEL] if value else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)[:MAX_LABEL]
    return None


def _first_label(attrs: Mapping[str, object], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = _label(attrs.get(key))
        if value is not None:
            return value
    return None


def _first_int(attrs: Mapping[str, object], keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = attrs.get(key)
        if value is not None:
            return _token_count(key, value)
    return None


def _token_count(key: str, value: object) -> int:
    if type(value) is not int:
        if not (type(value) is float and value.is_integer()):
            raise _Malformed("invalid_token_value", key, value)
        value = int(value)
    if value < 0:
        raise _Malformed("negative_token_count", key, value)
    if value > MAX_TOKENS:
        raise _Malformed("token_count_too_large", key, value)
    return value


def attribution_from(attrs: Mapping[str, object]) -> Attribution:
    """Attribution from span (or resource) attributes, ours first, then other dialects'."""
    return Attribution(*(_first_label(attrs, keys) for keys in _ATTRIBUTION))


def tokens_from(attrs: Mapping[str, object]) -> TokenCounts:
    """Token counts in semconv meaning, whichever dialect reported them. Raises _Malformed."""
    inp = _first_int(attrs, _INPUT)
    out = _first_int(attrs, _OUTPUT)
    cache_read = _first_int(attrs, _CACHE_READ) or 0
    cache_write = _first_int(attrs, _CACHE_WRITE) or 0
    reasoning = _first_int(attrs, _REASONING) or 0
    total = _first_int(attrs, _TOTAL)
    if inp is None and out is None and total is not None:
        inp = total  # only a total: the best split we have puts it all on input
    inp = inp or 0
    out = out or 0
    cached = cache_read + cache_write
    if cached and (inp < cached or (total is not None and total == inp + out + cached)):
        inp += cached  # Anthropic's raw input_tokens, which excludes cache tokens
    return TokenCounts(inp, out, cache_read, cache_write, reasoning)


def _cost(attrs: Mapping[str, object]) -> float | None:
    value = attrs.get(sc.OTEL_TOKENS_COST_USD)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Malformed("invalid_cost", sc.OTEL_TOKENS_COST_USD, value)
    if not math.isfinite(value) or not 0 <= value <= MAX_COST_USD:
        raise _Malformed("invalid_cost", sc.OTEL_TOKENS_COST_USD, value)
    return float(value)


def record_from_attributes(
    attrs: Mapping[str, object],
    *,
    price: PriceFn = _default_price,
    resource: Attribution | None = None,
    scope_ours: bool = False,
    error: bool = False,
) -> UsageRecord | Rejection:
    """The dialect logic, once: a UsageRecord (ids and times left for the adapter) or a Rejection."""
    try:
        tokens = tokens_from(attrs)
        cost = _cost(attrs)
    except _Malformed as exc:
        return exc.rejection
    provider = (_first_label(attrs, _PROVIDER) or "unknown").lower()
    request_model = _first_label(attrs, _REQUEST_MODEL) or "unknown"
    response_model = _label(attrs.get(sc.GEN_AI_RESPONSE_MODEL))
    attribution = attribution_from(attrs)
    if resource is not None:
        attribution = resource.merged(attribution)
    error_type = _label(attrs.get(sc.ERROR_TYPE))
    if cost is None:
        cost = _price(price, provider, request_model, response_model, tokens)
    return UsageRecord(
        provider=provider,
        request_model=request_model,
        operation=_first_label(attrs, _OPERATION) or "chat",
        response_model=response_model,
        tokens=tokens,
        estimated=attrs.get(sc.OTEL_TOKENS_ESTIMATED) is True,
        cost_usd=cost,
        attribution=attribution,
        status="error" if error or error_type is not None else "ok",
        error_type=error_type,
        ours=scope_ours or attrs.get(sc.OTEL_TOKENS_MARKER) is True,
    )


def _price(
    price: PriceFn, provider: str, request_model: str, response_model: str | None, tokens: TokenCounts
) -> float | None:
    """The response model (often a dated snapshot) prices more exactly; fall back to the request's."""
    cost: float | None = None
    with swallow_internal_errors("extract pricing"):
        if response_model and response_model != request_model:
            cost = price(provider, response_model, tokens)
        if cost is None:
            cost = price(provider, request_model, tokens)
    return cost


def _any_value(value: Any) -> object:
    """An OTLP AnyValue as a Python value (arrays and maps are not usage: kept opaque)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    return getattr(value, kind)


def _wanted_otlp(attributes: Any) -> dict[str, object] | None:
    """One pass over the keys; values converted only when the span turns out to carry usage."""
    kept: dict[str, Any] | None = None
    usage = False
    for kv in attributes:
        key = kv.key
        if key in WANTED:
            if kept is None:
                kept = {}
            kept[key] = kv.value
            if key in USAGE_KEYS:
                usage = True
    if not usage or kept is None:
        return None
    return {k: _any_value(v) for k, v in kept.items()}


class Extractor:
    """Both adapters around `record_from_attributes`, with a price function injected."""

    def __init__(self, price: PriceFn | None = None) -> None:
        self._price = price if price is not None else _default_price
        # (resource, its attribution) as one tuple: replaced atomically, so threads may share it
        self._resource_cache: tuple[object, Attribution | None] = (None, None)

    def extract_otlp(self, request: ExportTraceServiceRequest, batch: _Batch) -> None:
        """Every span of an export request, counted into `batch` (received, records, rejections)."""
        for resource_spans in request.resource_spans:
            resource = self._resource_attribution(
                {kv.key: _any_value(kv.value) for kv in resource_spans.resource.attributes
                 if kv.key in _ATTRIBUTION_KEYS}
            )  # fmt: skip
            for scope_spans in resource_spans.scope_spans:
                scope_ours = scope_spans.scope.name == sc.INSTRUMENTATION_SCOPE
                spans = scope_spans.spans
                batch.spans_received += len(spans)
                for span in spans:
                    outcome = self.from_otlp_span(span, resource, scope_ours)
                    if outcome is not None:
                        batch.add(outcome)

    def from_otlp_span(
        self, span: Any, resource: Attribution | None = None, scope_ours: bool = False
    ) -> UsageRecord | Rejection | None:
        """None for a span without GenAI usage (most spans), else a record or a rejection."""
        attrs = _wanted_otlp(span.attributes)
        if attrs is None:
            return None
        outcome = record_from_attributes(
            attrs,
            price=self._price,
            resource=resource,
            scope_ours=scope_ours,
            error=span.status.code == _OTLP_STATUS_ERROR,
        )
        if isinstance(outcome, UsageRecord):
            outcome.trace_id = int.from_bytes(span.trace_id, "big")
            outcome.span_id = int.from_bytes(span.span_id, "big")
            outcome.parent_span_id = int.from_bytes(span.parent_span_id, "big") or None
            outcome.start_time_ns = span.start_time_unix_nano
            outcome.end_time_ns = span.end_time_unix_nano
        return outcome

    def from_readable_span(self, span: ReadableSpan) -> UsageRecord | Rejection | None:
        """The in-process adapter: same logic over an SDK span's attributes."""
        from opentelemetry.trace import StatusCode

        raw = span.attributes
        if not raw:
            return None
        attrs = {k: v for k, v in raw.items() if k in WANTED}
        if USAGE_KEYS.isdisjoint(attrs):
            return None
        scope = span.instrumentation_scope
        outcome = record_from_attributes(
            attrs,
            price=self._price,
            resource=self._sdk_resource_attribution(span),
            scope_ours=scope is not None and scope.name == sc.INSTRUMENTATION_SCOPE,
            error=span.status.status_code == StatusCode.ERROR,
        )
        if isinstance(outcome, UsageRecord):
            ctx = span.get_span_context()
            if ctx is not None:
                outcome.trace_id = ctx.trace_id
                outcome.span_id = ctx.span_id
            outcome.parent_span_id = span.parent.span_id if span.parent is not None else None
            outcome.start_time_ns = span.start_time or 0
            outcome.end_time_ns = span.end_time or 0
        return outcome

    def _sdk_resource_attribution(self, span: ReadableSpan) -> Attribution | None:
        """A provider's spans share one Resource object: convert it once, not per span."""
        resource = span.resource
        cached, attribution = self._resource_cache
        if resource is not cached:
            attrs = {k: v for k, v in resource.attributes.items() if k in _ATTRIBUTION_KEYS}
            attribution = self._resource_attribution(attrs)
            self._resource_cache = (resource, attribution)
        return attribution

    @staticmethod
    def _resource_attribution(attrs: Mapping[str, object]) -> Attribution | None:
        """Resource-level attribution (e.g. an agent deployed as its own service sets
        `gen_ai.agent.name` there); None when there is none, so spans skip the merge."""
        if not attrs:
            return None
        attribution = attribution_from(attrs)
        return attribution if any(v is not None for _, v in attribution.items()) else None

"""The life of one instrumented LLM call's span, shared by every SDK wrapper.

A wrapper opens an `LLMCall` before the SDK sends the request and calls `finish()` exactly once when
the response (or the last stream chunk, or the error) is in. `LLMCall` owns attribute names, cost,
estimation flags and status, so the per-SDK modules only translate their SDK's objects into
`TokenCounts` — the same record the collector builds from spans.

This is the hot path of every instrumented call, so it avoids what costs microseconds here: no
`contextlib` context managers (our error policy runs from `except` blocks via `internal_error`),
span attributes set in one `set_attributes` batch (one lock and one validation pass in the SDK,
not one per attribute), and no content-capture work unless capture is on.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import Token
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import context, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from otel_tokens import semconv as sc
from otel_tokens._safety import swallow_internal_errors
from otel_tokens.attribution import (
    NO_ATTRIBUTION,
    attribution_attributes,
    current_attribution,
    framework_attribution,
)
from otel_tokens.pricing import default_price_book
from otel_tokens.record import TokenCounts, UsageRecord
from otel_tokens.sinks import record_sinks

if TYPE_CHECKING:  # the guard is imported only when a budget file turns it on
    from otel_tokens.guard import Admission, Guard, GuardRequest
    from otel_tokens.instrumentation._cache_replay import CacheSlot

_INSIDE_CALL_KEY = context.create_key("otel_tokens.inside_llm_call")
#: The key `trace.set_span_in_context` stores the current span under (read once, not imported
#: from the API's private module).
_SPAN_KEY = next(iter(trace.set_span_in_context(trace.INVALID_SPAN, Context())))
_CLIENT = SpanKind.CLIENT
_PLAIN_SEQUENCES = (list, tuple)  # finish reasons passed to the SDK as they are


@dataclass(frozen=True, slots=True)
class CallSettings:
    """What every wrapper needs besides the SDK call itself."""

    tracer: trace.Tracer
    capture_content: bool = False
    guard: Guard | None = None  # budgets enforced before each call (`instrument(budgets=...)`)


def inside_llm_call(ctx: Context | None = None) -> bool:
    """True while an instrumented call is in progress in this context (`ctx`, default the current
    one): a nested wrapped SDK method (e.g. `responses.stream()` calling `responses.create()`) must
    not count the call twice."""
    call = (context.get_current() if ctx is None else ctx).get(_INSIDE_CALL_KEY)
    # The call itself, not a flag: a context restored after the call ended (another
    # instrumentation detaching its stream's context late, out of order, brings ours back) must not
    # make the next call look nested, or that call would go unrecorded.
    return isinstance(call, LLMCall) and not call._ended


def internal_error(where: str) -> None:
    """Apply the shared policy (log once and carry on; re-raise under tests) to the exception being
    handled. Called from `except Exception:` so the happy path pays for no context manager."""
    with swallow_internal_errors(where):
        raise  # the exception the caller is handling


class LLMCall:
    """One LLM call's span; `finish()` ends it with usage, cost and status, at most once."""

    __slots__ = (
        "_ended",
        "_failed",
        "admission",
        "attribution",
        "cache_slot",
        "max_tokens",
        "operation",
        "parent_context",
        "provider",
        "request_model",
        "service_tier",
        "settings",
        "span",
    )

    def __init__(
        self,
        settings: CallSettings,
        provider: str,
        operation: str,
        request_model: str,
        stream: bool = False,
        server_address: str | None = None,
        server_port: int | None = None,
        max_tokens: int | None = None,
        ctx: Context | None = None,
    ) -> None:
        """`ctx`: the current context, when the wrapper already read it (not read again here).
        Wrappers pass every argument by position: a class called with keywords costs ~4k
        instructions more (the interpreter packs them into a dict for `__init__`)."""
        self.settings = settings
        self.provider = provider
        self.operation = operation
        self.request_model = request_model = request_model or "unknown"
        self._ended = False
        self.max_tokens = max_tokens  # the request's output ceiling, read once (the guard's too)
        self.admission: Admission | None = None  # the budget guard's, when it reserved
        self.cache_slot: CacheSlot | None = None  # a response to store in the response cache
        #: enrichment steps that failed (semconv.ENRICHMENT_*); the record says so, its tokens stay
        self._failed: tuple[str, ...] = ()  # a tuple: no allocation on the common path
        #: the tier the provider served the call in, when its response says (prices the call)
        self.service_tier: str | None = None
        # The live context: the current one, unless it is one of our calls' that already ended
        # (brought back by another instrumentation detaching its stream's context late, out of
        # order): then the context that call started in, so this call is neither nested under the
        # old one's span nor counted as its duplicate.
        live: Context = context.get_current() if ctx is None else ctx
        mark = live.get(_INSIDE_CALL_KEY)
        if mark is not None and isinstance(mark, LLMCall) and mark._ended:
            live = mark.parent_context
        self.parent_context: Context = live
        try:
            attribution = current_attribution(live)
            # an agent framework's enclosing invoke_agent span names the agent when no scope does
            # (`framework_attribution` returns at once when no span encloses the call)
            if live.get(_SPAN_KEY) is not None:
                attribution = framework_attribution(attribution, live)
            self.attribution = attribution
        except Exception:
            self.attribution = NO_ATTRIBUTION  # the call is still observed, unattributed
            self.enrichment_failed(sc.ENRICHMENT_ATTRIBUTION, "attribution")
        attributes: dict[str, AttributeValue] = {
            sc.GEN_AI_OPERATION_NAME: operation,
            sc.GEN_AI_PROVIDER_NAME: provider,
            sc.GEN_AI_REQUEST_MODEL: request_model,
            sc.OTEL_TOKENS_MARKER: True,
        }
        if stream:
            attributes[sc.GEN_AI_REQUEST_STREAM] = True
        if server_address:
            attributes[sc.SERVER_ADDRESS] = server_address
        if server_port:
            attributes[sc.SERVER_PORT] = server_port
        if max_tokens is not None:
            attributes[sc.GEN_AI_REQUEST_MAX_TOKENS] = max_tokens
        if self.attribution is not NO_ATTRIBUTION:
            try:
                attributes.update(attribution_attributes(self.attribution))
            except Exception:
                self.enrichment_failed(sc.ENRICHMENT_ATTRIBUTION, "attribution attributes")
        self.span = settings.tracer.start_span(f"{operation} {request_model}", live, _CLIENT, attributes)

    @property
    def ended(self) -> bool:
        """True once `finish()` has ended the span."""
        return self._ended

    @contextmanager
    def activate(self) -> Iterator[None]:
        """Make the span current while the SDK sends the request, so the SDK's own spans (and HTTP
        client spans) nest under it and nested wrapped calls are recognised as the same call."""
        token = self.enter()
        try:
            yield
        finally:
            context.detach(token)

    def invoke(self, wrapped: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Send the SDK call as this span. The SDK's own exception ends the span as an error and
        propagates unchanged; a result is returned for the wrapper to observe (and finish).
        The openai sync wrapper does the same inline (`enter` / `failed`), so that no frame of ours
        sits between it and the SDK's deep call stack."""
        token = self.enter()
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            self.failed(token, exc)
            raise
        context.detach(token)
        return result

    def enter(self) -> Token[context.Context]:
        """Make this call's context current; `context.detach` the token after. The call's parent
        context plus this span and the call itself as the inside-a-call mark, in one copy (what
        `set_span_in_context` and `set_value` would make in two)."""
        return context.attach(Context({**self.parent_context, _SPAN_KEY: self.span, _INSIDE_CALL_KEY: self}))

    def failed(self, token: Token[context.Context], error: BaseException) -> None:
        """The SDK call raised `error`: leave its context and end the span as an error (the caller
        re-raises the SDK's exception unchanged)."""
        context.detach(token)
        self.finish(None, error=error)

    async def invoke_async(
        self, wrapped: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """`invoke` for the async clients."""
        token = self.enter()
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as exc:
            context.detach(token)
            self.finish(None, error=exc)
            raise
        context.detach(token)
        return result

    def enrichment_failed(self, step: str, where: str) -> None:
        """An enrichment step (`semconv.ENRICHMENT_*`) raised: the record is marked, the error is
        logged once (re-raised under tests), and the call's reported tokens are still recorded.
        Called from an `except` block."""
        if step not in self._failed:
            self._failed += (step,)
        internal_error(where)

    # --- the budget guard's pre-send hook ---------------------------------------------------------
    def admit(
        self,
        kwargs: dict[str, Any],
        prompt: Any,
        system: Any,
        max_output_tokens: int | None,
        prompt_arg: str = "messages",
    ) -> dict[str, Any]:
        """Ask the budget guard (if on) before sending: returns the kwargs to send (the `model` may
        be downgraded, the `prompt_arg` messages compressed) or raises `BudgetExceeded` /
        `BudgetDeferred` / `TaskStopped` with the span ended as an error. A deferral with a
        `defer_wait` blocks this thread while it waits for room."""
        guard = self.settings.guard
        if guard is None:
            return kwargs
        try:
            admission = guard.admit_call(
                self.provider, self.operation, self.request_model, self.attribution,
                prompt, system, max_output_tokens,
            )  # fmt: skip
        except Exception:
            internal_error("budget guard")  # our bug: the call goes ahead unguarded
            return kwargs
        if admission.hold is not None:  # the common case: reserved on the fast lane, nothing to say
            self.admission = admission
            return kwargs
        return self._apply_admission(admission, kwargs, prompt_arg)

    async def admit_async(
        self,
        kwargs: dict[str, Any],
        prompt: Any,
        system: Any,
        max_output_tokens: int | None,
        prompt_arg: str = "messages",
    ) -> dict[str, Any]:
        """`admit` for the async clients: a deferred call waits without blocking the event loop."""
        guard = self.settings.guard
        if guard is None:
            return kwargs
        try:
            admission = await guard.admit_async(self.guard_request(prompt, system, max_output_tokens))
        except Exception:
            internal_error("budget guard")
            return kwargs
        if admission.hold is not None:
            self.admission = admission
            return kwargs
        return self._apply_admission(admission, kwargs, prompt_arg)

    def guard_request(self, prompt: Any, system: Any, max_output_tokens: int | None) -> GuardRequest:
        """This call as the guard sees it."""
        from otel_tokens.guard.estimate import GuardRequest  # in sys.modules once a guard exists

        return GuardRequest(
            self.provider,
            self.operation,
            self.request_model,
            self.attribution,
            prompt,
            system,
            max_output_tokens,
        )

    def _apply_admission(
        self, admission: Admission, kwargs: dict[str, Any], prompt_arg: str
    ) -> dict[str, Any]:
        for decision in admission.decisions:
            self.span.add_event(sc.OTEL_TOKENS_GUARD_DECISION_EVENT, decision.attributes())
        for finding in admission.findings:
            self.span.add_event(sc.OTEL_TOKENS_GUARD_RUNAWAY_EVENT, finding.attributes())
        if admission.refusal is not None:
            self.finish(None, error=admission.refusal)
            raise admission.refusal
        if admission.reservation is not None or admission.hold is not None:
            self.admission = admission  # settled in `finish`
        if admission.downgraded_from is not None:
            self.request_model = admission.model
            self.span.update_name(f"{self.operation} {admission.model}")
            self.span.set_attributes(
                {
                    sc.GEN_AI_REQUEST_MODEL: admission.model,
                    sc.OTEL_TOKENS_GUARD_DOWNGRADED_FROM: admission.downgraded_from,
                }
            )
            kwargs = {**kwargs, "model": admission.model}
        if admission.saved is not None:  # compressed: send the shrunk messages
            kwargs = {**kwargs, prompt_arg: admission.prompt}
            budget, tokens = admission.saved
            self.add_saved_event(sc.SAVED_COMPRESSED, tokens, budget)
        return kwargs

    def add_saved_event(self, reason: str, tokens: int, budget: str | None) -> None:
        """What the guard saved this call (`semconv.SAVED_*`), for `llm_tokens_saved_total`."""
        attributes: dict[str, AttributeValue] = {
            sc.OTEL_TOKENS_GUARD_SAVED_REASON: reason,
            sc.OTEL_TOKENS_GUARD_SAVED_TOKENS: tokens,
        }
        if budget is not None:
            attributes[sc.OTEL_TOKENS_GUARD_BUDGET] = budget
        self.span.add_event(sc.OTEL_TOKENS_GUARD_SAVED_EVENT, attributes)

    def record_content(self, key: str, value: str) -> None:
        """Prompt/completion text goes on the span only when content capture was switched on."""
        if self.settings.capture_content and not self._ended:
            self.span.set_attribute(key, value)

    def finish(
        self,
        tokens: TokenCounts | None,
        response_model: str | None = None,
        response_id: str | None = None,
        finish_reasons: Sequence[str] = (),
        *,
        estimated: bool = False,
        error: BaseException | None = None,
        error_type: str | None = None,
    ) -> UsageRecord | None:
        """End the span, then hand the record to the in-process sinks (`otel_tokens.sinks`), the
        budget guard and the response cache. Safe to call more than once (only the first call
        counts); never raises. The response fields may be passed by position (the per-call fast
        paths do: keywords cost the call a few hundred instructions more).

        The span needs only the counts, the cost and the status, so those are all this builds on
        the caller's path; the `UsageRecord` is built only when a sink is subscribed, the guard
        has a reservation to settle or the response cache a slot to fill (returned then, else None)."""
        if self._ended:
            return None
        self._ended = True
        counts = tokens if tokens is not None else TokenCounts()
        failed = error is not None or error_type is not None
        if failed:
            error_type = error_type or (type(error).__qualname__ if error is not None else None)
        request_model, tier = self.request_model, self.service_tier
        cost: float | None = None
        try:
            # the response model (often a dated snapshot) prices more exactly; only when it is
            # unknown is the request's model tried
            prices = default_price_book()
            cost = prices.strict_cost_usd(self.provider, response_model or request_model, counts, tier)
            if cost is None and response_model and response_model != request_model:
                cost = prices.strict_cost_usd(self.provider, request_model, counts, tier)
        except Exception:
            self.enrichment_failed(sc.ENRICHMENT_PRICING, "pricing")
        try:
            # All the common attributes in one literal (built at its final size, where inserting
            # them one by one grows the dict twice), the absent ones removed: this runs per call.
            attributes: dict[str, AttributeValue] = {
                sc.GEN_AI_USAGE_INPUT_TOKENS: counts.input,
                sc.GEN_AI_USAGE_OUTPUT_TOKENS: counts.output,
                sc.OTEL_TOKENS_COST_USD: cost,  # type: ignore[dict-item]  # None: removed below
                sc.OPENAI_RESPONSE_SERVICE_TIER: tier,  # type: ignore[dict-item]
                sc.GEN_AI_RESPONSE_MODEL: response_model,  # type: ignore[dict-item]
                sc.GEN_AI_RESPONSE_ID: response_id,  # type: ignore[dict-item]
                # the SDK copies a sequence attribute into a tuple of its own
                sc.GEN_AI_RESPONSE_FINISH_REASONS: (
                    finish_reasons if type(finish_reasons) in _PLAIN_SEQUENCES else list(finish_reasons)
                ),
            }
            if cost is None:
                del attributes[sc.OTEL_TOKENS_COST_USD]
                attributes[sc.OTEL_TOKENS_COST_UNPRICED] = True
            if not tier:
                del attributes[sc.OPENAI_RESPONSE_SERVICE_TIER]
            if not response_model:
                del attributes[sc.GEN_AI_RESPONSE_MODEL]
            if not response_id:
                del attributes[sc.GEN_AI_RESPONSE_ID]
            if not finish_reasons:
                del attributes[sc.GEN_AI_RESPONSE_FINISH_REASONS]
            if counts.cache_read or counts.cache_write or counts.cache_write_1h or counts.reasoning:
                _add_detail_counts(attributes, counts)
            if estimated:
                attributes[sc.OTEL_TOKENS_ESTIMATED] = True
            if self._failed:
                attributes[sc.OTEL_TOKENS_ENRICHMENT_FAILED] = list(self._failed)
            if failed:
                attributes[sc.ERROR_TYPE] = error_type or "_OTHER"
            self.span.set_attributes(attributes)
            if failed:
                self.span.set_status(Status(StatusCode.ERROR, error_type))
        except Exception:
            internal_error("LLMCall.finish")
        admission, cache_slot = self.admission, self.cache_slot
        record: UsageRecord | None = None
        if (
            (admission is not None and admission.needs_record)
            or cache_slot is not None
            or record_sinks.active
        ):
            try:
                record = self._build_record(counts, response_model, estimated, cost, failed, error_type)
            except Exception:
                internal_error("LLMCall.finish: record")
        if cache_slot is not None:
            cache_slot.commit(record)
        if admission is not None:
            # The guard's reconcile (inline: this runs per guarded call): the reservation becomes
            # what the call really used (released when there is no record: our accounting
            # failed); a fast-lane hold may need only the counts.
            try:
                if admission.needs_record:
                    admission.settle(record)
                else:
                    admission.settle_usage(counts, cost)
            except Exception:
                internal_error("budget guard settle")
            for finding in admission.late_findings:
                self.span.add_event(sc.OTEL_TOKENS_GUARD_RUNAWAY_EVENT, finding.attributes())
        self.span.end()
        if record is not None and record_sinks.active:
            self._publish(record)
        return record

    def _publish(self, record: UsageRecord) -> None:
        """The record as the span describes it (ids, so a consumer can deduplicate it against other
        instrumentations' spans of the same call, and times), to every subscribed sink."""
        try:
            span = self.span
            ctx = span.get_span_context()
            record.trace_id, record.span_id = ctx.trace_id, ctx.span_id
            # SDK spans know their parent and times; the API's Span promises neither
            parent = getattr(span, "parent", None)
            record.parent_span_id = parent.span_id if parent is not None else None
            record.start_time_ns = getattr(span, "start_time", None) or 0
            record.end_time_ns = getattr(span, "end_time", None) or record.end_time_ns
            record_sinks.publish(record)
        except Exception:
            internal_error("LLMCall.finish: record sinks")

    def _build_record(
        self,
        counts: TokenCounts,
        response_model: str | None,
        estimated: bool,
        cost: float | None,
        failed: bool,
        error_type: str | None,
    ) -> UsageRecord:
        """The call's record, for the in-process sinks and the guard's settle. Pricing is an
        enrichment step of its own (done by `finish`): if it failed the record keeps its tokens and
        is marked, instead of the whole record being lost."""
        return UsageRecord(
            provider=self.provider,
            request_model=self.request_model,
            operation=self.operation,
            response_model=response_model,
            tokens=counts,
            estimated=estimated,
            cost_usd=cost,
            attribution=self.attribution,
            status="error" if failed else "ok",
            error_type=error_type if failed else None,
            end_time_ns=time.time_ns(),
            ours=True,
            service_tier=self.service_tier,
            failed_steps=self._failed,
        )


def _add_detail_counts(attributes: dict[str, AttributeValue], t: TokenCounts) -> None:
    """The detail counts a call reported (cache read, cache writes, reasoning), each only when
    non-zero."""
    if t.cache_read:
        attributes[sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] = t.cache_read
    if t.cache_write:
        attributes[sc.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS] = t.cache_write
    if t.cache_write_1h:
        attributes[sc.OTEL_TOKENS_CACHE_WRITE_1H] = t.cache_write_1h
    if t.reasoning:
        attributes[sc.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] = t.reasoning

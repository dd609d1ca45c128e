"""The usage record: the one value every pipeline stage passes on for one LLM call.

Instrumentation builds it from an SDK response, the extractor builds it from a span (ours or another
instrumentation's); aggregation, budgets and exposition consume only this. Token counts keep the
semantic-convention meaning (input includes cache tokens, output includes reasoning); `disjoint()`
gives the non-overlapping split that Prometheus counters need, so that a sum over `token_type` is
the real total. A `TaskCompletion` (a task instance's scope ended) and a `Verdict` (a check of a task instance
passed or failed) are the other records that flow:
in-process consumers receive both from `otel_tokens.sinks`, the collector builds both from spans.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Literal, TypeAlias

from otel_tokens.metric_names import TOKEN_TYPES

__all__ = [
    "ATTRIBUTION_FIELDS",
    "TOKEN_TYPES",
    "Attribution",
    "Record",
    "Status",
    "TaskCompletion",
    "TokenCounts",
    "UsageRecord",
    "Verdict",
]

Status = Literal["ok", "error"]


@dataclass(slots=True)
class TokenCounts:
    """Token counts of one call, in semconv meaning: `input` includes cache read and cache write,
    `output` includes reasoning.

    `cache_write_1h` is the part of `cache_write` written with Anthropic's 1-hour TTL, which is
    billed at a higher rate than the 5-minute default. It is a split of `cache_write`, not another
    token type: `disjoint()` and the token metric keep one `cache_write` type.
    """

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0
    reasoning: int = 0
    cache_write_1h: int = 0

    def disjoint_counts(self) -> tuple[int, int, int, int, int]:
        """Non-overlapping counts in `TOKEN_TYPES` order (fresh input, visible output, cache read,
        cache write, reasoning): the one definition of the split; a tuple, since the aggregator
        calls it per record.

        Clamped at zero so a provider reporting cache tokens larger than its input total (seen in
        the field with partial usage) cannot produce a negative counter increment.
        """
        cache_read, cache_write, reasoning = self.cache_read, self.cache_write, self.reasoning
        fresh, visible = self.input - cache_read - cache_write, self.output - reasoning
        return (
            fresh if fresh > 0 else 0,  # not max(): it parses keyword arguments on every call
            visible if visible > 0 else 0,
            cache_read,
            cache_write,
            reasoning,
        )

    def disjoint(self) -> dict[str, int]:
        """`disjoint_counts()` by token type name."""
        return dict(zip(TOKEN_TYPES, self.disjoint_counts(), strict=True))

    @property
    def total(self) -> int:
        return sum(self.disjoint_counts())

    def __add__(self, other: TokenCounts) -> TokenCounts:
        return TokenCounts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @classmethod
    def from_anthropic(
        cls,
        input_tokens: int,
        output_tokens: int,
        cache_read: int = 0,
        cache_write: int = 0,
        cache_write_1h: int = 0,
    ) -> TokenCounts:
        """Anthropic's `input_tokens` excludes cache tokens; normalise to the semconv meaning."""
        return cls(
            input=input_tokens + cache_read + cache_write,
            output=output_tokens,
            cache_read=cache_read,
            cache_write=cache_write,
            cache_write_1h=cache_write_1h,
        )


@dataclass(frozen=True, slots=True)
class Attribution:
    """Who spent the tokens. `task` is a bounded task type; `task_id` is one running instance and
    never becomes a metric label."""

    agent: str | None = None
    task: str | None = None
    task_id: str | None = None
    user: str | None = None
    session: str | None = None
    step: str | None = None
    workflow: str | None = None

    def merged(self, inner: Attribution) -> Attribution:
        """This scope overlaid by an inner one: fields the inner scope sets win."""
        return replace(self, **{k: v for k, v in inner.items() if v is not None})

    def items(self) -> list[tuple[str, str | None]]:
        return [(f.name, getattr(self, f.name)) for f in fields(self)]


ATTRIBUTION_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Attribution))


@dataclass(slots=True)
class UsageRecord:
    """One LLM call. `cost_usd` is None when no price is known for the model (counted as unpriced)."""

    provider: str
    request_model: str
    operation: str = "chat"
    response_model: str | None = None
    tokens: TokenCounts = field(default_factory=TokenCounts)
    estimated: bool = False
    cost_usd: float | None = None
    attribution: Attribution = field(default_factory=Attribution)
    status: Status = "ok"
    error_type: str | None = None
    trace_id: int = 0
    span_id: int = 0
    parent_span_id: int | None = None
    start_time_ns: int = 0
    end_time_ns: int = 0
    #: True when the span came from otel-tokens' own instrumentation (preferred when deduplicating).
    ours: bool = False
    #: The service tier the provider says it served the call in (OpenAI's `flex`, `priority`, ...):
    #: it selects the price. None when the response did not say.
    service_tier: str | None = None
    #: Enrichment steps that failed for this record (`semconv.ENRICHMENT_*`: pricing, estimation,
    #: attribution): its reported tokens are still exact, what the step would have added is not.
    failed_steps: tuple[str, ...] = ()
    #: True when `attribution.agent` is only the resource's (its `gen_ai.agent.name`, else the
    #: configured fallback such as `service.name`): an enclosing `invoke_agent` span names it better.
    agent_from_resource: bool = False

    @property
    def model(self) -> str:
        """The metric label: the requested model (bounded, what budgets match on)."""
        return self.request_model or self.response_model or "unknown"


@dataclass(frozen=True, slots=True)
class TaskCompletion:
    """A task instance's scope ended in the process that owns it (its task span ended). Rare (one
    per instance), so a plain dataclass; the ids let a re-sent task span be recognised."""

    task_id: str
    task: str | None
    agent: str | None
    status: Status = "ok"
    trace_id: int = 0
    span_id: int = 0
    end_time_ns: int = 0


@dataclass(frozen=True, slots=True)
class Verdict:
    """One deterministic check of a task instance passed or failed (`otel_tokens.verify`). It may
    come from another process than the task's, before or after the task completed; a task's checks
    combine as "all passed", so a verdict seen twice (a re-sent span) changes nothing."""

    task_id: str
    passed: bool
    check: str = "tests"
    trace_id: int = 0
    span_id: int = 0
    end_time_ns: int = 0


#: What flows to in-process consumers and through the pipeline: one LLM call, one finished task, or
#: one verdict on a task.
Record: TypeAlias = UsageRecord | TaskCompletion | Verdict

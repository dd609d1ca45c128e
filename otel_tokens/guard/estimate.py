"""The pre-flight estimate of one call: what the guard reserves before the request leaves.

Input is counted with tiktoken (`otel_tokens.tokencount`) on the request's messages / input and
system prompt; output is the request's own ceiling (`max_tokens`, `max_completion_tokens`,
`max_output_tokens`), which the provider never exceeds, or `guard.default_output_tokens` from the
budget file when the request sets none. Embeddings produce no output.

How close this is to the truth decides the overshoot bound (README, "Enforce budgets in the
agent"): with an output ceiling set, output is an upper bound; input is exact for OpenAI chat
models up to the tokenizer cookbook's per-message overhead, and an approximation for other
vendors' models, whose tokenizers are not public.

Counting uses the `strict_` tokenizer functions, which raise instead of returning 0: a failed
estimate must not pass as "this call costs nothing". The instrumentation's hook catches it as the
guard's internal error (logged once) and lets the call go unguarded.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from otel_tokens.budgets.spec import Budget
from otel_tokens.record import Attribution, TokenCounts
from otel_tokens.tokencount import strict_count_message_tokens

__all__ = ["AmountForm", "GuardRequest", "amount_form", "estimate_amount", "estimate_tokens"]

EMBEDDINGS = "embeddings"
_INPUT_SIDE = frozenset({"input", "cache_read", "cache_write"})
_OUTPUT_SIDE = frozenset({"output", "reasoning"})


class GuardRequest(NamedTuple):
    """What the guard needs to know of a call before it is sent, independent of the SDK. (A tuple:
    built on every guarded call, and cheaper to build than a frozen dataclass.)"""

    provider: str
    operation: str
    model: str
    attribution: Attribution
    prompt: Any = None  # chat `messages`, Responses / Embeddings `input`, Anthropic `messages`
    system: Any = None  # Responses `instructions`, Anthropic `system`
    max_output_tokens: int | None = None


def estimate_tokens(request: GuardRequest, default_output_tokens: int) -> TokenCounts:
    """Input by tokenizer, output at the request's ceiling (semconv meaning: output ⊇ reasoning)."""
    if request.operation == EMBEDDINGS:
        return TokenCounts(input=_embedding_input_tokens(request.prompt, request.model))
    output = request.max_output_tokens if request.max_output_tokens is not None else default_output_tokens
    prompt_tokens = strict_count_message_tokens(request.prompt, request.model, system=request.system)
    return TokenCounts(input=prompt_tokens, output=max(output, 0))


def _embedding_input_tokens(value: Any, model: str) -> int:
    """Embeddings `input`: a string, a list of strings, or already-tokenised int arrays."""
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return len(value)
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        return sum(len(v) for v in value)
    return strict_count_message_tokens(value, model)


#: What a budget claims of an estimate: (input coefficient, output coefficient, in USD).
AmountForm = tuple[int, int, bool]


def amount_form(spec: Budget) -> AmountForm:
    """`spec`'s claim on an estimate as coefficients, worked out once per budget (see
    `estimate_amount`)."""
    limit = spec.limit
    if limit.usd is not None:
        return (0, 0, True)
    if not limit.token_types:
        return (1, 1, False)
    types = frozenset(limit.token_types)
    return (1 if types & _INPUT_SIDE else 0, 1 if types & _OUTPUT_SIDE else 0, False)


def estimate_amount(spec: Budget, estimate: TokenCounts, cost_usd: float | None) -> float:
    """The estimate in `spec`'s unit. Unlike an actual record, an estimate cannot tell cache reads
    from fresh input or reasoning from visible output, so a `token_types` limit is charged the whole
    input side if it counts any input type, and the whole output ceiling if it counts any output
    type: an upper bound, never less than the call can use. An unpriced model costs 0 USD, as it
    does in the collector's ledger."""
    i, o, in_usd = amount_form(spec)
    if in_usd:
        return cost_usd or 0.0
    return float(i * estimate.input + o * estimate.output)

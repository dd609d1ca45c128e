"""Every span attribute and baggage key name otel-tokens writes or reads, in one place.

The GenAI semantic conventions are "development" stability and have been renamed more than once,
so the names live here and nowhere else: a rename is a one-line change, and the extractor's list of
dialects it understands (ours, semconv v1.41, the new GenAI semconv repo, OpenLLMetry, OpenInference,
the anthropic SDK's own spans) is readable next to what we emit.
"""

from __future__ import annotations

from typing import Final

# --- GenAI semantic conventions v1.41.1 (what we emit) -------------------------------------------
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_SYSTEM: Final = "gen_ai.system"  # deprecated for gen_ai.provider.name; read only
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_STREAM: Final = "gen_ai.request.stream"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_RESPONSE_ID: Final = "gen_ai.response.id"
GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"  # includes cache read + write
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"  # includes reasoning
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: Final = "gen_ai.usage.cache_read.input_tokens"
GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS: Final = "gen_ai.usage.cache_creation.input_tokens"
GEN_AI_USAGE_REASONING_OUTPUT_TOKENS: Final = "gen_ai.usage.reasoning.output_tokens"
GEN_AI_AGENT_NAME: Final = "gen_ai.agent.name"
GEN_AI_AGENT_ID: Final = "gen_ai.agent.id"
GEN_AI_CONVERSATION_ID: Final = "gen_ai.conversation.id"
GEN_AI_WORKFLOW_NAME: Final = "gen_ai.workflow.name"
GEN_AI_INPUT_MESSAGES: Final = "gen_ai.input.messages"  # opt-in content capture only
GEN_AI_OUTPUT_MESSAGES: Final = "gen_ai.output.messages"  # opt-in content capture only
#: The tier OpenAI says it served the call in (`default`, `flex`, `priority`, ...): it sets the price.
OPENAI_RESPONSE_SERVICE_TIER: Final = "openai.response.service_tier"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
ERROR_TYPE: Final = "error.type"

# --- names the new GenAI semconv repo uses for the same things (read only) ------------------------
GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS: Final = "gen_ai.usage.cache_write.input_tokens"
# --- names older semconv releases used (read only) -------------------------------------------------
GEN_AI_OPENAI_RESPONSE_SERVICE_TIER: Final = "gen_ai.openai.response.service_tier"  # until v1.36

# --- other dialects users already run (read only) ------------------------------------------------
OPENLLMETRY_PROMPT_TOKENS: Final = "gen_ai.usage.prompt_tokens"
OPENLLMETRY_COMPLETION_TOKENS: Final = "gen_ai.usage.completion_tokens"
OPENLLMETRY_TOTAL_TOKENS: Final = "llm.usage.total_tokens"
OPENLLMETRY_CACHE_CREATION_INPUT_TOKENS: Final = "gen_ai.usage.cache_creation_input_tokens"
OPENLLMETRY_CACHE_READ_INPUT_TOKENS: Final = "gen_ai.usage.cache_read_input_tokens"
OPENLLMETRY_ASSOCIATION_PREFIX: Final = "traceloop.association.properties."
OPENINFERENCE_PROMPT_TOKENS: Final = "llm.token_count.prompt"
OPENINFERENCE_COMPLETION_TOKENS: Final = "llm.token_count.completion"
OPENINFERENCE_CACHE_READ: Final = "llm.token_count.prompt_details.cache_read"
OPENINFERENCE_CACHE_WRITE: Final = "llm.token_count.prompt_details.cache_write"
OPENINFERENCE_REASONING: Final = "llm.token_count.completion_details.reasoning"
OPENINFERENCE_MODEL_NAME: Final = "llm.model_name"
OPENINFERENCE_PROVIDER: Final = "llm.provider"
OPENLLMETRY_REQUEST_TYPE: Final = "llm.request.type"  # "chat" / "completion" / "embedding"
OPENLLMETRY_WORKFLOW_NAME: Final = "traceloop.workflow.name"
OPENINFERENCE_TOTAL_TOKENS: Final = "llm.token_count.total"
OPENINFERENCE_SYSTEM: Final = "llm.system"
SESSION_ID: Final = "session.id"
USER_ID: Final = "user.id"

#: The anthropic SDK's own tracer scope (its spans use the semconv meaning: input includes cache).
ANTHROPIC_SDK_SCOPE: Final = "com.anthropic.sdk.python"

# --- our own namespace: what semconv has no name for ---------------------------------------------
OTEL_TOKENS_PREFIX: Final = "otel_tokens."
OTEL_TOKENS_TASK: Final = "otel_tokens.task.name"
OTEL_TOKENS_TASK_ID: Final = "otel_tokens.task.id"
OTEL_TOKENS_USER: Final = "otel_tokens.user.id"
OTEL_TOKENS_STEP: Final = "otel_tokens.step"
OTEL_TOKENS_COST_USD: Final = "otel_tokens.cost.usd"
OTEL_TOKENS_ESTIMATED: Final = "otel_tokens.usage.estimated"  # True: counted by tokenizer, not reported
#: The part of the cache writes (`gen_ai.usage.cache_creation.input_tokens`, which stays the total)
#: written with Anthropic's 1-hour TTL: billed at a higher rate than 5-minute writes.
OTEL_TOKENS_CACHE_WRITE_1H: Final = "otel_tokens.usage.cache_write_1h.input_tokens"
#: True when the instrumentation could not price the call (unknown model, or pricing failed): the
#: span has no `otel_tokens.cost.usd`, and the collector prices it again from the tokens.
OTEL_TOKENS_COST_UNPRICED: Final = "otel_tokens.cost.unpriced"
#: Which enrichment steps failed with an internal error (a string array of the `ENRICHMENT_*`
#: values below). The reported token counts on such a span are still exact; what the step would
#: have added (a cost, an estimate of unreported tokens, attribution) is missing.
OTEL_TOKENS_ENRICHMENT_FAILED: Final = "otel_tokens.enrichment.failed"
ENRICHMENT_PRICING: Final = "pricing"
ENRICHMENT_ESTIMATION: Final = "estimation"
ENRICHMENT_ATTRIBUTION: Final = "attribution"
#: Every value `otel_tokens.enrichment.failed` may hold (the collector counts only these: bounded).
ENRICHMENT_STEPS: Final = (ENRICHMENT_PRICING, ENRICHMENT_ESTIMATION, ENRICHMENT_ATTRIBUTION)
OTEL_TOKENS_MARKER: Final = "otel_tokens.instrumented"  # True on spans our instrumentation made
#: True on the INTERNAL span an `attribute(task_id=...)` scope opens for one task instance: its end
#: tells the collector the instance completed (only the process owning the task emits it).
OTEL_TOKENS_TASK_SCOPE: Final = "otel_tokens.task.scope"

#: On the span `otel_tokens.verify()` opens: the verdict of one deterministic check of a task instance
#: (True: passed), and the check's name (`tests`, `lint`, ...). The span carries the task's id.
OTEL_TOKENS_VERIFY_PASSED: Final = "otel_tokens.verify.passed"
OTEL_TOKENS_VERIFY_CHECK: Final = "otel_tokens.verify.check"

# --- agent frameworks' scopes (GenAI semconv), read for attribution -------------------------------
#: `gen_ai.operation.name` of the span an agent framework opens around one agent's run / a workflow.
OPERATION_INVOKE_AGENT: Final = "invoke_agent"
OPERATION_INVOKE_WORKFLOW: Final = "invoke_workflow"
#: The resource attribute naming the service: the collector's last-resort agent (configurable).
SERVICE_NAME: Final = "service.name"
#: The prefix of the service name the OpenTelemetry SDK makes up when none was set: never an agent.
UNKNOWN_SERVICE_PREFIX: Final = "unknown_service"

#: The instrumentation scope name of our tracer; the collector trusts spans from this scope first.
INSTRUMENTATION_SCOPE: Final = "otel_tokens"

# --- W3C baggage keys carrying attribution across processes --------------------------------------
BAGGAGE_PREFIX: Final = "otel_tokens."

# --- the in-process budget guard (`otel_tokens.guard`) -------------------------------------------
#: Span attribute: the model the application asked for, when the guard sent a cheaper one instead
#: (`gen_ai.request.model` then names the model actually sent and priced).
OTEL_TOKENS_GUARD_DOWNGRADED_FROM: Final = "otel_tokens.guard.downgraded_from"
#: Span event: one guard decision about one budget, with the numbers it was taken on.
OTEL_TOKENS_GUARD_DECISION_EVENT: Final = "otel_tokens.guard.decision"
OTEL_TOKENS_GUARD_ACTION: Final = "otel_tokens.guard.action"  # block, defer, downgrade, warn, ...
OTEL_TOKENS_GUARD_OUTCOME: Final = "otel_tokens.guard.outcome"  # blocked, deferred, downgraded, ...
OTEL_TOKENS_GUARD_BUDGET: Final = "otel_tokens.guard.budget"
OTEL_TOKENS_GUARD_SCOPE: Final = "otel_tokens.guard.scope"
OTEL_TOKENS_GUARD_UNIT: Final = "otel_tokens.guard.unit"  # tokens or usd
OTEL_TOKENS_GUARD_WINDOW: Final = "otel_tokens.guard.window"
OTEL_TOKENS_GUARD_USED: Final = "otel_tokens.guard.used"
OTEL_TOKENS_GUARD_RESERVED: Final = "otel_tokens.guard.reserved"  # in flight in this process
OTEL_TOKENS_GUARD_LIMIT: Final = "otel_tokens.guard.limit"
OTEL_TOKENS_GUARD_ESTIMATE: Final = "otel_tokens.guard.estimate"  # this call, in the budget's unit
OTEL_TOKENS_GUARD_RETRY_AFTER: Final = "otel_tokens.guard.retry_after_seconds"
OTEL_TOKENS_GUARD_MODEL: Final = "otel_tokens.guard.model"  # the model a downgrade switched to
#: Span event: something the guard saved this call (a `compress` rewrite, a response-cache hit).
#: The collector counts `llm_tokens_saved_total{reason}` from these events.
OTEL_TOKENS_GUARD_SAVED_EVENT: Final = "otel_tokens.guard.saved"
OTEL_TOKENS_GUARD_SAVED_REASON: Final = "otel_tokens.guard.saved.reason"  # compressed, cached
OTEL_TOKENS_GUARD_SAVED_TOKENS: Final = "otel_tokens.guard.saved.tokens"  # tokens not sent / not billed
SAVED_COMPRESSED: Final = "compressed"
SAVED_CACHED: Final = "cached"
#: On the `compress` decision event (and the saved event): the pressure point and the request's
#: input tokens before and after (as the guard's tokenizer counts them) and the target.
OTEL_TOKENS_GUARD_COMPRESS_LEVEL: Final = "otel_tokens.guard.compress.level"  # moderate, aggressive
OTEL_TOKENS_GUARD_COMPRESS_TOKENS_BEFORE: Final = "otel_tokens.guard.compress.tokens_before"
OTEL_TOKENS_GUARD_COMPRESS_TOKENS_AFTER: Final = "otel_tokens.guard.compress.tokens_after"
OTEL_TOKENS_GUARD_COMPRESS_TARGET: Final = "otel_tokens.guard.compress.target_tokens"
#: Span attribute: True when the response came from the response cache (no provider call; the
#: usage on the span is then 0, and the saved event carries what the call would have used).
OTEL_TOKENS_CACHE_HIT: Final = "otel_tokens.cache.hit"
#: Span event: a runaway detector fired on this call (`kind`: one of RUNAWAY_KINDS).
OTEL_TOKENS_GUARD_RUNAWAY_EVENT: Final = "otel_tokens.guard.runaway"
OTEL_TOKENS_GUARD_RUNAWAY_KIND: Final = "otel_tokens.guard.runaway.kind"
OTEL_TOKENS_GUARD_RUNAWAY_KEY: Final = "otel_tokens.guard.runaway.key"  # task_id=... or session=...
OTEL_TOKENS_GUARD_RUNAWAY_VALUE: Final = "otel_tokens.guard.runaway.value"  # what was seen
OTEL_TOKENS_GUARD_RUNAWAY_THRESHOLD: Final = "otel_tokens.guard.runaway.threshold"  # what fires
OTEL_TOKENS_GUARD_RUNAWAY_STOPPED: Final = "otel_tokens.guard.runaway.stopped"  # True: TaskStopped
RUNAWAY_INSTANCE_OVER_LIMIT: Final = "instance_over_limit"
RUNAWAY_REPEATED_REQUEST: Final = "repeated_request"
RUNAWAY_RISING_INPUT: Final = "rising_input"
RUNAWAY_CACHE_EXPIRED: Final = "cache_expired"
RUNAWAY_STOPPED: Final = "stopped"  # a call of a task already stopped
RUNAWAY_KINDS: Final = (
    RUNAWAY_INSTANCE_OVER_LIMIT, RUNAWAY_REPEATED_REQUEST, RUNAWAY_RISING_INPUT, RUNAWAY_CACHE_EXPIRED,
    RUNAWAY_STOPPED,
)  # fmt: skip

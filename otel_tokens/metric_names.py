"""Every Prometheus metric and label name otel-tokens exports, defined once.

Users' dashboards, alert rules and scripts are written against these names, so they are spelled
here and nowhere else: the aggregator, the budget ledger, the exposition, the rule and dashboard
renderers, the demo and the CLI import them. A name that changes here changes everywhere (and the
golden tests of the rendered files fail, as they should). Counter names carry their `_total`
suffix as exposed; histogram names are the family name (`_bucket`, `_sum`, `_count` are derived).
"""

from __future__ import annotations

from typing import Final

# --- token types: the values of the `token_type` label, disjoint so a sum is the total ----------
TOKEN_TYPES: Final[tuple[str, ...]] = ("input", "output", "cache_read", "cache_write", "reasoning")

# --- label names --------------------------------------------------------------------------------
AGENT: Final = "agent"
TASK: Final = "task"
TASK_ID: Final = "task_id"
MODEL: Final = "model"
PROVIDER: Final = "provider"
USER: Final = "user"
SESSION: Final = "session"
WORKFLOW: Final = "workflow"
STEP: Final = "step"
OPERATION: Final = "operation"
TOKEN_TYPE: Final = "token_type"
STATUS: Final = "status"
REASON: Final = "reason"
METRIC: Final = "metric"
BUDGET: Final = "budget"
WINDOW: Final = "window"
UNIT: Final = "unit"
ACTION: Final = "action"
#: On the task histograms: the outcome of the task's deterministic checks (`otel_tokens.verify`).
VERIFIED: Final = "verified"
#: On every generated alert: the P1/P2/P3 that Alertmanager routes by.
SEVERITY: Final = "severity"

#: The default dimensions of the usage metrics (configurable in the collector).
DEFAULT_DIMENSIONS: Final[tuple[str, ...]] = (AGENT, TASK, MODEL, PROVIDER)
#: The task histograms' labels: a task is owned by one agent; model is the one that did most of its
#: work (most tokens); status says whether its scope raised; verified whether its checks passed
#: (`VERIFIED_VALUES`). Cost per passed task by task type and model reads these.
TASK_LABELS: Final[tuple[str, ...]] = (AGENT, TASK, MODEL, STATUS, VERIFIED)
#: The values of `verified`: every check reported for the task passed / at least one failed / none was
#: reported. `none` is also what a task gets whose verdict arrived too late (see the README).
VERIFIED_PASSED: Final = "passed"
VERIFIED_FAILED: Final = "failed"
VERIFIED_NONE: Final = "none"
VERIFIED_VALUES: Final[tuple[str, ...]] = (VERIFIED_PASSED, VERIFIED_FAILED, VERIFIED_NONE)

# --- usage metrics (the aggregator) ---------------------------------------------------------------
TOKENS: Final = "llm_tokens_total"
COST: Final = "llm_cost_usd_total"
REQUESTS: Final = "llm_requests_total"
ESTIMATED: Final = "llm_estimated_tokens_total"
INPUT_HISTOGRAM: Final = "llm_request_input_tokens"
TASK_TOKENS: Final = "llm_task_tokens"
TASK_COST: Final = "llm_task_cost_usd"

# --- the collector's own health -------------------------------------------------------------------
SPANS_RECEIVED: Final = "otel_tokens_spans_received_total"
SPANS_REJECTED: Final = "otel_tokens_spans_rejected_total"
DUPLICATES_DROPPED: Final = "otel_tokens_duplicates_dropped_total"
#: A counter family (exposed with `_total`): spans the dedupe memory's size cap forgot inside their window.
DEDUPE_FORGOTTEN_EARLY: Final = "otel_tokens_dedupe_forgotten_early"
DEDUPE_REMEMBERED: Final = "otel_tokens_dedupe_remembered_spans"
SERIES_OVERFLOW: Final = "otel_tokens_series_overflow_total"
UNPRICED: Final = "otel_tokens_unpriced_records_total"
#: Records whose token counts contradicted themselves and were made consistent, by `reason`.
RECORDS_CLAMPED: Final = "otel_tokens_records_clamped_total"
#: Records whose source reported an enrichment step failed (pricing, estimation, attribution), by `step`.
ENRICHMENT_FAILURES: Final = "otel_tokens_enrichment_failures_total"
#: Verdicts (`otel_tokens.verify`) that arrived after their task had been observed (as `verified="none"`).
VERDICTS_LATE: Final = "otel_tokens_verdicts_late_total"

# --- budget ledger gauges (exact windows, what budget alerts read) --------------------------------
BUDGET_USED: Final = "llm_budget_used"
BUDGET_LIMIT: Final = "llm_budget_limit"
BUDGET_RATIO: Final = "llm_budget_usage_ratio"
BUDGET_WINDOW_REMAINING: Final = "llm_budget_window_remaining_seconds"
#: A counter family; exposed with the `_total` suffix.
BUDGET_CONSUMED: Final = "llm_budget_consumed"
BUDGET_CONSUMED_TOTAL: Final = "llm_budget_consumed_total"
TASK_INSTANCE_TOKENS: Final = "llm_task_instance_tokens"
TASK_INSTANCE_LIMIT: Final = "llm_task_instance_limit"

# --- the in-process guard's decisions -------------------------------------------------------------
#: Guard decisions by `agent`, `budget` and `action` (what the guard did: GUARD_OUTCOMES).
GUARD_ACTIONS: Final = "llm_guard_actions_total"
#: Tokens the guard kept from reaching a provider, by `agent`, `budget` and `reason` (SAVED_REASONS).
TOKENS_SAVED: Final = "llm_tokens_saved_total"
#: The `action` values of `llm_guard_actions_total` (the guard's `otel_tokens.guard.outcome`);
#: anything else a newer agent sends is counted as `other`, so the label stays bounded.
GUARD_OUTCOMES: Final[tuple[str, ...]] = (
    "blocked", "deferred", "waited", "downgraded", "warned", "no_cheaper_model",
    "over_limit_after_downgrade", "not_implemented", "compressed", "cached", "stopped", "other",
)  # fmt: skip
#: The `reason` values of `llm_tokens_saved_total`.
SAVED_REASONS: Final[tuple[str, ...]] = ("blocked", "deferred", "downgraded", "compressed", "cached")

# --- alerts that act: the `action` label values the collector turns into stop orders --------------
#: On RunawayTask: the named `task_id`'s next call raises TaskStopped.
KILL_AGENT_TASK: Final = "kill_agent_task"
#: On BudgetExceeded of a budget with `pause_noncritical: true`: non-critical agents in its scope
#: stop. The label the rendered rules carry, spelled as issue 6 names it.
PAUSE_ALL_NONCRITICAL_AGENTS: Final = "pause_all_noncritical_agents"
#: The budget-file flag, the stop order's `kind` (and `TaskStopped.kind`), and the label value
#: rules rendered before `pause_all_noncritical_agents` carried: still accepted as one.
PAUSE_NONCRITICAL: Final = "pause_noncritical"
#: Every `action` label value that pauses non-critical agents (the rendered one first).
PAUSE_ACTIONS: Final[tuple[str, ...]] = (PAUSE_ALL_NONCRITICAL_AGENTS, PAUSE_NONCRITICAL)
#: Every `action` label value the collector and guards turn into stop orders.
STOP_ACTIONS: Final[tuple[str, ...]] = (KILL_AGENT_TASK, *PAUSE_ACTIONS)

#: The value of `metric` on the overflow counter, and of every label in an overflow series.
OVERFLOW: Final = "__overflow__"
#: A label value the record did not carry.
UNKNOWN: Final = "unknown"


def histogram_series(family: str) -> tuple[str, str, str]:
    """The (`_bucket`, `_sum`, `_count`) series names of a histogram family."""
    return f"{family}_bucket", f"{family}_sum", f"{family}_count"

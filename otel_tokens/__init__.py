"""otel-tokens: every LLM token visible, attributed and capped.

The public API is deliberately small:

- `instrument()` / `uninstrument()` — patch the OpenAI and Anthropic SDKs to emit GenAI spans;
  `instrument(budgets="budgets.yaml")` also enforces the budgets before each call.
- `BudgetExceeded` / `BudgetDeferred` — what a call stopped by a budget raises;
  `TaskStopped` — what a call of a task instance stopped as a runaway raises.
- `attribute(agent=..., task=..., ...)` — context manager / decorator attributing calls.
- `current_attribution()` — what attribution is in force here.
- `verify(passed, task_id=None, check="tests")` — report a deterministic check of a task instance
  (also `with verify(check=...):` around the check): cost per *verified* task.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import TracerProvider

from otel_tokens.attribution import attribute, current_attribution, verify
from otel_tokens.guard.errors import BudgetDeferred, BudgetExceeded, TaskStopped

if TYPE_CHECKING:
    from collections.abc import Callable

    from otel_tokens.budgets.spec import BudgetFile
    from otel_tokens.guard import Guard

__all__ = [
    "BudgetDeferred",
    "BudgetExceeded",
    "TaskStopped",
    "attribute",
    "current_attribution",
    "instrument",
    "uninstrument",
    "verify",
]

_instrumentor: Any = None


def instrument(
    tracer_provider: TracerProvider | None = None,
    *,
    capture_content: bool | None = None,
    budgets: str | Path | BudgetFile | Guard | None = None,
    summarizer: Callable[[list[Any]], str] | None = None,
) -> None:
    """Instrument every installed supported SDK. Idempotent; undo with `uninstrument()`.

    Spans go to `tracer_provider`, else the global one. When the application configured none, one
    is set up from the standard `OTEL_*` variables (OTLP/HTTP to http://127.0.0.1:4318 by default;
    `OTEL_TRACES_EXPORTER=none` turns it off) and the `otel_tokens` logger says so once.

    `capture_content=None` reads OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT (off by default):
    prompts and completions are never recorded unless asked for.

    `budgets` (a budgets.yaml path; default: OTEL_TOKENS_BUDGETS_FILE, else none) turns on the
    in-process guard: each call is estimated and reserved against every matching budget before it
    is sent, and the budget's `action` applies when it would pass the limit. A broken budget file
    raises `otel_tokens.budgets.loader.BudgetFileError` listing every problem; nothing is patched.
    A `Guard` may be passed instead, e.g. one built over another `BudgetState`.

    `summarizer` (older messages, in the SDK's own format → a summary text) is what a `compress`
    budget calls for the older turns it shrinks; without one they are dropped, oldest first.
    """
    global _instrumentor
    from otel_tokens.instrumentation import OtelTokensInstrumentor

    if _instrumentor is None:
        _instrumentor = OtelTokensInstrumentor()
    if not _instrumentor.is_instrumented_by_opentelemetry:
        _instrumentor.instrument(
            tracer_provider=tracer_provider,
            capture_content=capture_content,
            budgets=budgets,
            summarizer=summarizer,
            raise_budget_errors=True,
        )


def uninstrument() -> None:
    """Remove every patch `instrument()` applied."""
    if _instrumentor is not None and _instrumentor.is_instrumented_by_opentelemetry:
        _instrumentor.uninstrument()

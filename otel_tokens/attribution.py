"""Attribution scopes: who (agent, user, session) spends tokens on what (task, step).

A scope lives in the OpenTelemetry context, so it follows threads and asyncio tasks exactly as
spans do, and is mirrored into W3C baggage so that the standard propagators carry it across
process boundaries (an agent calling another agent over HTTP keeps the caller's task and user).
Inside a process the context value wins over baggage; baggage only fills what the context lacks.

`current_attribution()` runs on every instrumented call, so it is cheap in the common cases: no
baggage returns the scope (or one shared empty `Attribution`) as is, and the baggage-derived result
is remembered for the last (scope, baggage) pair seen, since a loop of calls inside one
`attribute()` block sees the same pair every time.

A scope that introduces a task instance (a `task_id` not already in force here, from an outer scope
or incoming baggage) also opens an INTERNAL `task {name}` span for its lifetime, marked
`otel_tokens.task.scope`: the task's LLM call spans nest under it, and its end is how the collector
learns the instance completed (only the collector sees every process's calls, so only it knows the
instance's total). A process that received the task id in baggage never opens one, so a task is
completed once, by the process that owns it. The span goes through the tracer `instrument()` made
from the user's tracer provider (`set_task_tracer`); not instrumented, no span. When the span has
ended, the instance's `TaskCompletion` record goes to the in-process sinks (`otel_tokens.sinks`),
just as an LLM call's `UsageRecord` does: in-process consumers never parse our spans back.

`verify(passed, task_id=None, check="tests")` reports a deterministic check of a task instance (the
task in force here by default): an INTERNAL `verify {check}` span carrying the task id and the
verdict, and a `Verdict` record to the in-process sinks. A separate span rather than an event on the
task span, because the check may run after the task's scope ended or in another process (a CI job
that got the task id in baggage); the collector joins verdicts to tasks by task id, whichever
arrives first, and a task's verdicts combine as "all passed", so a re-sent span changes nothing.

Agent frameworks name the agent on an `invoke_agent` span (GenAI semconv) rather than with
`attribute()`: `framework_attribution()` reads the agent and workflow from such a span when it is
the current one, for calls whose scopes name none.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from types import TracebackType
from typing import Any, TypeVar, cast

from opentelemetry import baggage, context, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from otel_tokens import semconv as sc
from otel_tokens._safety import swallow_internal_errors
from otel_tokens.record import ATTRIBUTION_FIELDS, Attribution, TaskCompletion, Verdict
from otel_tokens.semconv import BAGGAGE_PREFIX
from otel_tokens.sinks import record_sinks

_ATTRIBUTION_KEY = context.create_key("otel_tokens.attribution")
_MAX_VALUE_LENGTH = 256  # an attribution value is an identifier, not a document
_MAX_CHECK_LENGTH = 128  # a check's name is an identifier too

F = TypeVar("F", bound=Callable[..., Any])

#: What `current_attribution()` returns when nothing is in force (one shared, immutable object).
NO_ATTRIBUTION = Attribution()
#: (scope, a copy of the baggage entries, their merged attribution) of the last lookup with baggage.
#: Replaced whole, never mutated, so concurrent readers see one consistent triple.
_last: tuple[Attribution | None, dict[str, object], Attribution] = (None, {}, NO_ATTRIBUTION)

#: Attribution field → the span attribute carrying it (LLM call spans and task spans alike).
SPAN_ATTRIBUTES: dict[str, str] = {
    "agent": sc.GEN_AI_AGENT_NAME,
    "task": sc.OTEL_TOKENS_TASK,
    "task_id": sc.OTEL_TOKENS_TASK_ID,
    "user": sc.OTEL_TOKENS_USER,
    "session": sc.GEN_AI_CONVERSATION_ID,
    "step": sc.OTEL_TOKENS_STEP,
    "workflow": sc.GEN_AI_WORKFLOW_NAME,
}
_SPAN_ATTRIBUTE_PAIRS: tuple[tuple[str, str], ...] = tuple(SPAN_ATTRIBUTES.items())

#: The tracer task spans are started with; None while otel-tokens is not instrumented.
_task_tracer: trace.Tracer | None = None
#: span id → (agent, workflow) the span runs under, from the instrumentation's span processor
#: (`instrumentation/_agent_scopes.py`); None while not instrumented.
_agent_scopes: Callable[[int], tuple[str | None, str | None] | None] | None = None


def set_agent_scopes(lookup: Callable[[int], tuple[str | None, str | None] | None] | None) -> None:
    """Called by the instrumentation, like `set_task_tracer`."""
    global _agent_scopes
    _agent_scopes = lookup


def set_task_tracer(tracer: trace.Tracer | None) -> None:
    """Called by the instrumentation (`instrument()` / `uninstrument()`): attribution never imports
    it, since the instrumentation imports attribution."""
    global _task_tracer
    _task_tracer = tracer


def attribution_attributes(attribution: Attribution) -> dict[str, AttributeValue]:
    """The span attributes of an attribution (only the fields that are set)."""
    if attribution is NO_ATTRIBUTION:  # the common case: no scope, no baggage
        return {}
    values = ((key, getattr(attribution, name)) for name, key in _SPAN_ATTRIBUTE_PAIRS)
    return {key: value for key, value in values if value is not None}


def current_attribution(ctx: context.Context | None = None) -> Attribution:
    """The attribution in force: context scopes overlaid on whatever arrived in baggage."""
    global _last
    if ctx is None:
        ctx = context.get_current()
    scoped = context.get_value(_ATTRIBUTION_KEY, ctx)
    if not isinstance(scoped, Attribution):
        scoped = None
    entries = baggage.get_all(ctx)
    if not entries:
        return NO_ATTRIBUTION if scoped is None else scoped
    last_scope, last_entries, last_result = _last
    if (last_scope is scoped or last_scope == scoped) and last_entries == entries:
        return last_result
    result = _from_baggage(entries)
    if scoped is not None:
        result = result.merged(scoped)
    _last = (scoped, dict(entries), result)
    return result


def _from_baggage(entries: Mapping[str, object]) -> Attribution:
    values = {
        name: str(entries[BAGGAGE_PREFIX + name])[:_MAX_VALUE_LENGTH]
        for name in ATTRIBUTION_FIELDS
        if BAGGAGE_PREFIX + name in entries
    }
    return Attribution(**values)


def _clean(fields: dict[str, object]) -> Attribution:
    unknown = set(fields) - set(ATTRIBUTION_FIELDS)
    if unknown:
        raise TypeError(
            f"attribute() got unknown field(s) {sorted(unknown)}; expected some of {list(ATTRIBUTION_FIELDS)}"
        )
    return Attribution(**{k: str(v)[:_MAX_VALUE_LENGTH] for k, v in fields.items() if v is not None})


class attribute:
    """Attribute every LLM call inside this scope to an agent, task, user, session or step.

    Use as a context manager (`with attribute(agent="planner", task="research"):`) or a decorator
    on sync and async functions. Nested scopes merge and the inner one wins field by field.
    """

    def __init__(
        self,
        *,
        agent: str | None = None,
        task: str | None = None,
        task_id: str | None = None,
        user: str | None = None,
        session: str | None = None,
        step: str | int | None = None,
        workflow: str | None = None,
    ) -> None:
        self._scope = _clean(
            {
                "agent": agent,
                "task": task,
                "task_id": task_id,
                "user": user,
                "session": session,
                "step": step,
                "workflow": workflow,
            }
        )
        #: per entry (one object may be entered again, nested): the context token, the task span
        #: this entry opened (if any) and the attribution in force
        self._tokens: list[tuple[object, trace.Span | None, Attribution]] = []

    def __enter__(self) -> Attribution:
        outer = current_attribution()
        merged = outer.merged(self._scope)
        ctx = context.set_value(_ATTRIBUTION_KEY, merged)
        for name, value in merged.items():
            if value is not None:
                ctx = baggage.set_baggage(BAGGAGE_PREFIX + name, value, ctx)
        task_id = self._scope.task_id
        span = None
        if task_id and task_id != outer.task_id and _task_tracer is not None:
            span = _start_task_span(_task_tracer, merged, ctx)
            if span is not None:
                ctx = trace.set_span_in_context(span, ctx)
        self._tokens.append((context.attach(ctx), span, merged))
        return merged

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        token, span, merged = self._tokens.pop()
        context.detach(cast(Any, token))
        if span is not None:
            _end_task_span(span, exc)
            if record_sinks.active:
                _publish_completion(span, merged, exc)

    def __call__(self, func: F) -> F:
        scope = self._scope

        def fresh() -> attribute:
            # A new scope object per call: one decorated function may run concurrently.
            new = attribute.__new__(attribute)
            new._scope, new._tokens = scope, []
            return new

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with fresh():
                    return await func(*args, **kwargs)

            return cast(F, async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with fresh():
                return func(*args, **kwargs)

        return cast(F, wrapper)


def _start_task_span(tracer: trace.Tracer, merged: Attribution, ctx: context.Context) -> trace.Span | None:
    """The span of one task instance, a child of whatever span is current (so the task tree shows
    in traces). It carries the task-level attribution; a step is per call, not per task."""
    try:
        attributes = attribution_attributes(merged)
        attributes.pop(sc.OTEL_TOKENS_STEP, None)
        attributes[sc.OTEL_TOKENS_TASK_SCOPE] = True
        return tracer.start_span(f"task {merged.task or 'unnamed'}", ctx, SpanKind.INTERNAL, attributes)
    except Exception:
        with swallow_internal_errors("attribute: task span"):
            raise
        return None


def _end_task_span(span: trace.Span, exc: BaseException | None) -> None:
    """The task instance is over: an exception escaping the scope marks it failed."""
    try:
        if exc is not None:
            error_type = type(exc).__qualname__
            span.set_attribute(sc.ERROR_TYPE, error_type)
            span.set_status(Status(StatusCode.ERROR, error_type))
        span.end()
    except Exception:
        with swallow_internal_errors("attribute: task span end"):
            raise


def _publish_completion(span: trace.Span, merged: Attribution, exc: BaseException | None) -> None:
    """The task instance's completion record, with its span's ids (so a consumer that also sees the
    span, or a re-sent copy of it, observes the instance once)."""
    try:
        ctx = span.get_span_context()
        completion = TaskCompletion(
            merged.task_id or "",
            merged.task,
            merged.agent,
            "error" if exc is not None else "ok",
            trace_id=ctx.trace_id,
            span_id=ctx.span_id,
            end_time_ns=getattr(span, "end_time", None) or time.time_ns(),  # SDK spans have it
        )
        record_sinks.publish(completion)
    except Exception:
        with swallow_internal_errors("attribute: task completion"):
            raise


def framework_attribution(attribution: Attribution, ctx: context.Context | None = None) -> Attribution:
    """`attribution` with the agent (and workflow) an agent framework named filled in where no scope
    named one: the current span's, when it is an `invoke_agent` span (`gen_ai.agent.name`, and its
    `gen_ai.workflow.name`) or an `invoke_workflow` span (its workflow); else the scope the current
    span runs under, as the instrumentation's span processor noted it (a tool span under an agent)."""
    if attribution.agent is not None and attribution.workflow is not None:
        return attribution
    span = trace.get_current_span(ctx)
    attributes = getattr(span, "attributes", None)  # SDK spans have them
    operation = attributes.get(sc.GEN_AI_OPERATION_NAME) if attributes else None
    agent: object = None
    workflow: object = None
    if operation == sc.OPERATION_INVOKE_AGENT or operation == sc.OPERATION_INVOKE_WORKFLOW:
        assert attributes is not None
        if operation == sc.OPERATION_INVOKE_AGENT:
            agent = attributes.get(sc.GEN_AI_AGENT_NAME)
        workflow = attributes.get(sc.GEN_AI_WORKFLOW_NAME)
    lookup = _agent_scopes
    if lookup is not None and (agent is None or workflow is None):
        noted = lookup(span.get_span_context().span_id)
        if noted is not None:
            agent, workflow = agent or noted[0], workflow or noted[1]
    if agent is None and workflow is None:
        return attribution
    found = {
        name: value[:_MAX_VALUE_LENGTH]
        for name, value in (("agent", agent), ("workflow", workflow))
        if isinstance(value, str) and value and getattr(attribution, name) is None
    }
    return replace(attribution, **found) if found else attribution


class verify:
    """Report a deterministic check (tests, a linter, a schema validation) of a task instance.

    `verify(passed)` records a verdict now; `with verify(check="lint"):` wraps the check itself and
    records "passed" when the block exits normally, "failed" when it raises (the exception
    propagates unchanged). The task is `task_id`, else the one the current `attribute()` scope (or
    incoming baggage) names; with neither, a ValueError says so. The collector exports each task's
    tokens and cost by `verified` = passed (every check reported passed) / failed / none.
    """

    def __init__(self, passed: bool | None = None, task_id: str | None = None, check: str = "tests") -> None:
        if passed is not None and not isinstance(passed, bool):
            raise TypeError(f"verify(): passed must be True or False, got {passed!r}")
        if not isinstance(check, str) or not check:
            raise TypeError(f"verify(): check must be a non-empty string, got {check!r}")
        in_force = current_attribution()
        task_id = in_force.task_id if task_id is None else str(task_id)[:_MAX_VALUE_LENGTH]
        if not task_id:
            raise ValueError(
                "verify(): no task to verify: pass task_id=..., or call it inside an "
                "attribute(task_id=...) scope"
            )
        self.task_id, self.check, self.passed = task_id, check[:_MAX_CHECK_LENGTH], passed
        self._attribution = in_force if in_force.task_id == task_id else Attribution(task_id=task_id)
        self._span: trace.Span | None = None
        self._token: object | None = None
        if passed is not None:
            self._span = self._start()
            self._finish(passed, None)

    def __enter__(self) -> verify:
        if self.passed is not None or self._token is not None:
            raise TypeError("verify(passed) already recorded its verdict: use `with verify(check=...):`")
        self._span = self._start()
        if self._span is not None:
            self._token = context.attach(trace.set_span_in_context(self._span))
        else:
            self._token = False  # entered, no span (not instrumented)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._token:
            context.detach(cast(Any, self._token))
        self.passed = exc is None
        self._finish(self.passed, exc)

    def _start(self) -> trace.Span | None:
        if _task_tracer is None:
            return None
        try:
            attributes = attribution_attributes(self._attribution)
            attributes.pop(sc.OTEL_TOKENS_STEP, None)
            attributes[sc.OTEL_TOKENS_VERIFY_CHECK] = self.check
            return _task_tracer.start_span(
                f"verify {self.check}", kind=SpanKind.INTERNAL, attributes=attributes
            )
        except Exception:
            with swallow_internal_errors("verify: span"):
                raise
            return None

    def _finish(self, passed: bool, exc: BaseException | None) -> None:
        """The verdict goes on the span (set last: it is what makes the span a verdict) and, once
        the span ended, to the in-process sinks with the span's ids."""
        span = self._span
        if span is None:
            return
        try:
            span.set_attribute(sc.OTEL_TOKENS_VERIFY_PASSED, passed)
            if exc is not None:
                span.set_attribute(sc.ERROR_TYPE, type(exc).__qualname__)
                span.set_status(Status(StatusCode.ERROR, type(exc).__qualname__))
            span.end()
            if record_sinks.active:
                ctx = span.get_span_context()
                end = getattr(span, "end_time", None) or time.time_ns()
                record_sinks.publish(
                    Verdict(self.task_id, passed, self.check, ctx.trace_id, ctx.span_id, end)
                )
        except Exception:
            with swallow_internal_errors("verify: verdict"):
                raise

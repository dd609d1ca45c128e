"""Attribution scopes: who (agent, user, session) spends tokens on what (task, step).

A scope lives in the OpenTelemetry context, so it follows threads and asyncio tasks exactly as
spans do, and is mirrored into W3C baggage so that the standard propagators carry it across
process boundaries (an agent calling another agent over HTTP keeps the caller's task and user).
Inside a process the context value wins over baggage; baggage only fills what the context lacks.

`current_attribution()` runs on every instrumented call, so it is cheap in the common cases: no
baggage returns the scope (or one shared empty `Attribution`) as is, and the baggage-derived result
is remembered for the last (scope, baggage) pair seen, since a loop of calls inside one
`attribute()` block sees the same pair every time.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, TypeVar, cast

from opentelemetry import baggage, context

from otel_tokens.record import ATTRIBUTION_FIELDS, Attribution
from otel_tokens.semconv import BAGGAGE_PREFIX

_ATTRIBUTION_KEY = context.create_key("otel_tokens.attribution")
_MAX_VALUE_LENGTH = 256  # an attribution value is an identifier, not a document

F = TypeVar("F", bound=Callable[..., Any])

#: What `current_attribution()` returns when nothing is in force (one shared, immutable object).
NO_ATTRIBUTION = Attribution()
#: (scope, a copy of the baggage entries, their merged attribution) of the last lookup with baggage.
#: Replaced whole, never mutated, so concurrent readers see one consistent triple.
_last: tuple[Attribution | None, dict[str, object], Attribution] = (None, {}, NO_ATTRIBUTION)


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
        self._tokens: list[object] = []

    def __enter__(self) -> Attribution:
        merged = current_attribution().merged(self._scope)
        ctx = context.set_value(_ATTRIBUTION_KEY, merged)
        for name, value in merged.items():
            if value is not None:
                ctx = baggage.set_baggage(BAGGAGE_PREFIX + name, value, ctx)
        self._tokens.append(context.attach(ctx))
        return merged

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        context.detach(cast(Any, self._tokens.pop()))

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

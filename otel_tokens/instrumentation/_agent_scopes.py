"""Which agent (and workflow) each open span runs under, for calls deeper than the agent's span.

Agent frameworks open an `invoke_agent` span (GenAI semconv: `gen_ai.agent.name`) around an agent's
run, and often more spans under it (`execute_tool`, a chain step) before an LLM call is made. The
API gives a span no way to its ancestors, so `AgentScopes`, a span processor, notes at each span's
start the scope it inherits from its parent (or opens, for an `invoke_agent` / `invoke_workflow`
span) and forgets it at the span's end. Our call wrapper asks every live `AgentScopes` for the
current span's scope when no `attribute()` scope names the agent.

`instrument()` adds one to a tracer provider only when it set that provider up itself: an
application's own provider is left exactly as configured, and the application adds it
(`provider.add_span_processor(AgentScopes())`) if its agent spans sit more than one span above its
LLM calls (the current span is always looked at).

Only spans of the provider it was added to and of this process are seen (an agent span in a caller
process is the collector's to resolve). Memory: one small entry per open span under an agent,
bounded by `max_open`; nothing when no framework opens agent spans. Never raises into the app.
"""

from __future__ import annotations

import weakref

from opentelemetry import context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from otel_tokens import semconv as sc

__all__ = ["AgentScopes", "lookup"]

#: (agent, workflow) a span runs under
ScopeNames = tuple[str | None, str | None]


def _text(value: object) -> str | None:
    return value[:256] if isinstance(value, str) and value else None


class AgentScopes(SpanProcessor):
    """span id → (agent, workflow) of the agent/workflow scope it runs in, for open spans."""

    def __init__(self, max_open: int = 100_000) -> None:
        self.max_open = max_open
        self.active = True
        self._scopes: dict[int, ScopeNames] = {}
        _live.add(self)

    def lookup(self, span_id: int) -> ScopeNames | None:
        return self._scopes.get(span_id)

    def on_start(self, span: Span, parent_context: context.Context | None = None) -> None:
        if not self.active:
            return
        parent = span.parent
        inherited = self._scopes.get(parent.span_id) if parent is not None else None
        attributes = span.attributes
        operation = attributes.get(sc.GEN_AI_OPERATION_NAME) if attributes else None
        if operation == sc.OPERATION_INVOKE_AGENT or operation == sc.OPERATION_INVOKE_WORKFLOW:
            assert attributes is not None
            agent = (
                _text(attributes.get(sc.GEN_AI_AGENT_NAME))
                if operation == sc.OPERATION_INVOKE_AGENT
                else None
            )
            workflow = _text(attributes.get(sc.GEN_AI_WORKFLOW_NAME))
            outer_agent, outer_workflow = inherited or (None, None)
            inherited = (agent or outer_agent, workflow or outer_workflow)
        if inherited is not None and inherited != (None, None) and len(self._scopes) < self.max_open:
            self._scopes[span.context.span_id] = inherited

    def shutdown(self) -> None:
        self.active = False
        self._scopes.clear()
        _live.discard(self)

    def on_end(self, span: ReadableSpan) -> None:
        if self._scopes:
            ctx = span.get_span_context()
            if ctx is not None:
                self._scopes.pop(ctx.span_id, None)


#: Every AgentScopes not shut down (weakly: a provider dropped takes its processor with it).
_live: weakref.WeakSet[AgentScopes] = weakref.WeakSet()


def lookup(span_id: int) -> ScopeNames | None:
    """The scope the span runs under, as any live `AgentScopes` noted it (normally there is one)."""
    for scopes in list(_live):
        found = scopes.lookup(span_id)
        if found is not None:
            return found
    return None

"""Drive another instrumentation's own spans through the real SDK into a real collector.

Each case instruments one SDK with one third-party instrumentation (its own `Instrumentor`, bound to
a tracer provider of ours whose resource names the service), makes three calls against the fake
provider — sync, stream, async — and exports the spans over OTLP/HTTP to a real `CollectorService`.
The tests then read `/metrics` as a user would. The calls are chosen to make the provider report
cache tokens (OpenAI's `prompt_cache_key`; an Anthropic system block marked `cache_control`, written
by the first call, read by the next two), since that is where instrumentations differ.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import otel_tokens
from otel_tokens import metric_names as mn
from otel_tokens import semconv as sc
from otel_tokens.collector import CollectorConfig, CollectorService
from otel_tokens.demo.fake_provider import FakeProvider
from otel_tokens.instrumentation import AgentScopes
from otel_tokens.record import TokenCounts
from tests import prom_text

SERVICE = "interop-service"
AGENT = "interop-agent"
OPENAI_MODEL = "gpt-4o-mini"
ANTHROPIC_MODEL = "claude-sonnet-4-6"
_SYSTEM = "You are a careful assistant for the interop test. " * 40  # the cached prefix


@dataclass(frozen=True)
class Case:
    """One instrumentation of one SDK: `module:Class` of its instrumentor."""

    name: str
    sdk: str  # "openai" or "anthropic"
    instrumentor: str
    #: Passed to its `instrument()` besides the tracer provider.
    options: tuple[tuple[str, Any], ...] = ()
    #: True for an instrumentation that ignores `tracer_provider` and uses the global one (OpenLIT).
    global_provider: bool = False

    #: `module:callable` to call once before instrumenting (OpenLIT's config singleton).
    prepare: str | None = None

    def make(self) -> Any:
        if self.prepare is not None:
            module, name = self.prepare.split(":")
            getattr(importlib.import_module(module), name)()
        module, cls = self.instrumentor.split(":")
        return getattr(importlib.import_module(module), cls)()


@dataclass
class Outcome:
    """What the collector exposed after one run, and what the provider reported."""

    tokens: dict[str, float]  # by token_type
    requests_by_agent: dict[str, float]
    reported: list[TokenCounts]  # per call, in order: sync, stream, async
    duplicates_dropped: float


def _openai_calls(fake: FakeProvider) -> None:
    import openai

    kwargs: dict[str, Any] = {"model": OPENAI_MODEL, "prompt_cache_key": "interop"}
    client = openai.OpenAI(base_url=fake.openai_base_url, api_key="k", max_retries=0)
    client.chat.completions.create(messages=[{"role": "user", "content": "one two three"}], **kwargs)
    stream = client.chat.completions.create(
        messages=[{"role": "user", "content": "stream four five"}],
        stream=True,
        stream_options={"include_usage": True},
        **kwargs,
    )
    for _ in stream:
        pass
    client.close()

    async def call() -> None:
        aclient = openai.AsyncOpenAI(base_url=fake.openai_base_url, api_key="k", max_retries=0)
        await aclient.chat.completions.create(messages=[{"role": "user", "content": "async six"}], **kwargs)
        await aclient.close()

    asyncio.run(call())


def _anthropic_calls(fake: FakeProvider) -> None:
    import anthropic

    prefix = f"Run {len(fake.requests)}. {_SYSTEM}"  # a new prefix per run: its first call writes it
    system = [{"type": "text", "text": prefix, "cache_control": {"type": "ephemeral"}}]
    kwargs: dict[str, Any] = {"model": ANTHROPIC_MODEL, "max_tokens": 64, "system": system}
    client = anthropic.Anthropic(base_url=fake.anthropic_base_url, api_key="k", max_retries=0)
    client.messages.create(messages=[{"role": "user", "content": "one two three"}], **kwargs)
    stream = client.messages.create(
        messages=[{"role": "user", "content": "stream four five"}], stream=True, **kwargs
    )
    for _ in stream:
        pass
    client.close()

    async def call() -> None:
        aclient = anthropic.AsyncAnthropic(base_url=fake.anthropic_base_url, api_key="k", max_retries=0)
        await aclient.messages.create(messages=[{"role": "user", "content": "async six"}], **kwargs)
        await aclient.close()

    asyncio.run(call())


CALLS: dict[str, Callable[[FakeProvider], None]] = {"openai": _openai_calls, "anthropic": _anthropic_calls}


class _Switch(SpanExporter):
    """The global provider's exporter: each run points it at its own exporter (the global provider
    can be set once per process, runs need their own collector)."""

    target: SpanExporter | None = None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        target = self.target
        return target.export(spans) if target is not None else SpanExportResult.SUCCESS


_switch = _Switch()
_global: TracerProvider | None = None


def _global_provider() -> TracerProvider:
    global _global
    if _global is None:
        _global = TracerProvider(resource=Resource.create({sc.SERVICE_NAME: SERVICE}))
        _global.add_span_processor(SimpleSpanProcessor(_switch))
        _global.add_span_processor(AgentScopes())
        trace.set_tracer_provider(_global)
    return _global


@contextmanager
def _provider(exporter: SpanExporter, case: Case) -> Iterator[TracerProvider]:
    if case.global_provider:
        _switch.target = exporter
        try:
            yield _global_provider()
        finally:
            _switch.target = None
        return
    provider = TracerProvider(resource=Resource.create({sc.SERVICE_NAME: SERVICE}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    provider.add_span_processor(AgentScopes())  # our calls sit two spans under the agent's
    try:
        yield provider
    finally:
        provider.shutdown()


@contextmanager
def instrumented(case: Case, provider: TracerProvider, *, ours: str | None) -> Iterator[None]:
    """`case`'s instrumentation on, and ours with it: `ours="outer"` instruments ours last, so our
    wrapper runs outside theirs; `"inner"` first, inside theirs."""
    instrumentor = case.make()
    if ours == "inner":
        otel_tokens.instrument(tracer_provider=provider)
    instrumentor.instrument(tracer_provider=provider, **dict(case.options))
    if ours == "outer":
        otel_tokens.instrument(tracer_provider=provider)
    try:
        yield
    finally:
        if ours:
            otel_tokens.uninstrument()
        instrumentor.uninstrument()


def spans_of(
    case: Case, fake: FakeProvider, *, under_agent: bool = False, ours: str | None = None
) -> list[Any]:
    """The finished spans of one run, in memory (for looking at what an instrumentation emits)."""
    exporter = InMemorySpanExporter()
    with _provider(exporter, case) as provider, instrumented(case, provider, ours=ours):
        _run(case, fake, provider, under_agent)
    return list(exporter.get_finished_spans())


def _run(case: Case, fake: FakeProvider, provider: TracerProvider, under_agent: bool) -> None:
    if not under_agent:
        CALLS[case.sdk](fake)
        return
    framework = provider.get_tracer("agent-framework")
    attributes = {sc.GEN_AI_OPERATION_NAME: sc.OPERATION_INVOKE_AGENT, sc.GEN_AI_AGENT_NAME: AGENT}
    with (
        framework.start_as_current_span(
            f"invoke_agent {AGENT}", kind=SpanKind.INTERNAL, attributes=attributes
        ),
        framework.start_as_current_span("execute_tool lookup"),
    ):  # deeper than the direct parent
        CALLS[case.sdk](fake)


def run(case: Case, fake: FakeProvider, *, under_agent: bool = False, ours: str | None = None) -> Outcome:
    """Three calls instrumented by `case` (and ours, with `ours`), exported span by span over
    OTLP/HTTP to a fresh collector, and what it exposed."""
    fake.reset()
    config = CollectorConfig(http_port=0, grpc_port=0, metrics_port=0, dedupe_hold_seconds=1.0)
    with CollectorService(config) as collector:
        endpoint = f"http://127.0.0.1:{collector.http_port}/v1/traces"
        exporter = OTLPSpanExporter(endpoint=endpoint)
        with _provider(exporter, case) as provider, instrumented(case, provider, ours=ours):
            _run(case, fake, provider, under_agent)
        text = _settled(collector)
    tokens: dict[str, float] = {}
    for labels, v in prom_text.series(text, mn.TOKENS).items():
        token_type = dict(labels)[mn.TOKEN_TYPE]
        tokens[token_type] = tokens.get(token_type, 0.0) + v
    agents: dict[str, float] = {}
    for labels, v in prom_text.series(text, mn.REQUESTS).items():
        agent = dict(labels)[mn.AGENT]
        agents[agent] = agents.get(agent, 0.0) + v
    dropped = sum(prom_text.series(text, mn.DUPLICATES_DROPPED).values())
    return Outcome(tokens, agents, [u.tokens for u in fake.reported], dropped)


def _settled(collector: CollectorService) -> str:
    """/metrics once everything exported is counted. The SimpleSpanProcessor exported each span
    before the call returned, and the receiver ingests before it answers, so every span is in; a
    foreign span still held for its dedupe window is released as the collector's shutdown would."""
    collector.pipeline.flush(float("inf"))
    return prom_text.scrape(collector.metrics_port)


# --- what each instrumentation records, measured (see README "Interop") -------------------------

#: A known deviation: the provider's counts of the three calls → what the instrumentation records.
Deviation = Callable[[list[TokenCounts]], list[TokenCounts]]


def exact(calls: list[TokenCounts]) -> list[TokenCounts]:
    return calls


def no_cache_tokens(calls: list[TokenCounts]) -> list[TokenCounts]:
    """Cache reads are not recorded: they stay in the input total, counted as fresh input."""
    return [TokenCounts(input=t.input, output=t.output, reasoning=t.reasoning) for t in calls]


def stream_output_plus_one(calls: list[TokenCounts]) -> list[TokenCounts]:
    """The stream's output is one token more than the provider reported."""
    sync, stream, later = calls
    return [sync, replace(stream, output=stream.output + 1), later]


def stream_cache_reads_zero(calls: list[TokenCounts]) -> list[TokenCounts]:
    """The stream's cache reads are recorded as 0 (and are missing from its input too)."""
    sync, stream, later = calls
    return [sync, replace(stream, input=stream.input - stream.cache_read, cache_read=0), later]


def recorded(deviation: Deviation, calls: list[TokenCounts]) -> dict[str, int]:
    """The collector's `llm_tokens_total` by token type for these calls, given the deviation."""
    total = TokenCounts()
    for t in deviation(calls):
        total = total + t
    return total.disjoint()


_OPENLIT = "openlit._config:OpenlitConfig"
_NO_METRICS = (("disable_metrics", True),)

#: Cases whose span is not the current span while the SDK runs: when it wraps ours (instrumented
#: before it), our span is its sibling, not its child, so the deduper cannot link them and each
#: call is counted twice (measured; instrument otel-tokens after it, or run one of the two).
SIBLING_WHEN_OUTER = frozenset({"openllmetry-anthropic"})

#: Every instrumentation proven here, with the deviation it was measured to have. The Makefile's
#: interop environments name the cases each one runs (OTEL_TOKENS_INTEROP_CASES).
_OTEL, _OI, _LIT = (
    "opentelemetry.instrumentation.",
    "openinference.instrumentation.",
    "openlit.instrumentation.",
)
_OPENLIT_ARGS: dict[str, Any] = {"options": _NO_METRICS, "global_provider": True, "prepare": _OPENLIT}
CASES: dict[str, tuple[Case, Deviation]] = {
    case.name: (case, deviation)
    for case, deviation in (
        (Case("openai-v2", "openai", _OTEL + "openai_v2:OpenAIInstrumentor"), no_cache_tokens),
        (Case("genai-openai", "openai", _OTEL + "genai.openai:OpenAIInstrumentor"), exact),
        (Case("genai-anthropic", "anthropic", _OTEL + "genai.anthropic:AnthropicInstrumentor"), exact),
        (Case("openllmetry-openai", "openai", _OTEL + "openai:OpenAIInstrumentor"), exact),
        (
            Case("openllmetry-anthropic", "anthropic", _OTEL + "anthropic:AnthropicInstrumentor"),
            stream_output_plus_one,
        ),
        (Case("openinference-openai", "openai", _OI + "openai:OpenAIInstrumentor"), exact),
        (Case("openinference-anthropic", "anthropic", _OI + "anthropic:AnthropicInstrumentor"), exact),
        (Case("openlit-openai", "openai", _LIT + "openai:OpenAIInstrumentor", **_OPENLIT_ARGS), exact),
        (
            Case("openlit-anthropic", "anthropic", _LIT + "anthropic:AnthropicInstrumentor", **_OPENLIT_ARGS),
            stream_cache_reads_zero,
        ),
    )
}

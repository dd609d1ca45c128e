"""A live collector with real SDK traffic, for the operator commands' and the status page's tests.

Real openai/anthropic SDKs call the fake provider; our instrumentation exports every span over
OTLP/HTTP to a real collector that tracks a budget file. `expected` holds, per agent, the token
counts the provider reported (disjoint split, as the counters keep them) — what a user would
compare the commands' output with.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anthropic
import openai
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

import otel_tokens
from otel_tokens import metric_names as mn
from otel_tokens.collector import CollectorConfig, CollectorService
from otel_tokens.demo.fake_provider import FakeProvider
from otel_tokens.record import TokenCounts
from tests import prom_text
from tests.services import poll

BUDGETS = textwrap.dedent(
    """\
    # budgets for the ops tests
    budgets:
      - name: support-daily        # a support call is ~15 tokens: one warns, two exceed
        scope: {agent: support}
        limit: {tokens: 18}
        window: 1d
      - name: research-daily
        scope: {agent: research}
        limit: {tokens: 1000000}
        window: 1d
        forecast: {lookback: 2h}   # its burn rate is over 2h, from a collector and from Prometheus
      - name: everyone-monthly-usd
        limit: {usd: 100}
        window: month
    """
)
_CACHED = "You are a careful research assistant. " * 200


@dataclass
class Live:
    collector: CollectorService
    fake: FakeProvider
    budgets: Path
    oai: openai.OpenAI
    claude: anthropic.Anthropic
    expected: dict[str, dict[str, int]] = field(default_factory=dict)
    calls: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.collector.metrics_port}"

    def _count(self, agent: str, before: TokenCounts) -> None:
        delta = self.fake.reported_totals().disjoint()
        for kind, value in before.disjoint().items():
            delta[kind] -= value
        into = self.expected.setdefault(agent, dict.fromkeys(mn.TOKEN_TYPES, 0))
        for kind, value in delta.items():
            into[kind] += value

    def support_call(self, task_id: str = "t-1") -> None:
        before = self.fake.reported_totals()
        with otel_tokens.attribute(agent="support", task="answer-ticket", task_id=task_id):
            self.oai.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "My invoice is wrong."}]
            )
        self._count("support", before)
        self.calls += 1

    def research_call(self, task_id: str = "r-1") -> None:
        before = self.fake.reported_totals()
        with otel_tokens.attribute(agent="research", task="literature-review", task_id=task_id):
            self.claude.messages.create(
                model="claude-sonnet-4-6", max_tokens=128,
                system=[{"type": "text", "text": _CACHED, "cache_control": {"type": "ephemeral"}}],
                messages=[{"role": "user", "content": "List three papers on token budgets."}],
            )  # fmt: skip
        self._count("research", before)
        self.calls += 1

    def wait_counted(self) -> None:
        """Until the collector has counted every call (requests on /metrics)."""
        poll(
            lambda: prom_text.total(prom_text.scrape(self.collector.metrics_port), mn.REQUESTS),
            lambda n: n == self.calls,
            what="every call counted by the collector",
        )


@contextmanager
def live_collector(tmp: Path) -> Iterator[Live]:
    budgets = tmp / "budgets.yaml"
    budgets.write_text(BUDGETS)
    config = CollectorConfig(http_port=0, grpc_port=0, metrics_port=0, budgets_file=str(budgets))
    with FakeProvider() as fake, CollectorService(config) as collector:
        provider = TracerProvider()
        endpoint = f"http://127.0.0.1:{collector.http_port}/v1/traces"
        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        otel_tokens.instrument(tracer_provider=provider)
        try:
            yield Live(
                collector, fake, budgets,
                openai.OpenAI(base_url=fake.openai_base_url, api_key="k", max_retries=0),
                anthropic.Anthropic(base_url=fake.anthropic_base_url, api_key="k", max_retries=0),
            )  # fmt: skip
        finally:
            otel_tokens.uninstrument()
            provider.shutdown()

"""Collector throughput on realistic OTLP traffic, each stage against raw protobuf decoding, in one run.

The payload: 512-span `ExportTraceServiceRequest` batches built from real SDK spans (`encode_spans`,
as the OTLP exporters do) with the attributes otel-tokens' instrumentation puts on a chat span —
GenAI usage incl. cache and reasoning tokens, cost, attribution — plus the usual request extras,
eight calls per trace under an agent-step parent, a typical agent's resource.

Measured, interleaved round by round (spans/s, and as a ratio of `ParseFromString`):
- `ExportTraceServiceRequest.FromString` alone — the floor every receiver pays;
- `Pipeline().ingest_otlp(FromString(...))` — decode + extract + dedupe + aggregate, in process;
- a running `CollectorService`, HTTP POST of the protobuf bytes over one keep-alive connection;
- the same service fed by the real `OTLPSpanExporter` (HTTP) exporting pre-built ReadableSpans —
  what an agent's exporter costs end to end, including its own encoding. Client and server share
  this process (and its GIL), so both end-to-end figures are lower bounds.

Two more payloads, each against its own `ParseFromString` (the ratio is per payload):
- **openai-v2 shape**: the spans the official `opentelemetry-instrumentation-openai-v2` exports
  (its scope, `gen_ai.system`, request/response model, usage, no cost and no attribution), each
  with a parent: foreign spans, so the deduper holds them and `flush()` counts them, and each
  record is priced here;
- **mixed traffic**: 90% of the spans are not LLM calls (HTTP client, database and agent tool
  spans of their own scopes, 6-8 attributes each), 10% openai-v2 LLM spans.
`Pipeline.ingest_otlp` is followed by `flush()` past the hold window in every op, so held spans
are counted in the op that brought them. Times are this process's CPU time (client and server
threads included), which a busy shared machine disturbs least. The payloads built, the garbage
collector is settled as the collector process settles it (`settle_gc`: what exists is frozen out of
collections, young collections every 20k allocations instead of 700), for every block alike.

Every LLM span is a distinct call and every block checks that all of them were counted. The batches
are replayed, so the dedupe memory (`max_remembered_spans`) is set just below the replay cycle (in
LLM spans, per payload): a span is forgotten before its batch comes round again, as in a
steady-state collector whose memory is full (the LRU evicts one key per insert either way).

Run: `.venv/bin/python benchmarks/bench_collector.py`.
"""

from __future__ import annotations

import functools
import gc
import http.client
import itertools
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.util.types import AttributeValue

from otel_tokens import semconv as sc
from otel_tokens.accelerator import scanner
from otel_tokens.collector import CollectorConfig, CollectorService
from otel_tokens.collector.worker_process import settle_gc
from otel_tokens.pipeline import Pipeline

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _harness import CPU, QUICK, Block, Samples, interleave, record, rounds, spread

BENCH = "collector"
BATCH = 512
N_BATCHES = 4  # replayed round-robin; distinct spans in each
CALLS_PER_TRACE = 8
PARSE, ENCODE, PIPELINE, HTTP_POST, EXPORTER = (
    "ParseFromString",
    "encode_spans + Serialize (client)",
    "Pipeline.ingest_otlp",
    "CollectorService, HTTP POST",
    "CollectorService, OTLPSpanExporter",
)
PURE, BYTES = "Pipeline.ingest_otlp, pure Python", "Pipeline.ingest_otlp_bytes (no decode)"
V2, MIXED = " (openai-v2 shape)", " (mixed, 10% LLM)"
#: each measured variant's floor: the decode of the same payload (None: a floor itself)
BASE: dict[str, str | None] = {PARSE: None, PARSE + V2: None, PARSE + MIXED: None}
for _shape in (V2, MIXED):
    BASE.update(dict.fromkeys((PIPELINE + _shape, PURE + _shape, BYTES + _shape), PARSE + _shape))
OPENAI_V2_SCOPE = "opentelemetry.instrumentation.openai_v2"
LLM_EVERY = 10  # mixed traffic: one LLM span in ten

AGENTS = ("coder", "reviewer", "planner", "support-bot")
TASKS = ("fix-bug", "write-tests", "triage", "summarize", "answer-ticket")
#: (provider, request model, response model, reasons?)
MODELS = (
    ("openai", "gpt-4o", "gpt-4o-2024-08-06", False),
    ("openai", "gpt-4o-mini", "gpt-4o-mini-2024-07-18", False),
    ("openai", "o3", "o3-2025-04-16", True),
    ("anthropic", "claude-sonnet-4-5", "claude-sonnet-4-5-20250929", False),
)
RESOURCE = Resource.create(
    {
        "service.name": "coding-agent",
        "service.version": "1.14.2",
        "service.namespace": "agents",
        "deployment.environment.name": "production",
        "host.name": "agent-worker-7f9c",
        "process.pid": 48213,
        "process.runtime.name": "cpython",
        "process.runtime.version": "3.11.7",
    }
)


# --- payload -------------------------------------------------------------------------------------


def _attributes(rnd: random.Random, i: int) -> dict[str, AttributeValue]:
    provider, model, response_model, reasons = MODELS[rnd.randrange(len(MODELS))]
    agent, task = rnd.choice(AGENTS), rnd.choice(TASKS)
    input_tokens, output_tokens = rnd.randint(800, 120_000), rnd.randint(20, 4000)
    attrs: dict[str, AttributeValue] = {
        sc.GEN_AI_OPERATION_NAME: "chat",
        sc.GEN_AI_PROVIDER_NAME: provider,
        sc.GEN_AI_REQUEST_MODEL: model,
        sc.OTEL_TOKENS_MARKER: True,
        sc.SERVER_ADDRESS: "api.openai.com" if provider == "openai" else "api.anthropic.com",
        sc.SERVER_PORT: 443,
        sc.GEN_AI_REQUEST_MAX_TOKENS: 4096,
        gen_ai.GEN_AI_REQUEST_TEMPERATURE: 0.2,
        gen_ai.GEN_AI_REQUEST_TOP_P: 1.0,
        sc.GEN_AI_AGENT_NAME: agent,
        sc.OTEL_TOKENS_TASK: task,
        sc.OTEL_TOKENS_TASK_ID: f"{task}-{rnd.randrange(200):04d}",
        sc.OTEL_TOKENS_USER: f"user-{rnd.randrange(50)}",
        sc.GEN_AI_CONVERSATION_ID: f"conv-{i // CALLS_PER_TRACE:06d}",
        sc.OTEL_TOKENS_STEP: i % CALLS_PER_TRACE,
        sc.GEN_AI_USAGE_INPUT_TOKENS: input_tokens,
        sc.GEN_AI_USAGE_OUTPUT_TOKENS: output_tokens,
        sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: input_tokens // 2 if i % 3 else 0,
        sc.OTEL_TOKENS_COST_USD: round(input_tokens * 2.5e-6 + output_tokens * 1e-5, 6),
        sc.GEN_AI_RESPONSE_MODEL: response_model,
        sc.GEN_AI_RESPONSE_ID: f"chatcmpl-{rnd.getrandbits(96):024x}",
        sc.GEN_AI_RESPONSE_FINISH_REASONS: ("stop",),
    }
    if reasons:
        attrs[sc.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] = output_tokens // 2
    return attrs


def make_batches(n_batches: int, seed: int = 7) -> list[list[ReadableSpan]]:
    """Finished SDK spans, as our instrumentation would have exported them."""
    rnd = random.Random(seed)
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer(sc.INSTRUMENTATION_SCOPE, "0.1.0")
    start = 1_767_225_600_000_000_000  # ns
    parent: Any = None
    for i in range(n_batches * BATCH):
        if i % CALLS_PER_TRACE == 0:  # a new agent step: its span is the parent of the next calls
            step = SpanContext(
                rnd.getrandbits(128), rnd.getrandbits(64), False, TraceFlags(TraceFlags.SAMPLED)
            )
            parent = trace.set_span_in_context(NonRecordingSpan(step))
        attrs = _attributes(rnd, i)
        span = tracer.start_span(
            f"chat {attrs[sc.GEN_AI_REQUEST_MODEL]!s}", parent, SpanKind.CLIENT, attrs, start_time=start
        )
        span.end(end_time=start + rnd.randint(300, 20_000) * 1_000_000)
        start += 50_000_000
    spans = list(exporter.get_finished_spans())
    provider.shutdown()
    return [spans[b * BATCH : (b + 1) * BATCH] for b in range(n_batches)]


def _openai_v2_attributes(rnd: random.Random) -> dict[str, AttributeValue]:
    """What opentelemetry-instrumentation-openai-v2 2.4b0 puts on a chat span (no cost, no agent)."""
    _, model, response_model, _ = MODELS[rnd.randrange(3)]  # its OpenAI models
    return {
        sc.GEN_AI_OPERATION_NAME: "chat",
        sc.GEN_AI_SYSTEM: "openai",
        sc.GEN_AI_REQUEST_MODEL: model,
        sc.SERVER_ADDRESS: "api.openai.com",
        sc.SERVER_PORT: 443,
        gen_ai.GEN_AI_REQUEST_TEMPERATURE: 0.2,
        sc.GEN_AI_RESPONSE_MODEL: response_model,
        sc.GEN_AI_RESPONSE_ID: f"chatcmpl-{rnd.getrandbits(96):024x}",
        sc.GEN_AI_RESPONSE_FINISH_REASONS: ("stop",),
        sc.GEN_AI_OPENAI_RESPONSE_SERVICE_TIER: "default",
        sc.GEN_AI_USAGE_INPUT_TOKENS: rnd.randint(800, 120_000),
        sc.GEN_AI_USAGE_OUTPUT_TOKENS: rnd.randint(20, 4000),
    }


def _other_span(rnd: random.Random, i: int) -> tuple[str, str, dict[str, AttributeValue]]:
    """(scope, span name, attributes) of a span that is not an LLM call: what else an agent traces."""
    kind = i % 3
    if kind == 0:
        return "opentelemetry.instrumentation.httpx", "GET", {
            "http.request.method": "GET",
            "url.full": f"https://api.github.com/repos/acme/app/issues/{rnd.randrange(9999)}",
            "server.address": "api.github.com",
            "server.port": 443,
            "http.response.status_code": 200,
            "network.protocol.version": "1.1",
        }  # fmt: skip
    if kind == 1:
        return "opentelemetry.instrumentation.sqlalchemy", "SELECT app", {
            "db.system": "postgresql",
            "db.name": "app",
            "db.statement": "SELECT id, title, body FROM tickets WHERE id = %(id)s",
            "db.user": "agent",
            "server.address": "db.internal",
            "server.port": 5432,
            "net.peer.name": "db.internal",
        }  # fmt: skip
    return "coding-agent", "tool read_file", {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "read_file",
        "gen_ai.tool.call.id": f"call_{rnd.getrandbits(64):016x}",
        "code.filepath": f"src/module_{rnd.randrange(300)}.py",
        "agent.step": i % CALLS_PER_TRACE,
        "tool.result.bytes": rnd.randrange(100_000),
    }  # fmt: skip


def make_foreign_batches(n_batches: int, llm_every: int = 1, seed: int = 11) -> list[list[ReadableSpan]]:
    """openai-v2 LLM spans (every `llm_every`-th span; the rest other spans), each with a parent."""
    rnd = random.Random(seed)
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    start, parent = 1_767_225_600_000_000_000, None
    for i in range(n_batches * BATCH):
        if i % CALLS_PER_TRACE == 0:
            step = SpanContext(
                rnd.getrandbits(128), rnd.getrandbits(64), False, TraceFlags(TraceFlags.SAMPLED)
            )
            parent = trace.set_span_in_context(NonRecordingSpan(step))
        if i % BATCH % llm_every == 0:  # the same number in every batch
            scope, attrs = OPENAI_V2_SCOPE, _openai_v2_attributes(rnd)
            name = f"chat {attrs[sc.GEN_AI_REQUEST_MODEL]!s}"
        else:
            scope, name, attrs = _other_span(rnd, i)
        span = provider.get_tracer(scope, "2.4b0").start_span(
            name, parent, SpanKind.CLIENT, attrs, start_time=start
        )
        span.end(end_time=start + rnd.randint(5, 20_000) * 1_000_000)
        start += 50_000_000
    spans = list(exporter.get_finished_spans())
    provider.shutdown()
    return [spans[b * BATCH : (b + 1) * BATCH] for b in range(n_batches)]


# --- the measured operations (one op = one 512-span batch) ---------------------------------------


@dataclass
class Counted:
    """Checks that a pipeline counted every span of the ops a block ran, once."""

    pipeline: Pipeline
    before: int = 0
    per_op: int = BATCH  # LLM spans in one batch

    def _requests(self) -> int:
        snap = self.pipeline.aggregator.snapshot()
        return sum(s.requests_ok + s.requests_error for s in snap.series.values())

    def setup(self) -> None:
        self.before = self._requests()

    def check(self, what: str, n: int) -> None:
        counted = self._requests() - self.before
        if counted != n * self.per_op:
            snap = self.pipeline.aggregator.snapshot()
            raise AssertionError(
                f"{what}: {n * self.per_op} LLM spans sent, {counted} counted (duplicates dropped: "
                f"{snap.duplicates_dropped}, rejected: {snap.spans_rejected})"
            )


def parse(payloads: list[bytes], order: Iterator[int], n: int) -> None:
    for _ in range(n):
        ExportTraceServiceRequest.FromString(payloads[next(order)])


def encode(batches: list[list[ReadableSpan]], order: Iterator[int], n: int) -> None:
    """The exporter's own share of the end-to-end path: it encodes before it sends."""
    for _ in range(n):
        encode_spans(batches[next(order)]).SerializeToString()


def ingest(pipeline: Pipeline, payloads: list[bytes], order: Iterator[int], n: int) -> None:
    """Decode, ingest, and flush past the hold window (a held foreign span counts in its own op)."""
    for _ in range(n):
        pipeline.ingest_otlp(ExportTraceServiceRequest.FromString(payloads[next(order)]))
        pipeline.flush(float("inf"))


def ingest_bytes(pipeline: Pipeline, payloads: list[bytes], order: Iterator[int], n: int) -> None:
    """The serialized request straight to the pipeline (decoded only if the compiled walk declines)."""
    for _ in range(n):
        pipeline.ingest_otlp_bytes(payloads[next(order)])
        pipeline.flush(float("inf"))


def post(conn: http.client.HTTPConnection, payloads: list[bytes], order: Iterator[int], n: int) -> None:
    headers = {"Content-Type": "application/x-protobuf"}
    for _ in range(n):
        conn.request("POST", "/v1/traces", body=payloads[next(order)], headers=headers)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise AssertionError(f"collector answered HTTP {response.status}: {body[:200]!r}")


def export(
    exporter: OTLPSpanExporter, batches: list[list[ReadableSpan]], order: Iterator[int], n: int
) -> None:
    for _ in range(n):
        if exporter.export(batches[next(order)]) is not SpanExportResult.SUCCESS:
            raise AssertionError("OTLPSpanExporter.export failed")


# --- run and report ------------------------------------------------------------------------------


def _counting_block(name: str, run: Any, counted: Counted) -> Block:
    return Block(name, run, setup=counted.setup, check=functools.partial(counted.check, name))


def report(names: list[str], s: Samples, n_rounds: int, payload_bytes: int, n_attrs: int) -> None:
    print(
        f"OTLP export requests of {BATCH} spans ({payload_bytes:,} bytes, {n_attrs} attributes a span): "
        f"{n_rounds} rounds x {s.ops_per_block} batches; spans/s (CPU time), median (min..max)"
    )
    rates: dict[str, float] = {}
    ratios: dict[str, float] = {}
    for name in names:
        rates[name] = BATCH / s.median(name)
        per_round = [BATCH / t for t in s.per_op[name]]
        line = f"  {name:<40}{rates[name]:>11,.0f} spans/s  ({spread(per_round, 1e-3, 0)}k)"
        base = BASE.get(name, PARSE)
        note = ""
        if base is not None:
            ratio = sorted(p / t for p, t in zip(s.per_op[base], s.per_op[name], strict=True))
            ratios[name] = mid = ratio[len(ratio) // 2]
            note = f"x{mid:.3f} of {base}"
            line += f"  {note} ({1 / mid:.1f}x slower; rounds x{ratio[0]:.3f}..x{ratio[-1]:.3f})"
            note += f" (rounds x{ratio[0]:.3f}..x{ratio[-1]:.3f})"
        print(line)
        record(BENCH, name, rates[name], "spans/s", note)
    summary = ", ".join(f"{n} {rates[n] / 1e3:,.0f}k" for n in names)
    paired = ", ".join(f"{n} {r:.3f}" for n, r in ratios.items())
    print(f"collector throughput (spans/s): {summary}; ratio vs ParseFromString: {paired}")


def main() -> None:
    batches = make_batches(N_BATCHES)
    payloads = [encode_spans(b).SerializeToString() for b in batches]
    v2 = [encode_spans(b).SerializeToString() for b in make_foreign_batches(N_BATCHES)]
    mixed = [encode_spans(b).SerializeToString() for b in make_foreign_batches(N_BATCHES, LLM_EVERY)]
    n_attrs = len(batches[0][0].attributes or {})
    with_memory = replace(CollectorConfig().dedupe_config(), max_remembered_spans=BATCH * (N_BATCHES - 2))
    config = CollectorConfig(http_port=0, grpc_port=0, metrics_port=0)
    compiled_walk = scanner() is not None
    print(f"compiled OTLP walk (otel_tokens._otlp_scan): {'built' if compiled_walk else 'not built'}")
    settle_gc()  # as the collector process runs (run_collector / the ingest workers)
    print(f"GC settled as in the collector: gc.freeze(), young threshold {gc.get_threshold()[0]}")
    service_pipeline = Pipeline(config.metrics_config(), dedupe=with_memory)

    def cycle() -> Iterator[int]:
        return itertools.cycle(range(N_BATCHES))

    with CollectorService(config, pipeline=service_pipeline) as service:
        conn = http.client.HTTPConnection("127.0.0.1", service.http_port, timeout=30)
        exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{service.http_port}/v1/traces", timeout=30)
        to_service = cycle()  # one replay order for both paths into the service
        blocks = [
            Block(ENCODE, functools.partial(encode, batches, cycle())),
            _counting_block(
                HTTP_POST, functools.partial(post, conn, payloads, to_service), Counted(service_pipeline)
            ),
            _counting_block(
                EXPORTER, functools.partial(export, exporter, batches, to_service), Counted(service_pipeline)
            ),
        ]
        llm_per_batch = BATCH // LLM_EVERY + (BATCH % LLM_EVERY > 0)
        for shape, data, per_op in (("", payloads, BATCH), (V2, v2, BATCH), (MIXED, mixed, llm_per_batch)):
            blocks.append(Block(PARSE + shape, functools.partial(parse, data, cycle())))
            for name, op, compiled in (
                (PIPELINE, ingest, True),
                (PURE, ingest, False),
                (BYTES, ingest_bytes, True),
            ):
                if compiled and not compiled_walk:
                    continue  # without the extension these would measure the pure path again
                # the memory forgets a batch's LLM spans before the batch comes round again
                memory = replace(with_memory, max_remembered_spans=per_op * (N_BATCHES - 2))
                pipeline = Pipeline(config.metrics_config(), dedupe=memory, compiled=compiled)
                run = functools.partial(op, pipeline, data, cycle())
                blocks.append(_counting_block(name + shape, run, Counted(pipeline, per_op=per_op)))
        n_rounds = rounds(full=7)
        samples = interleave(blocks, n_rounds, target_s=0.05 if QUICK else 0.4, clock=CPU)
        conn.close()
        exporter.shutdown()  # type: ignore[no-untyped-call]
    order = [b.name for b in blocks]  # each payload's variants after its ParseFromString, ours first
    names = sorted(order, key=lambda n: (n != PARSE, order.index(BASE.get(n, PARSE) or n), order.index(n)))
    report(names, samples, n_rounds, len(payloads[0]), n_attrs)


if __name__ == "__main__":
    main()

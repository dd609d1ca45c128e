"""The compiled OTLP walk and the pure-Python path give identical results on the same payloads.

Each payload — the fuzz suite's hostile requests, the same bytes mutated, and the benchmark's
realistic batches — goes into three pipelines: pure Python (`FromString` + `ingest_otlp`), the
compiled walk over the serialized request (`ingest_otlp`), and the compiled walk over the raw
bytes (`ingest_otlp_bytes`, no decode). Every counted record (as the budget ledger sees it), every
ingest result and the whole /metrics page must be the same; a body `FromString` refuses must be
refused by `ingest_otlp_bytes` with the same DecodeError. Interop traffic is fed too: verify spans,
resources named only by `service.name`, and usage spans whose agent an `invoke_agent` ancestor names
(in the same request or a later one).

Without the extension built (a plain install without a compiler) these tests skip, unless
`OTEL_TOKENS_EXPECT_COMPILED=1` (set by `make test`) says it must be there.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest

from otel_tokens import metric_names as mn
from otel_tokens import semconv as sc
from otel_tokens.accelerator import links_walk, record_builder, scanner
from otel_tokens.ancestry import Links, Scope, Scopes
from otel_tokens.collector.http_receiver import ingest_protobuf
from otel_tokens.collector.otlp_codec import Rejected, partial_success
from otel_tokens.extract import scan_otlp, scan_otlp_bytes
from otel_tokens.pipeline import DedupeConfig, Pipeline
from otel_tokens.record import TokenCounts, UsageRecord
from tests.test_fuzz import _PROFILE, _cuts, _mutated, _requests

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

if scanner() is None:
    if os.environ.get("OTEL_TOKENS_EXPECT_COMPILED", "") not in ("", "0"):
        raise RuntimeError("otel_tokens._otlp_scan is not built (pip install -e . with a C compiler)")
    pytest.skip("the compiled OTLP walk is not built (no C compiler at install)", allow_module_level=True)


def price(provider: str, model: str, tokens: TokenCounts, *tier: str) -> float | None:
    """Deterministic, and unknown for some models (so unpriced counts are compared too)."""
    if "unknown" in model:
        return None
    return (tokens.input * 2 + tokens.output * 8 + len(tier)) * 1e-6


class Run:
    """One pipeline and what it counted."""

    def __init__(self, compiled: bool) -> None:
        self.pipeline = Pipeline(
            registry=CollectorRegistry(),
            clock=lambda: 1_000.0,
            price=price,
            compiled=compiled,
            dedupe=DedupeConfig(hold_seconds=2.0),
        )
        self.records: list[str] = []
        self.results: list[Any] = []
        self.pipeline.add_listener(lambda r: self.records.append(repr(r)))

    def page(self) -> bytes:
        self.pipeline.flush(now=float("inf"))
        return generate_latest(self.pipeline.registry)


def receive(run: Run, data: bytes) -> None:
    """What the HTTP and gRPC receivers do with a protobuf body (`ingest_protobuf`): the answer, or
    the refusal, goes into the run's results."""
    try:
        run.results.append(ingest_protobuf(run.pipeline, data).SerializeToString())
    except Rejected as rejected:
        run.results.append(rejected.message)


def assert_same(payloads: list[bytes]) -> tuple[int, list[str]]:
    """Feed all three paths, and the receivers' path with and without the walk; returns (payloads
    the walk read itself, the records counted) and keeps the last /metrics page in `last_page`."""
    pure, over_request, over_bytes = Run(False), Run(True), Run(True)
    received_pure, received = Run(False), Run(True)
    walked = 0
    for data in payloads:
        receive(received_pure, data)
        receive(received, data)
        try:
            request = ExportTraceServiceRequest.FromString(data)
        except DecodeError as exc:
            with pytest.raises(DecodeError) as refused:
                over_bytes.pipeline.ingest_otlp_bytes(data)
            assert str(refused.value) == str(exc)
            continue
        walked += scanner()(data, sc.SERVICE_NAME) is not None  # type: ignore[misc]
        pure.results.append(pure.pipeline.ingest_otlp(request))
        over_request.results.append(over_request.pipeline.ingest_otlp(request))
        over_bytes.results.append(over_bytes.pipeline.ingest_otlp_bytes(data))
    page = pure.page()
    for run in (over_request, over_bytes):
        assert run.page() == page  # after the flush: held spans counted
        assert run.results == pure.results
        assert run.records == pure.records
    assert received.page() == received_pure.page()
    assert received.results == received_pure.results
    assert received.records == received_pure.records
    if len(received.results) == len(pure.results):  # every payload decoded: the same as ingest_otlp
        assert received.records == pure.records
        assert received.results == [partial_success(r).SerializeToString() for r in pure.results]
    last_page[:] = [page]
    return walked, pure.records


last_page: list[bytes] = []


@settings(settings.get_profile(_PROFILE))
@given(requests=st.lists(_requests, min_size=1, max_size=3), cuts=_cuts)
def test_fuzzed_requests_and_mutated_bytes_count_the_same(
    requests: list[ExportTraceServiceRequest], cuts: list[tuple[int, int]]
) -> None:
    payloads = [r.SerializeToString() for r in requests]
    assert_same(payloads + [_mutated(p, cuts) for p in payloads])


def test_realistic_batches_are_walked_in_c_and_count_the_same() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_collector as bench
    finally:
        sys.path.remove(str(BENCHMARKS))
    batches = [*bench.make_batches(2), *bench.make_foreign_batches(1), *bench.make_foreign_batches(1, 10)]
    payloads = [encode_spans(b).SerializeToString() for b in batches]
    walked, counted = assert_same(payloads)
    assert walked == len(payloads)  # none declined: the compiled walk did the work
    assert len(counted) == 3 * 512 + 512 // 10 + 1
    for data in (payloads[0], payloads[2]):  # ours and openai-v2's: every usage span built in C
        _, _, scopes, hits, _ = scanner()(data, sc.SERVICE_NAME)  # type: ignore[misc]
        build = record_builder()
        assert build is not None and build(hits, [None] * len(scopes), [False] * len(scopes), 10**7) == 512
        assert {type(h) for h in hits} == {UsageRecord}


def interop_spans() -> list[ReadableSpan]:
    """Another framework's spans under a resource named only by `service.name`: an `invoke_agent`
    span over a tool span over a call naming no agent, a root call, a call under a plain span, and
    a task with one passing and one failing check (plus a verify span without a task id and one
    whose `passed` is not a bool: neither is a verdict)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({sc.SERVICE_NAME: "billing-agent"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("some.framework")
    usage = {sc.GEN_AI_REQUEST_MODEL: "gpt-4o", sc.GEN_AI_USAGE_INPUT_TOKENS: 100}
    usage[sc.GEN_AI_USAGE_OUTPUT_TOKENS] = 10
    invoke = {sc.GEN_AI_OPERATION_NAME: sc.OPERATION_INVOKE_AGENT, sc.GEN_AI_AGENT_NAME: "planner"}
    with (
        tracer.start_as_current_span("invoke_agent planner", attributes=invoke),
        tracer.start_as_current_span("tool"),
    ):
        tracer.start_span("chat", attributes=usage).end()
    tracer.start_span("chat", attributes={**usage, sc.GEN_AI_USAGE_INPUT_TOKENS: 200}).end()
    with tracer.start_as_current_span("work"):
        tracer.start_span("chat", attributes={**usage, sc.GEN_AI_USAGE_INPUT_TOKENS: 300}).end()
    task = {sc.OTEL_TOKENS_TASK_SCOPE: True, sc.OTEL_TOKENS_TASK_ID: "t-1", sc.OTEL_TOKENS_TASK: "fix"}
    with tracer.start_as_current_span("task", attributes=task):
        tracer.start_span("chat", attributes={**usage, sc.OTEL_TOKENS_TASK_ID: "t-1"}).end()
        for passed, check in ((True, "tests"), (False, "lint")):
            verdict = {sc.OTEL_TOKENS_VERIFY_PASSED: passed, sc.OTEL_TOKENS_VERIFY_CHECK: check}
            tracer.start_span("verify", attributes={**verdict, sc.OTEL_TOKENS_TASK_ID: "t-1"}).end()
        tracer.start_span("verify", attributes={sc.OTEL_TOKENS_VERIFY_PASSED: True}).end()
        not_bool = {sc.OTEL_TOKENS_VERIFY_PASSED: "yes", sc.OTEL_TOKENS_TASK_ID: "t-1"}
        tracer.start_span("verify", attributes=not_bool).end()
    return list(exporter.get_finished_spans())


@pytest.mark.parametrize("ancestor_later", [False, True])
def test_verdicts_service_name_and_ancestors_count_the_same(ancestor_later: bool) -> None:
    spans = interop_spans()
    if ancestor_later:  # the invoke_agent span in the next request (the held call waits for it)
        batches = [[s for s in spans if s.name != "invoke_agent planner"], [spans[2]]]
        assert spans[2].name == "invoke_agent planner"
    else:
        batches = [spans]
    payloads = [encode_spans(b).SerializeToString() for b in batches]
    walked, records = assert_same(payloads)
    assert walked == len(payloads)  # none declined: the compiled walk read verdicts and resources
    agents = sorted(
        (r.split("agent='")[1].split("'")[0], r.split("input=")[1].split(",")[0]) for r in records
    )
    assert agents == [("billing-agent", "100"), ("billing-agent", "200"), ("billing-agent", "300"),
                      ("planner", "100")]  # fmt: skip
    page = last_page[0].decode()
    task_line = f'{mn.VERIFIED}="{mn.VERIFIED_FAILED}"'
    assert task_line in page  # the task's failing check reached the task histograms


def assert_same_links(data: bytes, all_traces: bool = False) -> Scopes:
    """The compiled parent-link walk finds what `scan_otlp` finds in the decoded request."""
    request = ExportTraceServiceRequest.FromString(data)
    traces = {int.from_bytes(span.trace_id, "big") for rs in request.resource_spans
              for ss in rs.scope_spans for span in ss.spans}  # fmt: skip
    if not all_traces:
        traces.discard(min(traces, default=0))  # and only the spans of the traces asked for
    expected: tuple[Links, Scopes] = ({}, {})
    scan_otlp(request, traces, *expected)
    got: tuple[Links, Scopes] = ({}, {})
    scan_otlp_bytes(data, traces, *got, links_walk())
    assert got == expected
    return expected[1]


def test_the_link_walk_finds_the_ancestors_scan_otlp_finds() -> None:
    payload = encode_spans(interop_spans()).SerializeToString()
    assert links_walk()(payload, {0}, ("a", "b", "c")) is not None  # type: ignore[misc]
    assert list(assert_same_links(payload, all_traces=True).values()) == [Scope("planner", None)]
    decoded = ExportTraceServiceRequest.FromString(payload)
    for rs in decoded.resource_spans:  # other kinds of values under the scope keys: read as ""
        for ss in rs.scope_spans:
            for i, span in enumerate(ss.spans):
                for kv in span.attributes:
                    if kv.key == sc.GEN_AI_AGENT_NAME and i % 2:
                        kv.value.CopyFrom(AnyValue(int_value=3))
                span.attributes.add(key=sc.GEN_AI_WORKFLOW_NAME)
    assert_same_links(decoded.SerializeToString(), all_traces=True)


def test_the_link_walk_lists_only_the_operations_asked_for() -> None:
    """Given the operations that open a scope, chat spans get no row (each was a Python iteration)."""
    request = ExportTraceServiceRequest.FromString(encode_spans(interop_spans()).SerializeToString())
    for rs in request.resource_spans:  # every span not naming an operation becomes a chat span
        for ss in rs.scope_spans:
            for span in ss.spans:
                if all(kv.key != sc.GEN_AI_OPERATION_NAME for kv in span.attributes):
                    span.attributes.add(key=sc.GEN_AI_OPERATION_NAME).value.string_value = "chat"
    payload = request.SerializeToString()
    traces = {int.from_bytes(span.trace_id, "big") for rs in request.resource_spans
              for ss in rs.scope_spans for span in ss.spans}  # fmt: skip
    keys = (sc.GEN_AI_OPERATION_NAME, sc.GEN_AI_AGENT_NAME, sc.GEN_AI_WORKFLOW_NAME)
    walk = links_walk()
    assert walk is not None
    every = walk(payload, traces, keys)  # type: ignore[call-arg]
    only = walk(payload, traces, keys, frozenset({sc.OPERATION_INVOKE_AGENT}))
    assert every is not None and only is not None
    assert only[0] == every[0]  # the links are the same
    assert {row[1] for row in every[1]} > {sc.OPERATION_INVOKE_AGENT}  # chat spans too, without it
    assert only[1] == [row for row in every[1] if row[1] == sc.OPERATION_INVOKE_AGENT] != []
    with pytest.raises(TypeError, match="operations must be a set"):
        walk(payload, traces, keys, [sc.OPERATION_INVOKE_AGENT])  # type: ignore[arg-type]


@settings(settings.get_profile(_PROFILE))
@given(request=_requests)
def test_fuzzed_requests_give_the_same_links(request: ExportTraceServiceRequest) -> None:
    data = request.SerializeToString()
    if scanner()(data, sc.SERVICE_NAME) is not None:  # type: ignore[misc]
        assert_same_links(data)


def request_with(*attributes: KeyValue) -> bytes:
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.parent_span_id = b"\1" * 16, b"\2" * 8, b"\3" * 8
    span.attributes.extend(
        [
            KeyValue(key=sc.GEN_AI_REQUEST_MODEL, value=AnyValue(string_value="gpt-4o")),
            KeyValue(key=sc.GEN_AI_USAGE_INPUT_TOKENS, value=AnyValue(int_value=100)),
            *attributes,
        ]
    )
    return request.SerializeToString()


def length_delimited(number: int, payload: bytes) -> bytes:
    return encoder_varint((number << 3) | 2) + encoder_varint(len(payload)) + payload


def encoder_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def nested(rs: int, ss: int, span: int, *span_fields: tuple[int, bytes]) -> bytes:
    """A request written by hand: resource spans `rs` > scope spans `ss` > span `span` > fields."""
    body = b"".join(length_delimited(n, v) for n, v in span_fields)
    return length_delimited(rs, length_delimited(ss, length_delimited(span, body)))


def usage_kv() -> bytes:
    return KeyValue(key=sc.GEN_AI_USAGE_INPUT_TOKENS, value=AnyValue(int_value=7)).SerializeToString()


@pytest.mark.parametrize(
    ("payload", "declined"),
    [
        (request_with(), False),
        # a read attribute holding an array: Python would hold a message object there
        (request_with(KeyValue(key=sc.GEN_AI_AGENT_NAME, value=AnyValue(array_value=ArrayValue()))), True),
        # the same on an attribute nobody reads: only checked
        (request_with(KeyValue(key="other", value=AnyValue(array_value=ArrayValue()))), False),
        # a singular field twice in a message we read (upb keeps the last key): declined
        (nested(1, 2, 2, (9, KeyValue(key="x").SerializeToString() + usage_kv()), (9, usage_kv())), True),
        # unknown fields at every level: skipped by both
        (request_with() + b"\x10\x07" + nested(1, 7, 2, (9, usage_kv())), False),
        (b"\x0a\x03\x12\x01\xff", True),  # a string that is not UTF-8: upb refuses it
    ],
)
def test_the_walk_declines_what_it_does_not_mirror_and_results_stay_the_same(
    payload: bytes, declined: bool
) -> None:
    assert (scanner()(payload) is None) == declined  # type: ignore[misc]
    assert_same([payload])


def test_guard_decision_events_are_counted_on_every_path() -> None:
    """The guard's decisions travel as span events, which the compiled walk leaves to a decode of
    the request: the bytes and receiver paths count them as `ingest_otlp` does."""
    from tests.test_guard_decisions import decision, request

    payloads = [
        request(1, "coder", decision("blocked", "coder-daily", 120.0)).SerializeToString(),
        request(2, "writer", decision("downgraded", "w-usd", 33.5)).SerializeToString(),
    ]
    assert_same(payloads)
    page = last_page[0].decode()
    assert f'{mn.GUARD_ACTIONS}{{action="blocked",agent="coder",budget="coder-daily"}} 1.0' in page

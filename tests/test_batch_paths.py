"""The deduper's and the ancestor walks' whole-batch paths count exactly what the per-record rules do.

`Deduper.batch_paths` / `Pipeline.batch_paths` turn on bulk set and dict operations over a whole
batch where a cheap check proves the per-record rules would end the same way, and fall back to
those rules otherwise. Each test drives random batches — resends, twins (ours and foreign), parents
and children in one batch and across batches, span ids 0, tiny memory caps and hold limits, flushes
at various times, the clock going back, a restore from a snapshot — through a pipeline with the
batch paths and one without, and checks that a user and the durable store see the same: the same
records counted in the same order (with the same attribution, amended or not), the same
duplicates dropped, the same dedupe memory (`state()`: its order decides what is evicted next).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags

from otel_tokens import semconv as sc
from otel_tokens.accelerator import scanner
from otel_tokens.aggregate import MetricsConfig
from otel_tokens.ancestry import AncestorResolver, Scope
from otel_tokens.dedupe import DedupeConfig, Deduper
from otel_tokens.pipeline import Pipeline
from otel_tokens.recent_keys import RecentKeys
from otel_tokens.record import Attribution, TokenCounts, UsageRecord

INF = float("inf")
TRACES = (1, 2, (1 << 127) | 3)
SPAN_IDS = st.integers(0, 7)  # 0: no span id (identified by content), or a root's parent
#: mostly few ids (so spans meet: resends, twins, parents), sometimes ids that meet nothing
MANY_SPAN_IDS = st.one_of(SPAN_IDS, st.integers(8, (1 << 64) - 1))

# --- the deduper alone -----------------------------------------------------------------------------

#: (trace, span id, parent span id, ours, input tokens)
record_specs = st.tuples(
    st.sampled_from(TRACES), MANY_SPAN_IDS, MANY_SPAN_IDS, st.booleans(), st.integers(1, 3)
)


def record_of(spec: tuple[int, int, int, bool, int]) -> UsageRecord:
    trace_id, span_id, parent, ours, tokens = spec
    return UsageRecord(
        "openai", "gpt-4o", tokens=TokenCounts(input=tokens, output=1), trace_id=trace_id, span_id=span_id,
        parent_span_id=parent or None, ours=ours, start_time_ns=tokens,
    )  # fmt: skip


def attributed_records(specs: list[Any]) -> list[UsageRecord]:
    """`record_of` each (spec, agent, workflow); the agent "resource" stands for the resource's fallback."""
    records = []
    for spec, agent, workflow in specs:
        record = record_of(spec)
        record.attribution = Attribution(agent=agent, workflow=workflow)
        record.agent_from_resource = agent == "resource"
        records.append(record)
    return records


deduper_ops = st.lists(
    st.one_of(
        # a batch offered `dt` seconds after the previous step (the clock may go back)
        st.tuples(
            st.just("offer"), st.lists(record_specs, max_size=8), st.sampled_from([-1.0, 0, 0.5, 1, 3])
        ),
        st.tuples(st.just("flush"), st.sampled_from([-1.0, 0, 0.5, 1, 2, 3, INF])),
        # the durable store's snapshot restored, into a deduper with this memory cap
        st.tuples(st.just("restore"), st.sampled_from([1, 3, 1000])),
    ),
    max_size=12,
)
dedupe_configs = st.builds(
    DedupeConfig,
    hold_seconds=st.sampled_from([0.0, 1.0, 2.5]),
    max_held_spans=st.sampled_from([1, 2, 4, 100]),
    max_remembered_spans=st.sampled_from([1, 2, 3, 5, 1000]),
    window_seconds=st.sampled_from([2.0, 5.0, 600.0]),
)


def make_deduper(config: DedupeConfig, batch_paths: bool, max_remembered: int | None = None) -> Deduper:
    deduper = Deduper(
        hold_seconds=config.hold_seconds, max_held=config.max_held_spans,
        max_remembered=max_remembered or config.max_remembered_spans, window_seconds=config.window_seconds,
    )  # fmt: skip
    deduper.batch_paths = batch_paths
    return deduper


def positions(chosen: list[UsageRecord], offered: list[UsageRecord]) -> list[int]:
    """Which of the offered records (the very objects) were chosen, in order."""
    at = {id(r): i for i, r in enumerate(offered)}
    return [at[id(r)] for r in chosen]


#: foreign spans under a parent, the ones held: batches a little apart, flushes between them
held_specs = st.tuples(
    st.sampled_from(TRACES), MANY_SPAN_IDS, st.integers(1, 9), st.just(False), st.integers(1, 3)
)
hold_ops = st.lists(
    st.one_of(
        st.tuples(st.just("offer"), st.lists(held_specs, max_size=6), st.sampled_from([0, 0.5, 1])),
        st.tuples(st.just("flush"), st.sampled_from([-0.5, 0, 0.5, 1, 2])),
    ),
    max_size=12,
)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=dedupe_configs, ops=deduper_ops, by_content=st.booleans())
def test_deduper_batch_path_is_the_per_record_rule(
    config: DedupeConfig, ops: list[tuple[Any, ...]], by_content: bool
) -> None:
    check_deduper_paths(config, ops, by_content)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=dedupe_configs, ops=hold_ops)
def test_deduper_releases_held_spans_in_bulk_as_one_by_one(
    config: DedupeConfig, ops: list[tuple[Any, ...]]
) -> None:
    """Flushes that release only the oldest of the held spans, siblings held across batches."""
    check_deduper_paths(dataclasses.replace(config, hold_seconds=2.5), ops, True)


def check_deduper_paths(config: DedupeConfig, ops: list[tuple[Any, ...]], by_content: bool) -> None:
    fast, slow = make_deduper(config, True), make_deduper(config, False)
    now = 100.0
    held_by = {True: [], False: []}  # type: dict[bool, list[UsageRecord]]
    for op in ops:
        if op[0] == "offer":
            now += op[2]
            got = []
            for deduper in (fast, slow):
                records = [record_of(spec) for spec in op[1]]
                counted, dropped = deduper.offer_many(records, now, by_content=by_content)
                held = deduper.holding(records)
                held_by[deduper.batch_paths] += [r for r, h in zip(records, held, strict=True) if h]
                got.append((positions(counted, records), counted, dropped, held))
            assert got[0] == got[1]
        elif op[0] == "flush":
            at = now + op[1]
            assert fast.flush(at) == slow.flush(at)
        else:
            states = fast.state(), slow.state()
            assert states[0] == states[1]
            fast, slow = make_deduper(config, True, op[1]), make_deduper(config, False, op[1])
            fast.restore(states[0])
            slow.restore(states[1])
        assert fast.state() == slow.state()
        assert (fast.held, fast.remembered, fast.evicted_early) == (
            slow.held,
            slow.remembered,
            slow.evicted_early,
        )
    assert [fast.holds(r) for r in held_by[True]] == [slow.holds(r) for r in held_by[False]]


@settings(max_examples=400, deadline=None)
@given(
    cap=st.integers(1, 8),
    before=st.lists(st.integers(0, 12), max_size=10),
    added=st.lists(st.integers(0, 12), max_size=12),
)
def test_recent_keys_add_many_is_add_in_order(cap: int, before: list[int], added: list[int]) -> None:
    """Keys seen again move to the end; past the cap the oldest go, counted in `evicted_early` —
    also when a key the batch touches sits among those the batch evicts, and when a restored
    memory starts above the cap."""
    bulk, each = RecentKeys(cap), RecentKeys(cap)
    for memory in (bulk, each):
        memory.update((k, float(i)) for i, k in enumerate(before))  # as `restore` fills it
    bulk.add_many(added, 50.0)
    for key in added:
        each.add(key, 50.0)
    assert list(bulk.items()) == list(each.items())
    assert bulk.evicted_early == each.evicted_early


# --- the ancestor walk's first step ----------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(
    specs=st.lists(
        st.tuples(record_specs, st.sampled_from([None, "own", "resource"]), st.sampled_from([None, "wf"])),
        max_size=8,
    ),
    link_specs=st.dictionaries(st.tuples(st.sampled_from(TRACES), SPAN_IDS), SPAN_IDS, max_size=6),
    scope_specs=st.dictionaries(
        st.tuples(st.sampled_from(TRACES), SPAN_IDS),
        st.builds(Scope, st.sampled_from([None, "planner"]), st.sampled_from([None, "flow"]), st.booleans()),
        max_size=3,
    ),
)
def test_walks_start_in_bulk_as_record_by_record(
    specs: list[Any], link_specs: dict[tuple[int, int], int], scope_specs: dict[tuple[int, int], Scope]
) -> None:
    links = {(t << 64) | s: (t << 64) | p for (t, s), p in link_specs.items()}
    scopes = {(t << 64) | s: scope for (t, s), scope in scope_specs.items()}
    records = attributed_records(specs)
    needing = [r for r in records if AncestorResolver.needs(r)]
    frontiers = [(r.trace_id << 64) | (r.parent_span_id or 0) for r in needing]
    fresh = AncestorResolver.start_fresh(needing, frontiers, links, scopes, 7.0)
    out, walks = AncestorResolver.start(records, links, scopes, 7.0)
    if fresh is not None:  # (None: not proven, `start` goes record by record)
        # every walk stopped at its first step, nothing found, no record changed
        assert all(o is r for o, r in zip(out, records, strict=True))
        assert [(w.record, w.frontier, w.agent, w.workflow, w.deadline) for w in fresh.walks()] == [
            (w.record, w.frontier, w.agent, w.workflow, w.deadline) for w in walks
        ]
        assert all(a.record is b.record for a, b in zip(fresh.walks(), walks, strict=True))


# --- the whole pipeline: extraction, ancestry, dedupe, amendments ---------------------------------

OTHER_SCOPE = InstrumentationScope("opentelemetry.instrumentation.openai_v2", "2.0")
OUR_SCOPE = InstrumentationScope(sc.INSTRUMENTATION_SCOPE, "0.1")
RESOURCES = (Resource.create({"service.name": "svc"}), Resource.create({}))

#: (trace, span id, parent span id, kind, agent, resource index, tokens)
span_specs = st.tuples(
    st.sampled_from(TRACES[1:]),
    SPAN_IDS,
    SPAN_IDS,
    st.sampled_from(["foreign", "ours", "invoke_agent", "invoke_workflow", "other"]),
    st.sampled_from([None, "coder", "planner"]),
    st.integers(0, 1),
    st.integers(1, 3),
)


def span_of(spec: tuple[Any, ...]) -> ReadableSpan:
    trace_id, span_id, parent, kind, agent, resource, tokens = spec
    attributes: dict[str, Any] = {}
    scope = OTHER_SCOPE
    if kind in ("foreign", "ours"):
        attributes = {
            sc.GEN_AI_SYSTEM: "openai", sc.GEN_AI_REQUEST_MODEL: "gpt-4o",
            sc.GEN_AI_USAGE_INPUT_TOKENS: tokens, sc.GEN_AI_USAGE_OUTPUT_TOKENS: 1,
        }  # fmt: skip
        scope = OUR_SCOPE if kind == "ours" else OTHER_SCOPE
        if agent is not None:
            attributes[sc.GEN_AI_AGENT_NAME] = agent
    elif kind in ("invoke_agent", "invoke_workflow"):
        attributes = {sc.GEN_AI_OPERATION_NAME: getattr(sc, f"OPERATION_{kind.upper()}")}
        if agent is not None:
            attributes[sc.GEN_AI_AGENT_NAME] = agent
        attributes[sc.GEN_AI_WORKFLOW_NAME] = "flow"
    start = 1_767_225_600_000_000_000 + tokens
    return ReadableSpan(
        name=kind, context=SpanContext(trace_id, span_id, False, TraceFlags(1)),
        parent=SpanContext(trace_id, parent, False, TraceFlags(1)) if parent else None,
        kind=SpanKind.CLIENT, attributes=attributes, start_time=start, end_time=start + 1000,
        resource=RESOURCES[resource], instrumentation_scope=scope,
    )  # fmt: skip


pipeline_ops = st.lists(
    st.one_of(
        st.tuples(st.just("spans"), st.lists(span_specs, max_size=8), st.sampled_from([0, 0.5, 1, 3])),
        st.tuples(st.just("flush"), st.sampled_from([-0.5, 0, 1, 3, INF])),
    ),
    max_size=10,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_pipeline(
    config: DedupeConfig, batch_paths: bool, compiled: bool
) -> tuple[Pipeline, Clock, list[Any]]:
    clock = Clock()
    pipeline = Pipeline(MetricsConfig(), dedupe=config, clock=clock, compiled=compiled)
    pipeline.batch_paths = batch_paths
    counted: list[UsageRecord] = []
    pipeline.add_listener(counted.append)
    return pipeline, clock, counted


def tracked(pipeline: Pipeline) -> list[tuple[Any, ...]]:
    """The walks in progress, as plain values, in a stable order."""
    walks = [(w.record, w.frontier, w.agent, w.workflow, w.deadline) for w in pipeline._resolver.walks()]
    return sorted(walks, key=repr)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    config=dedupe_configs,
    ops=pipeline_ops,
    path=st.sampled_from(["spans", "otlp_bytes", "otlp_bytes_pure"]),
)
def test_pipeline_batch_paths_count_what_per_record_counts(
    config: DedupeConfig, ops: list[tuple[Any, ...]], path: str
) -> None:
    compiled = path == "otlp_bytes" and scanner() is not None
    sides = [make_pipeline(config, batch_paths, compiled) for batch_paths in (True, False)]
    for op in ops:
        for pipeline, clock, _ in sides:
            if op[0] == "spans":
                clock.now += op[2]
                spans = [span_of(spec) for spec in op[1]]
                if path == "spans":
                    pipeline.ingest_spans(spans)
                else:
                    pipeline.ingest_otlp_bytes(encode_spans(spans).SerializeToString())
            else:
                pipeline.flush(op[1] if math.isinf(op[1]) else clock.now + op[1])
        (fast, _, fast_counted), (slow, _, slow_counted) = sides
        assert fast_counted == slow_counted  # the same records, in order, with the same attribution
        assert fast.state() == slow.state()
        assert tracked(fast) == tracked(slow)
        assert fast._resolver.waiting == slow._resolver.waiting


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    config=dedupe_configs,
    batches=st.lists(
        st.lists(
            st.tuples(
                record_specs, st.sampled_from([None, "own", "resource"]), st.sampled_from([None, "wf"])
            ),
            max_size=8,
        ),
        max_size=6,
    ),
)
def test_in_process_records_batch_paths_count_what_per_record_counts(
    config: DedupeConfig, batches: list[list[Any]]
) -> None:
    """`ingest_records`: no spans to scan, the records alone are the links and the scopes."""
    sides = [make_pipeline(config, batch_paths, False) for batch_paths in (True, False)]
    for specs in batches:
        for pipeline, clock, _ in sides:
            clock.now += 1
            pipeline.ingest_records(attributed_records(specs))
        (fast, _, fast_counted), (slow, _, slow_counted) = sides
        assert fast_counted == slow_counted
        assert fast.state() == slow.state()
        assert tracked(fast) == tracked(slow)
    for pipeline, _, _ in sides:
        pipeline.flush(INF)
    assert sides[0][2] == sides[1][2]

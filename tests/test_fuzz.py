"""Fuzzing, bounded for CI: what an outsider can send or write never breaks us.

- OTLP export bodies (protobuf and JSON, plain and gzip; well-formed requests full of hostile
  attribute values, and those bytes mutated) through the collector's own `decode_body` and
  `Pipeline.ingest_otlp`: a body is decoded or refused with `Rejected`; ingesting never raises;
  every exposed sample stays finite and >= 0; received and rejected spans on /metrics add up to what
  the ingest results said.
- Budget files and collector config files (YAML shaped like the real thing with hostile values,
  real files with a line replaced, arbitrary text): a loaded spec or a `BudgetFileError` /
  `ConfigError` whose every line says file:line, never another exception.

The suite runs with `OTEL_TOKENS_RAISE_INTERNAL_ERRORS=1`, so an internal error swallowed in
production fails here. Examples are derandomized (the same each CI run, no example database) and
few enough that this file runs in well under 30 s. When hunting, run many more, randomly:
`HYPOTHESIS_PROFILE=deep pytest -p no:timeout tests/test_fuzz.py` (pytest-timeout's 120 s per test
would otherwise interrupt hypothesis mid-generation, which it reports as a flaky strategy).
"""

from __future__ import annotations

import base64
import gzip
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status
from prometheus_client import CollectorRegistry

from otel_tokens import metric_names as mn
from otel_tokens import semconv as sc
from otel_tokens.budgets.loader import BudgetFileError, parse_budget_text
from otel_tokens.collector.config import ConfigError, load_config
from otel_tokens.collector.http_receiver import ingest_decoded
from otel_tokens.collector.otlp_codec import JSON, PROTOBUF, Rejected, decode_body
from otel_tokens.pipeline import Pipeline

ROOT = Path(__file__).resolve().parent.parent
_LIMIT = 1 << 20

settings.register_profile(
    "ci",
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("deep", max_examples=2000, deadline=None, derandomize=False)
_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")

#: Every attribute name we read or write, so the fuzzer hits the extractor's slots, not only noise.
_OUR_KEYS = sorted({v for k, v in vars(sc).items() if k.isupper() and isinstance(v, str) and "." in v})
_TOKEN_KEYS = [k for k in _OUR_KEYS if "token" in k]


# --- OTLP strategies ----------------------------------------------------------------------------------
_counts = st.one_of(
    st.integers(0, 10_000),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, 10**9, 10**9 + 1, 10_000_000, 10_000_001, -1, 2**63 - 1]),
)
_scalars = st.one_of(
    _counts.map(lambda v: AnyValue(int_value=v)),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda v: AnyValue(double_value=v)),
    st.text(max_size=40).map(lambda v: AnyValue(string_value=v)),
    st.sampled_from(
        ["flex", "priority", "default", "pricing", "estimation", "gpt-5", "claude-sonnet-4-5"]
    ).map(lambda v: AnyValue(string_value=v)),
    st.booleans().map(lambda v: AnyValue(bool_value=v)),
    st.binary(max_size=16).map(lambda v: AnyValue(bytes_value=v)),
    st.just(AnyValue()),
)
_any_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4).map(lambda vs: AnyValue(array_value=ArrayValue(values=vs))),
        st.lists(st.tuples(st.text(max_size=8), children), max_size=3).map(
            lambda kvs: AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key=k, value=v) for k, v in kvs]))
        ),
    ),
    max_leaves=6,
)
_keys = st.one_of(st.sampled_from(_OUR_KEYS), st.sampled_from(_TOKEN_KEYS), st.text(max_size=20))
_attributes = st.lists(st.builds(KeyValue, key=_keys, value=_any_values), max_size=10)
_spans = st.builds(
    Span,
    trace_id=st.one_of(st.binary(min_size=16, max_size=16), st.binary(max_size=20)),
    span_id=st.one_of(st.binary(min_size=8, max_size=8), st.binary(max_size=10)),
    parent_span_id=st.binary(max_size=8),
    name=st.text(max_size=10),
    start_time_unix_nano=st.integers(0, 2**64 - 1),
    end_time_unix_nano=st.integers(0, 2**64 - 1),
    attributes=_attributes,
    status=st.builds(Status, code=st.integers(0, 2)),
)
_requests = st.builds(
    lambda groups: ExportTraceServiceRequest(resource_spans=groups),
    st.lists(
        st.builds(
            ResourceSpans,
            resource=st.builds(Resource, attributes=_attributes),
            scope_spans=st.lists(
                st.builds(
                    ScopeSpans,
                    scope=st.builds(
                        InstrumentationScope,
                        name=st.one_of(
                            st.just(sc.INSTRUMENTATION_SCOPE),
                            st.just(sc.ANTHROPIC_SDK_SCOPE),
                            st.text(max_size=10),
                        ),
                    ),
                    spans=st.lists(_spans, max_size=5),
                ),
                max_size=2,
            ),
        ),
        max_size=2,
    ),
)


def _mutated(data: bytes, cuts: list[tuple[int, int]]) -> bytes:
    """`data` with bytes overwritten (position, value) and, for a negative position, truncated."""
    out = bytearray(data)
    for position, value in cuts:
        if not out:
            break
        if position < 0:
            del out[position % len(out) :]
        else:
            out[position % len(out)] = value
    return bytes(out)


_cuts = st.lists(st.tuples(st.integers(-(2**16), 2**16), st.integers(0, 255)), max_size=4)


def _otlp_json(request: ExportTraceServiceRequest) -> Any:
    """OTLP/JSON as exporters send it: camelCase, ids in hex (protobuf's own mapping uses base64)."""
    document = json_format.MessageToDict(request)
    for group in document.get("resourceSpans", []):
        for scope in group.get("scopeSpans", []):
            for span in scope.get("spans", []):
                for name in ("traceId", "spanId", "parentSpanId"):
                    if name in span:
                        span[name] = base64.b64decode(span[name]).hex()
    return document


_json_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
)
_json_values = st.recursive(
    _json_leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


# --- the properties -------------------------------------------------------------------------------------
def _ingest_checked(bodies: list[tuple[bytes, str, str]]) -> None:
    """Decode and ingest each body into one fresh pipeline; check what /metrics then says."""
    pipeline = Pipeline(registry=CollectorRegistry(), price=lambda *_: 0.001)
    received = rejected = 0
    for body, content_type, encoding in bodies:
        try:
            decoded = decode_body(body, content_type, encoding, _LIMIT)
        except Rejected as exc:
            assert 400 <= exc.status < 500 and exc.reason
            pipeline.reject_payload(exc.reason)
            rejected += 1
            continue
        result = ingest_decoded(pipeline, decoded)  # spans that did not decode are rejected alone
        assert 0 <= result.records_counted + result.spans_rejected <= result.spans_received
        assert len(result.reasons) <= result.spans_rejected
        received += result.spans_received + decoded.undecodable_spans
        rejected += result.spans_rejected + decoded.undecodable_spans
    pipeline.flush(now=float("inf"))
    _assert_sane(pipeline.registry, received, rejected)


def _assert_sane(registry: CollectorRegistry, received: int, rejected: int) -> None:
    total_received = total_rejected = 0.0
    for family in registry.collect():
        for sample in family.samples:
            assert not math.isnan(sample.value) and sample.value >= 0, sample
            assert math.isfinite(sample.value), sample
            if sample.name == mn.SPANS_RECEIVED:
                total_received += sample.value
            elif sample.name == mn.SPANS_REJECTED:
                total_rejected += sample.value
    assert (total_received, total_rejected) == (received, rejected)


@settings(settings.get_profile(_PROFILE))
@given(requests=st.lists(_requests, min_size=1, max_size=3), cuts=_cuts, gzip_it=st.booleans())
def test_otlp_protobuf_bodies_never_break_the_pipeline(
    requests: list[ExportTraceServiceRequest], cuts: list[tuple[int, int]], gzip_it: bool
) -> None:
    bodies = []
    for request in requests:
        data = _mutated(request.SerializeToString(), cuts)
        bodies.append((gzip.compress(data), PROTOBUF, "gzip") if gzip_it else (data, PROTOBUF, ""))
    _ingest_checked(bodies)


@settings(settings.get_profile(_PROFILE))
@given(
    request=_requests,
    junk=_json_values,
    where=st.sampled_from(["none", "top", "span", "attribute", "value"]),
    cuts=st.lists(st.tuples(st.integers(-(2**12), 2**12), st.integers(32, 126)), max_size=2),
)
def test_otlp_json_bodies_never_break_the_pipeline(
    request: ExportTraceServiceRequest, junk: Any, where: str, cuts: list[tuple[int, int]]
) -> None:
    document = _otlp_json(request)
    spans = [
        s
        for g in document.get("resourceSpans", [])
        for sc_ in g.get("scopeSpans", [])
        for s in sc_.get("spans", [])
    ]
    if where == "top":
        document = {"resourceSpans": junk}
    elif where == "span" and spans:
        spans[0]["attributes"] = junk
    elif where == "attribute" and spans:
        spans[0].setdefault("attributes", []).append({"key": sc.GEN_AI_USAGE_INPUT_TOKENS, "value": junk})
    elif where == "value" and spans:
        spans[0]["attributes"] = [{"key": sc.GEN_AI_USAGE_OUTPUT_TOKENS, "value": {"intValue": junk}}]
    body = _mutated(json.dumps(document).encode(), cuts)
    _ingest_checked([(body, JSON, "")])


@settings(settings.get_profile(_PROFILE))
@given(
    body=st.binary(max_size=300),
    content_type=st.sampled_from([PROTOBUF, JSON]),
    encoding=st.sampled_from(["", "gzip", "deflate", "br"]),
)
def test_arbitrary_bytes_are_decoded_or_refused(body: bytes, content_type: str, encoding: str) -> None:
    _ingest_checked([(body, content_type, encoding)])


# --- budget and config files ----------------------------------------------------------------------------
_FILE_LINE = re.compile(r"^(?P<file>.+?):(?P<line>\d+): ")
_BUDGET_KEYS = [
    "version", "timezone", "budgets", "alerting", "alert_for", "dashboard_url", "name", "scope",
    "limit", "window", "warn_at", "severity", "action", "tokens", "usd", "token_types", "agent",
    "per_task_instance", "spike", "forecast", "receivers", "routes", "downgrade_to", "factor",
]  # fmt: skip
_yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=15),
    st.sampled_from(["day", "week", "1h", "30d", "P1", "block", "Europe/Berlin", "-5", "1e309", ".nan"]),
)  # fmt: skip
_yaml_values = st.recursive(
    _yaml_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.one_of(st.sampled_from(_BUDGET_KEYS), st.text(max_size=8)), children, max_size=4),
    ),
    max_leaves=15,
)


def _line_replaced(text: str, index: int, replacement: str) -> str:
    lines = text.splitlines()
    lines[index % len(lines)] = replacement
    return "\n".join(lines)


_yaml_line_noise = st.one_of(
    st.text(max_size=30),
    st.sampled_from([
        "  - name: &a x", "  limit: *a", "budgets: !!python/object:os.system {}", "\t- x", "{", "'",
        "? [a, b]\n: c", "<<: {a: 1}", "limit: {tokens: 1e99}", "key: \x00", "%YAML 1.1", "---\n---",
    ]),
)  # fmt: skip


def _budget_texts() -> st.SearchStrategy[str]:
    good = [p.read_text() for p in sorted((ROOT / "tests" / "fixtures" / "budgets").glob("*.good.yaml"))]
    good.append((ROOT / "examples" / "budgets.yaml").read_text())
    return st.one_of(
        st.dictionaries(st.sampled_from(_BUDGET_KEYS), _yaml_values, max_size=5).map(
            lambda d: yaml.safe_dump(d, allow_unicode=True)
        ),
        st.builds(_line_replaced, st.sampled_from(good), st.integers(0, 10_000), _yaml_line_noise),
        st.text(max_size=200),
    )


@settings(settings.get_profile(_PROFILE))
@given(text=_budget_texts())
def test_any_budget_yaml_loads_or_names_file_and_line(text: str) -> None:
    try:
        parse_budget_text(text, "budgets.yaml")
    except BudgetFileError as exc:
        assert exc.errors
        for error in exc.errors:
            match = _FILE_LINE.match(str(error))
            assert match and match["file"] == "budgets.yaml", str(error)


_CONFIG_KEYS = ["otlp", "http", "grpc", "host", "port", "enabled", "max_body_bytes", "metrics", "dimensions",
                "max_series", "dedupe_hold_seconds", "flush_interval_seconds", "budgets_file"]  # fmt: skip
_config_values = st.recursive(
    st.one_of(_yaml_scalars, st.sampled_from([0, 4318, 65536, "agent", ["agent", "task"], ["task_id"]])),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.one_of(st.sampled_from(_CONFIG_KEYS), st.text(max_size=8)), children, max_size=4),
    ),
    max_leaves=12,
)
_CONFIG_EXAMPLE = """otlp:
  http: {host: 127.0.0.1, port: 4318}
  grpc: {enabled: true, port: 4317}
  max_body_bytes: 1048576
metrics:
  port: 9464
  dimensions: [agent, task, model, provider]
  max_series: 2000
  dedupe_hold_seconds: 2
"""


@settings(settings.get_profile(_PROFILE))
@given(
    text=st.one_of(
        st.dictionaries(st.sampled_from(_CONFIG_KEYS), _config_values, max_size=4).map(yaml.safe_dump),
        st.builds(_line_replaced, st.just(_CONFIG_EXAMPLE), st.integers(0, 100), _yaml_line_noise),
        st.text(max_size=150),
    )
)
def test_any_collector_config_yaml_loads_or_names_file_and_line(text: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "collector.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            load_config(path=path, env={})
        except ConfigError as exc:
            assert exc.errors
            for error in exc.errors:
                # a problem in the file names file:line; a cross-key problem names its keys
                match = _FILE_LINE.match(error)
                assert (match and match["file"] == path) or re.match(r"^[a-z_.]+( and [a-z_.]+)*: ", error), (
                    error
                )

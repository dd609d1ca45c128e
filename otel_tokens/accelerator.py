"""The optional compiled OTLP walk (`_otlp_scan`, C): configured here, used by the extractor.

A plain `pip install` without a compiler has no `_otlp_scan`; everything then runs the pure-Python
path and `scanner()` returns None. With it, the extractor hands the serialized request to
`scan(data, fallback)`, which returns the slot values (the label slots, `extract.LABEL_SLOTS`,
already made labels by `extract._label`'s rule), ranks and span fields of the usage, task and
verify spans only, and each resource's attribution attributes plus its `fallback` attribute (the
extractor's `agent_fallback_attribute`, e.g. `service.name`) — the same values the Python walk reads
from the decoded request — or None to decline, and the extractor then takes the Python path on the
same payload. `build` then turns each plain usage span's hit into the UsageRecord `extract._record`
would build (record_builder(); the rare rules stay in Python), priced in C by the batch's price
table (`pricing.PriceTable`, compiled by `rates_compiler()`: the same float operations as the
generated Python cost), and `links` gives the ancestor walk its parent links as a dict. The
aggregator adds records to their series with `tally` (series_tally(); the records it does not
mirror in Python, in order). So both paths count the same spans the same way:
tests/test_accelerator.py feeds both the same payloads, fuzzed ones included;
tests/test_price_table.py holds C and Python prices equal bit for bit, and
tests/test_aggregate_compiled.py the aggregator's two loops.

The walk checks every field against the schema of the installed `opentelemetry-proto` (built
here from its descriptors) so it never accepts a payload upb would refuse; the few field numbers it
reads are checked against those descriptors before it is switched on.

`OTEL_TOKENS_PURE_PYTHON=1` switches the compiled walk off (for comparisons and debugging).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

__all__ = [
    "PURE_PYTHON_ENV",
    "Build",
    "LinksWalk",
    "ScanResult",
    "Tally",
    "links_walk",
    "rates_compiler",
    "record_builder",
    "scanner",
    "series_tally",
]

#: "1": never use the compiled walk, even when it is built.
PURE_PYTHON_ENV = "OTEL_TOKENS_PURE_PYTHON"

_log = logging.getLogger(__name__)

#: (spans, per ResourceSpans the attribution attributes found or None, per ScopeSpans [resource
#: index, scope name], per usage span (scope index, slot values, ranks, trace id, span id, parent
#: span id, start ns, end ns, status code), span events seen: the guard's decision events are
#: read from the decoded request, only when there are any)
ScanResult = tuple[int, list[Any], list[list[Any]], list[Any], int]
#: `links(data, traces, (operation key, agent key, workflow key), operations)`: for the spans of
#: `traces`, their parent links ({span key: parent key}, keys as `ancestry.span_key` makes them) and,
#: for each span whose operation is one of `operations` (only those can open a scope; a row per chat
#: span was a Python iteration per span), (span key, operation, agent, workflow: the attributes'
#: scalar values or None); or None to decline. Only for a payload `scan` accepted (the ancestor walk's
#: parent links, extract.scan_otlp_bytes): the links are built in C, not per span in Python.
LinksWalk = Callable[
    [bytes, set[int], tuple[str, str, str], frozenset[str]],
    tuple[dict[int, int], list[tuple[Any, ...]]] | None,
]

#: `build(hits, resources, ours, ceiling[, prices, unpriced])`: replaces, in place, each of `scan`'s
#: hits that needs none of extract._record's rare rules (plain in-range counts, nothing to make
#: consistent, a plain cost or none, a service tier that is a label as it is or none, no error type,
#: enrichment failure, 1-hour split or total) by the UsageRecord _record would build; returns how
#: many. A span without a cost is priced by the compiled price set `prices`
#: (`pricing.PriceTable.compiled`) has for the record's price key, as `fast` prices it; without one
#: the cost is left None and the record appended to `unpriced`, for the caller to price.
#: `resources[scope]` is the scope's resource attribution as a tuple of Attribution's fields (or
#: None), `ours[scope]` whether the scope is otel-tokens' own, `ceiling` max_tokens_per_call.
Build = Callable[..., int]

# the C walk's kinds (K_*) by descriptor field type
_VARINT, _FIXED64, _FIXED32, _BYTES, _STRING, _MESSAGE = range(1, 7)
_KIND_OF_TYPE = {
    1: _FIXED64,
    2: _FIXED32,
    3: _VARINT,
    4: _VARINT,
    5: _VARINT,
    6: _FIXED64,
    7: _FIXED32,
    8: _VARINT,
    9: _STRING,
    10: _MESSAGE,
    11: _MESSAGE,
    12: _BYTES,
    13: _VARINT,
    14: _VARINT,
    15: _FIXED32,
    16: _FIXED64,
    17: _VARINT,
    18: _VARINT,
}  # fmt: skip  (10, a group, is never length-delimited: the walk declines it)

#: The fields the C walk reads by number: (message, field number, name, kind). Checked against the
#: installed descriptors before the walk is switched on.
_READ_FIELDS = (
    ("ExportTraceServiceRequest", 1, "resource_spans", _MESSAGE),
    ("ResourceSpans", 1, "resource", _MESSAGE),
    ("ResourceSpans", 2, "scope_spans", _MESSAGE),
    ("Resource", 1, "attributes", _MESSAGE),
    ("ScopeSpans", 1, "scope", _MESSAGE),
    ("ScopeSpans", 2, "spans", _MESSAGE),
    ("InstrumentationScope", 1, "name", _STRING),
    ("Span", 1, "trace_id", _BYTES),
    ("Span", 2, "span_id", _BYTES),
    ("Span", 4, "parent_span_id", _BYTES),
    ("Span", 7, "start_time_unix_nano", _FIXED64),
    ("Span", 8, "end_time_unix_nano", _FIXED64),
    ("Span", 9, "attributes", _MESSAGE),
    ("Span", 11, "events", _MESSAGE),
    ("Span", 15, "status", _MESSAGE),
    ("KeyValue", 1, "key", _STRING),
    ("KeyValue", 2, "value", _MESSAGE),
    ("AnyValue", 1, "string_value", _STRING),
    ("AnyValue", 2, "bool_value", _VARINT),
    ("AnyValue", 3, "int_value", _VARINT),
    ("AnyValue", 4, "double_value", _FIXED64),
    ("AnyValue", 7, "bytes_value", _BYTES),
    ("Status", 3, "code", _VARINT),
)
#: The message types in the order the C walk numbers them (T_REQ .. T_STATUS), by descriptor path.
_FIXED_TYPES = (
    "ExportTraceServiceRequest",
    "ResourceSpans",
    "Resource",
    "ScopeSpans",
    "InstrumentationScope",
    "Span",
    "KeyValue",
    "AnyValue",
    "Status",
)


def _schema() -> list[list[tuple[int, int, int, int]]] | None:
    """Every message type reachable from ExportTraceServiceRequest, the walk's fixed ones first."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    root = ExportTraceServiceRequest.DESCRIPTOR
    order: list[Any] = []
    pending = [root]
    while pending:
        descriptor = pending.pop()
        if descriptor in order:
            continue
        order.append(descriptor)
        pending.extend(f.message_type for f in descriptor.fields if f.message_type is not None)
    by_name = {d.name: d for d in order}
    if any(name not in by_name for name in _FIXED_TYPES):
        return None
    fixed = [by_name[name] for name in _FIXED_TYPES]
    order = fixed + [d for d in order if d not in fixed]
    index = {d: i for i, d in enumerate(order)}
    for message, number, name, kind in _READ_FIELDS:
        field = by_name[message].fields_by_number.get(number)
        if field is None or field.name != name or _KIND_OF_TYPE.get(field.type) != kind:
            return None
    return [
        [
            (f.number, _KIND_OF_TYPE[f.type], int(_repeated(f)), index.get(f.message_type, -1))
            for f in d.fields
        ]
        for d in order
    ]


def _repeated(field: Any) -> bool:
    is_repeated = getattr(field, "is_repeated", None)  # protobuf >= 5.28; `label` before
    return bool(is_repeated) if is_repeated is not None else field.label == 3


def _configure(module: Any) -> Callable[[bytes, str | None], ScanResult | None] | None:
    from otel_tokens import extract

    schema = _schema()
    if schema is None:
        _log.info("otel-tokens: the installed OTLP schema differs from the compiled walk's; pure Python")
        return None
    attribution, labels = extract.ATTRIBUTION_SLOTS, extract.LABEL_SLOTS
    entries = [
        (key, slot, rank, (expected == "array_value") | (slot in attribution) << 1 | (slot in labels) << 2)
        for key, (slot, rank, expected) in extract.OTLP_ENTRIES.items()
    ]
    module.configure(
        schema, entries, extract.N_SLOTS, extract.NO_RANK, extract.USAGE_SLOTS, extract.MAX_LABEL
    )
    scan: Callable[[bytes, str | None], ScanResult | None] = module.scan
    _configure_records(module)
    return scan


def _configure_records(module: Any) -> None:
    """Switch on `build` when the record classes still have the fields, in the order, it fills."""
    global _build
    from dataclasses import fields

    from otel_tokens import extract
    from otel_tokens.record import Attribution, TokenCounts, UsageRecord

    if [f.name for f in fields(UsageRecord)] != list(_RECORD_FIELDS) or [
        f.name for f in fields(Attribution)
    ] != ["agent", "task", "task_id", "user", "session", "step", "workflow"]:
        _log.info("otel-tokens: the usage record's fields differ from the compiled build's; not used")
        return
    e = extract
    slots = (
        e.IN, e.OUT, e.CACHE_READ, e.CACHE_WRITE, e.REASONING, e.TOTAL, e.REQUEST_MODEL, e.COST,
        e.ESTIMATED, e.MARKER, e.ERROR_TYPE, e.TASK_SCOPE, e.CACHE_WRITE_1H, e.SERVICE_TIER,
        e.ENRICHMENT_FAILED, e.VERIFY_PASSED,
    )  # fmt: skip
    if e.WORKFLOW != e.REQUEST_MODEL + 10:
        return
    names = [tuple(f.name for f in fields(cls)) for cls in (UsageRecord, TokenCounts, Attribution)]
    if names[1] != ("input", "output", "cache_read", "cache_write", "reasoning", "cache_write_1h"):
        return
    try:  # the classes' slots are checked there: plain object slots, else the build stays off
        module.configure_records(
            UsageRecord, TokenCounts, Attribution, slots, e.MAX_TOKENS, e.MAX_COST_USD, *names
        )
    except ValueError as exc:
        _log.info("otel-tokens: the compiled record build is off: %s", exc)
        return
    _build = module.build


#: The UsageRecord fields `build` fills, in order.
_RECORD_FIELDS = (
    "provider", "request_model", "operation", "response_model", "tokens", "estimated", "cost_usd",
    "attribution", "status", "error_type", "trace_id", "span_id", "parent_span_id", "start_time_ns",
    "end_time_ns", "ours", "service_tier", "failed_steps", "agent_from_resource",
)  # fmt: skip


_scanner: Callable[[bytes, str | None], ScanResult | None] | None = None
_links: LinksWalk | None = None
_build: Build | None = None
_loaded = False


def scanner() -> Callable[[bytes, str | None], ScanResult | None] | None:
    """The compiled walk, configured; None when it is not built, switched off, or does not match."""
    global _scanner, _links, _loaded
    if not _loaded:
        _loaded = True
        if os.environ.get(PURE_PYTHON_ENV, "") in ("", "0"):
            try:
                from otel_tokens import _otlp_scan  # type: ignore[attr-defined]
            except ImportError:
                _otlp_scan = None
            if _otlp_scan is not None:
                _scanner = _configure(_otlp_scan)
                _links = _otlp_scan.links if _scanner is not None else None
    return _scanner


def record_builder() -> Build | None:
    """The compiled record build (`build`), when the compiled walk (`scanner()`) is on."""
    scanner()
    return _build


def rates_compiler() -> Callable[[Any], object | None] | None:
    """What turns a price set (`pricing._Rates`) into the form `build` prices records with (None
    for a set of a shape the C code does not take), when the compiled build is on: the C cost is
    the generated `fast`'s, bit for bit (tests/test_price_table.py)."""
    if record_builder() is None:
        return None
    from otel_tokens import _otlp_scan  # type: ignore[attr-defined]

    compile_linear = _otlp_scan.linear

    def compile_rates(rates: Any) -> object | None:
        terms = tuple((term.coefs, term.constant, term.rates) for term in rates.terms)
        linear: object | None = compile_linear(rates.thresholds, terms)
        return linear

    return compile_rates


#: `tally(records, keys, entries, buckets, now, start, extras) -> stop`: aggregate.Aggregator's
#: `_add_series` loop in C (see _otlp_scan.c); None when not built, switched off or not matching.
Tally = Callable[[list[Any], list[Any], dict[Any, Any], tuple[float, ...], float, int, list[Any]], int]
_SERIES_FIELDS = (
    "tokens", "input_buckets", "cost_usd", "requests_ok", "requests_error", "estimated_tokens",
    "input_sum", "last_seen",
)  # fmt: skip
_tally: Tally | None = None
_tally_configured = False


def series_tally(series_class: type) -> Tally | None:
    """The compiled loop that adds records to their series (`aggregate.Aggregator`), configured with
    the aggregator's `Series` class, when the compiled record build is on and the class still has
    the fields, in the order, it reads."""
    global _tally, _tally_configured
    if not _tally_configured:
        _tally_configured = True
        from dataclasses import fields

        if record_builder() is None or tuple(f.name for f in fields(series_class)) != _SERIES_FIELDS:
            return None
        from otel_tokens import _otlp_scan  # type: ignore[attr-defined]

        try:
            _otlp_scan.configure_series(series_class, _SERIES_FIELDS)
        except ValueError as exc:
            _log.info("otel-tokens: the compiled series tally is off: %s", exc)
            return None
        _tally = _otlp_scan.tally
    return _tally


def links_walk() -> LinksWalk | None:
    """The compiled parent-link walk, when the compiled walk (`scanner()`) is on."""
    scanner()
    return _links

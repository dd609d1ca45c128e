"""OTLP export bodies in and responses out, with no sockets: shared by the HTTP and gRPC receivers.

Decoding follows the OTLP/HTTP spec: protobuf or OTLP/JSON (hex trace and span ids, which plain
protobuf JSON would read as base64), optional gzip/deflate bounded by the decompressed size (a gzip
bomb stops at the limit), a `partial_success` response when spans were rejected.

A protobuf body whose *framing* is sound but one of whose spans cannot be decoded (typically invalid
UTF-8 in a string attribute, which the protobuf runtime rejects for the whole message) is decoded
again piecewise (`split_decode`): every span that parses is kept, every one that does not is
counted as rejected and reported through partial success. OTLP/JSON gets the same treatment for a
span that does not fit the schema (`_split_json`). Exporters do not retry a 400, so
refusing the whole batch would lose the good spans with the bad.
"""

from __future__ import annotations

import base64
import contextlib
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from otel_tokens.pipeline import IngestResult

__all__ = [
    "JSON",
    "PROTOBUF",
    "Decoded",
    "Rejected",
    "decode_body",
    "decode_json",
    "decode_protobuf",
    "decompress",
    "encode_message",
    "partial_success",
]

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
#: The reason label under which undecodable bodies and spans are counted.
UNDECODABLE = "undecodable_payload"


@dataclass
class Rejected(Exception):
    """A request we refuse as a whole: HTTP status, a bounded reason label for the rejection
    counter, and a message telling the sender what was wrong."""

    status: HTTPStatus
    reason: str
    message: str


@dataclass
class Decoded:
    """An export request ready for the pipeline, and how many spans could not be decoded at all."""

    request: ExportTraceServiceRequest
    undecodable_spans: int = 0
    first_error: str = ""


def decode_body(body: bytes, content_type: str, encoding: str, limit: int) -> Decoded:
    """Decompress and parse one export body; raise `Rejected` with the status the spec asks for when
    the body as a whole is unusable. A protobuf body with undecodable spans keeps its good spans."""
    data = _decompress(body, encoding, limit)
    if content_type == PROTOBUF:
        return decode_protobuf(data)
    return decode_json(data)


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """The body as sent before `Content-Encoding` (gzip, deflate or none), never inflated past
    `limit`; raise `Rejected` as `decode_body` does."""
    return _decompress(body, encoding, limit)


def decode_protobuf(data: bytes) -> Decoded:
    """Parse a protobuf export request, falling back to span-by-span decoding when the fast path
    fails; raise `Rejected` only when the message framing itself is broken."""
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(data)
        return Decoded(request)
    except DecodeError as exc:
        error = str(exc)
    try:
        return split_decode(data, error)
    except _Malformed:
        raise Rejected(HTTPStatus.BAD_REQUEST, UNDECODABLE, f"invalid OTLP protobuf: {error}") from None


# --- piecewise decoding over the protobuf wire format --------------------------------------------

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
# Field numbers from opentelemetry/proto/trace/v1/trace.proto and trace_service.proto.
_REQUEST_RESOURCE_SPANS = 1
_RESOURCE_SPANS_RESOURCE, _RESOURCE_SPANS_SCOPE_SPANS = 1, 2
_SCOPE_SPANS_SCOPE, _SCOPE_SPANS_SPANS = 1, 2


class _Malformed(Exception):
    """The wire format itself is broken (truncated, bad varint, unknown wire type)."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _Malformed
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, start, end) of each field; for LEN fields start..end is the payload."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            _, end = _varint(data, pos)
        elif wire == _I64:
            end = pos + 8
        elif wire == _I32:
            end = pos + 4
        elif wire == _LEN:
            size, pos = _varint(data, pos)
            end = pos + size
        else:
            raise _Malformed
        if number == 0 or end > len(data):
            raise _Malformed
        yield number, wire, pos, end
        pos = end


def _parse(cls: type[Message], data: bytes) -> Message | None:
    try:
        return cls.FromString(data)
    except DecodeError:
        return None


def _header_and_children(
    data: bytes, header_field: int, header_cls: type[Message], child_field: int
) -> tuple[Message | None, bool, list[bytes]]:
    """A container's header (resource or scope: parsed, and whether it parsed) and its children's
    raw bytes, for the children to be parsed one by one."""
    header: Message | None = None
    header_ok = True
    children: list[bytes] = []
    for number, wire, start, end in _fields(data):
        if wire != _LEN:
            continue
        if number == header_field:
            header = _parse(header_cls, data[start:end])
            header_ok = header is not None
        elif number == child_field:
            children.append(data[start:end])
    return header, header_ok, children


class _Splitter:
    """Rebuilds a request from the parts that decode; counts the spans that do not."""

    def __init__(self, error: str) -> None:
        self.request = ExportTraceServiceRequest()
        self.bad = 0
        self.error = error

    def request_(self, data: bytes) -> None:
        for number, wire, start, end in _fields(data):
            if number == _REQUEST_RESOURCE_SPANS and wire == _LEN:
                self.resource_spans(data[start:end])

    def resource_spans(self, data: bytes) -> None:
        whole = _parse(ResourceSpans, data)
        if isinstance(whole, ResourceSpans):
            self.request.resource_spans.append(whole)
            return
        out = ResourceSpans()
        resource, resource_ok, parts = _header_and_children(
            data, _RESOURCE_SPANS_RESOURCE, Resource, _RESOURCE_SPANS_SCOPE_SPANS
        )
        if resource is not None:
            out.resource.CopyFrom(resource)
        for part in parts:
            # Spans under an undecodable resource cannot be attributed: all rejected.
            scope_spans = self.scope_spans(part) if resource_ok else None
            if scope_spans is None:
                self.bad += _count_spans(part) if not resource_ok else 0
            elif scope_spans.spans:
                out.scope_spans.append(scope_spans)
        if out.scope_spans:
            self.request.resource_spans.append(out)

    def scope_spans(self, data: bytes) -> ScopeSpans | None:
        whole = _parse(ScopeSpans, data)
        if isinstance(whole, ScopeSpans):
            return whole
        out = ScopeSpans()
        scope, scope_ok, spans = _header_and_children(
            data, _SCOPE_SPANS_SCOPE, InstrumentationScope, _SCOPE_SPANS_SPANS
        )
        if scope is not None:
            out.scope.CopyFrom(scope)
        for raw in spans:
            span = _parse(Span, raw) if scope_ok else None
            if span is None:
                self.bad += 1
            else:
                out.spans.append(span)
        return out


def _count_spans(scope_spans: bytes) -> int:
    return sum(1 for n, w, _, _ in _fields(scope_spans) if n == _SCOPE_SPANS_SPANS and w == _LEN)


def split_decode(data: bytes, error: str = "") -> Decoded:
    """Decode `data` part by part: every ResourceSpans/ScopeSpans/Span that parses is kept."""
    splitter = _Splitter(error)
    splitter.request_(data)
    if splitter.bad == 0 and not splitter.request.resource_spans:
        raise _Malformed  # nothing decodable in it at all
    # bad == 0 with spans kept: the broken part was outside every span (say a schema URL), dropped.
    return Decoded(splitter.request, splitter.bad, error)


# --- compression and JSON ------------------------------------------------------------------------


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise Rejected(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type",
            f"unsupported Content-Encoding {encoding!r}; use gzip, deflate or none",
        )  # fmt: skip
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        data = inflater.decompress(body, limit + 1)  # never inflates more than the limit
    except zlib.error as exc:
        raise Rejected(HTTPStatus.BAD_REQUEST, UNDECODABLE, f"invalid {encoding} body: {exc}") from None
    if len(data) > limit:
        raise Rejected(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "payload_too_large",
            f"decompressed body exceeds the limit of {limit} bytes (otlp.max_body_bytes)",
        )  # fmt: skip
    if not inflater.eof:
        raise Rejected(HTTPStatus.BAD_REQUEST, UNDECODABLE, f"truncated {encoding} body")
    return data


_JSON_ERRORS = (json_format.ParseError, ValueError, TypeError, AttributeError, RecursionError)


def decode_json(data: bytes) -> Decoded:
    """Parse an OTLP/JSON export request; a span that does not parse (say `"intValue": "many"`) is
    rejected alone, like an undecodable protobuf span. Broken JSON is a 400."""
    try:
        document = json.loads(data)
        _hex_ids_to_base64(document)
    except _JSON_ERRORS as exc:
        raise Rejected(HTTPStatus.BAD_REQUEST, UNDECODABLE, f"invalid OTLP/JSON: {exc}") from None
    request = ExportTraceServiceRequest()
    try:
        json_format.ParseDict(document, request, ignore_unknown_fields=True)
        return Decoded(request)
    except _JSON_ERRORS as exc:
        error = str(exc)
    decoded = _split_json(document, error)
    if decoded is None:
        raise Rejected(HTTPStatus.BAD_REQUEST, UNDECODABLE, f"invalid OTLP/JSON: {error}")
    return decoded


def _split_json(document: Any, error: str) -> Decoded | None:
    """The JSON twin of `split_decode`: resource, scope and span parsed one by one."""
    out, bad = ExportTraceServiceRequest(), 0
    for resource_json in _items(document, "resourceSpans", "resource_spans"):
        resource_spans = ResourceSpans()
        resource_ok = _parse_json(_without(resource_json, "scopeSpans", "scope_spans"), resource_spans)
        for scope_json in _items(resource_json, "scopeSpans", "scope_spans"):
            scope_spans = ScopeSpans()
            scope_ok = resource_ok and _parse_json(_without(scope_json, "spans"), scope_spans)
            for span_json in _items(scope_json, "spans"):
                span = Span()
                if scope_ok and _parse_json(span_json, span):
                    scope_spans.spans.append(span)
                else:
                    bad += 1
            if scope_spans.spans:
                resource_spans.scope_spans.append(scope_spans)
        if resource_spans.scope_spans:
            out.resource_spans.append(resource_spans)
    if bad == 0:  # the error was not inside a span: no precise rejection possible
        return None
    return Decoded(out, bad, error)


def _without(obj: Any, *names: str) -> Any:
    return {k: v for k, v in obj.items() if k not in names} if isinstance(obj, dict) else obj


def _parse_json(obj: Any, message: Message) -> bool:
    try:
        json_format.ParseDict(obj, message, ignore_unknown_fields=True)
        return True
    except _JSON_ERRORS:
        return False


_ID_LENGTHS = {"traceId": 32, "trace_id": 32, "spanId": 16, "span_id": 16, "parentSpanId": 16,
               "parent_span_id": 16}  # fmt: skip


def _hex_ids_to_base64(document: Any) -> None:
    """OTLP/JSON encodes trace and span ids as hex; protobuf's JSON mapping expects base64."""
    for resource_spans in _items(document, "resourceSpans", "resource_spans"):
        for scope_spans in _items(resource_spans, "scopeSpans", "scope_spans"):
            for span in _items(scope_spans, "spans"):
                _convert_ids(span)
                for link in _items(span, "links"):
                    _convert_ids(link)


def _items(parent: Any, *names: str) -> list[Any]:
    if isinstance(parent, dict):
        for name in names:
            value = parent.get(name)
            if isinstance(value, list):
                return value
    return []


def _convert_ids(obj: Any) -> None:
    if not isinstance(obj, dict):
        return
    for name, length in _ID_LENGTHS.items():
        value = obj.get(name)
        if isinstance(value, str) and len(value) == length:
            # A hex id of the right length cannot be a valid base64 id of that field; anything else
            # is left to the protobuf parser to accept (base64) or reject.
            with contextlib.suppress(ValueError):
                obj[name] = base64.b64encode(bytes.fromhex(value)).decode("ascii")


# --- responses -----------------------------------------------------------------------------------


def partial_success(
    result: IngestResult, undecodable: int = 0, error: str = ""
) -> ExportTraceServiceResponse:
    """The OTLP response: empty on full success, else the rejected count and why."""
    response = ExportTraceServiceResponse()
    rejected = result.spans_rejected + undecodable
    if rejected:
        reasons = list(result.reasons)
        if undecodable:
            reasons.insert(0, f"{undecodable} spans could not be decoded ({error or 'invalid protobuf'})")
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = "; ".join(reasons) or "spans rejected"
    return response


def encode_message(message: Message, content_type: str) -> bytes:
    if content_type == JSON:
        text: str = json_format.MessageToJson(message, indent=None)
        return text.encode()
    return bytes(message.SerializeToString())

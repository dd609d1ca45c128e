"""What the durable store writes: pipeline changes and state snapshots, as JSON and packed keys.

JSON because a data directory outlives the process that wrote it: it is readable by a newer
collector (and by a person with `sqlite3`), and decoding it cannot run code the way pickle can.
A record is a list of its fields in declaration order; the field names of every record type are
kept with the data (`schema()`), so a collector whose `UsageRecord` gained or lost a field still
reads an older journal: fields are matched by name, new ones take their defaults.

The dedupe memory can hold a million keys; those go as fixed-width bytes, not JSON numbers.
"""

from __future__ import annotations

import json
import sys
from array import array
from collections.abc import Callable
from dataclasses import fields
from operator import attrgetter
from typing import Any, Generic, TypeVar

from otel_tokens.record import Attribution, TaskCompletion, TokenCounts, UsageRecord, Verdict

__all__ = ["Schema", "decode_json", "encode_json", "pack_keys", "schema", "unpack_keys"]

T = TypeVar("T")
Schema = dict[str, list[str]]  # type name -> field names, in the order values are written

#: (trace id << 64 | span id) needs 24 bytes; content keys carry a tag bit above them (see dedupe).
_KEY_BYTES = 25


class _Codec(Generic[T]):
    """One dataclass <-> a JSON list of its field values; nested dataclasses by their own codec."""

    def __init__(self, cls: type[T], nested: dict[str, _Codec[Any]] | None = None) -> None:
        self.cls = cls
        self.names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        self._get: Callable[[T], tuple[Any, ...]] = attrgetter(*self.names)
        self._nested = [(self.names.index(n), c) for n, c in (nested or {}).items()]
        self._by_name = dict(nested or {})
        #: JSON has no tuples: fields that default to one get one back (`failed_steps`)
        self._tuples = {f.name for f in fields(cls) if isinstance(f.default, tuple)}  # type: ignore[arg-type]

    def encode(self, obj: T) -> list[Any]:
        values = list(self._get(obj))
        for i, codec in self._nested:
            values[i] = codec.encode(values[i])
        return values

    def decoder(self, schemas: Schema) -> Callable[[list[Any]], T]:
        """A decoder for values written under `schemas` (this code's own when they match)."""
        written = schemas.get(self.cls.__name__, self.names)
        nested = {n: c.decoder(schemas) for n, c in self._by_name.items()}
        known = set(self.names)
        tuples = self._tuples
        cls = self.cls

        def decode(values: list[Any]) -> T:
            kwargs = {n: v for n, v in zip(written, values, strict=False) if n in known}
            for name, dec in nested.items():
                if name in kwargs:
                    kwargs[name] = dec(kwargs[name])
            for name in tuples & kwargs.keys():
                kwargs[name] = tuple(kwargs[name])
            return cls(**kwargs)

        return decode


_TOKENS = _Codec(TokenCounts)
_ATTRIBUTION = _Codec(Attribution)
RECORD = _Codec(UsageRecord, {"tokens": _TOKENS, "attribution": _ATTRIBUTION})
COMPLETION = _Codec(TaskCompletion)
VERDICT = _Codec(Verdict)


def schema() -> Schema:
    """The field names this code writes, kept in the store next to the data."""
    return {c.cls.__name__: c.names for c in (RECORD, _TOKENS, _ATTRIBUTION, COMPLETION, VERDICT)}


class Decoders:
    """Record and completion decoders for data written under one schema."""

    def __init__(self, written: Schema) -> None:
        self.record = RECORD.decoder(written)
        self.completion = COMPLETION.decoder(written)
        self.verdict = VERDICT.decoder(written)


def encode_json(value: Any) -> bytes:
    """ASCII JSON: a label value a sender made of lone surrogates (OTLP/JSON allows `\\ud800`) is
    escaped and read back as it was, where encoding it as UTF-8 would fail."""
    return json.dumps(value, separators=(",", ":")).encode("ascii")


def decode_json(data: bytes) -> Any:
    return json.loads(data)


def pack_keys(items: list[tuple[int, float]]) -> tuple[bytes, bytes]:
    """Dedupe keys with their times as two byte strings (fixed-width keys, native doubles)."""
    keys = b"".join([k.to_bytes(_KEY_BYTES, "big") for k, _ in items])
    times = array("d", [t for _, t in items])
    if sys.byteorder == "big":  # little-endian on disk, so a data dir can move between machines
        times.byteswap()
    return keys, times.tobytes()


def unpack_keys(keys: bytes, times: bytes) -> list[tuple[int, float]]:
    at = array("d")
    at.frombytes(times)
    if sys.byteorder == "big":
        at.byteswap()
    n = _KEY_BYTES
    return [(int.from_bytes(keys[i * n : (i + 1) * n], "big"), at[i]) for i in range(len(at))]

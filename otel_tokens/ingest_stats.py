"""The pipeline's own health counters: spans received, rejected by bounded reason, duplicates dropped.

Kept apart from the usage counters (`aggregate.py`): they count what arrived, not what was spent, and
every receiver error path updates them. The reject reason becomes a label, so it is folded into a
fixed set whatever a sender does.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["REJECT_REASONS", "IngestCounts", "IngestStats", "bounded_reason"]

#: Fixed set so `otel_tokens_spans_rejected_total{reason}` stays bounded whatever a sender does.
REJECT_REASONS: frozenset[str] = frozenset(
    {
        "invalid_token_value",
        "negative_token_count",
        "token_count_too_large",
        "invalid_cost",
        "internal_error",
        "undecodable_payload",
        "payload_too_large",
        "unsupported_media_type",
        "invalid_payload",
    }
)


def bounded_reason(reason: str) -> str:
    """`reason` if it is one of `REJECT_REASONS`, else the catch-all `invalid_payload`."""
    return reason if reason in REJECT_REASONS else "invalid_payload"


@dataclass(slots=True)
class IngestCounts:
    """The counters themselves (plain data: what a snapshot copies and a store persists)."""

    spans_received: int = 0
    spans_rejected: dict[str, int] = field(default_factory=dict)
    duplicates_dropped: int = 0

    def copy(self) -> IngestCounts:
        return IngestCounts(self.spans_received, dict(self.spans_rejected), self.duplicates_dropped)


class IngestStats:
    """Thread-safe ingest counters; one lock, held for a few additions."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = IngestCounts()

    def add(
        self, spans_received: int = 0, rejected: Mapping[str, int] | None = None, duplicates: int = 0
    ) -> None:
        """Count one ingest call's figures (rejections under their bounded reason)."""
        with self._lock:
            counts = self._counts
            counts.spans_received += spans_received
            counts.duplicates_dropped += duplicates
            if rejected:
                by_reason = counts.spans_rejected
                for reason, n in rejected.items():
                    reason = bounded_reason(reason)
                    by_reason[reason] = by_reason.get(reason, 0) + n

    def snapshot(self) -> IngestCounts:
        with self._lock:
            return self._counts.copy()

    def restore(self, counts: IngestCounts) -> None:
        """Take back a `snapshot()` (the collector's durable store keeps it)."""
        with self._lock:
            self._counts = counts.copy()

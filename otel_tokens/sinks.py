"""Where the records our instrumentation builds go in-process: one record flows, nothing re-parsed.

`LLMCall.finish()` hands its `UsageRecord`, and an `attribute(task_id=...)` scope its
`TaskCompletion`, to `record_sinks` right after the span ended. In-process consumers subscribe here
instead of reading our spans back: `TokenMetricsSpanProcessor` (metrics without a collector) and
the coming in-process budget guard. Spans remain the wire format between processes; the collector
still builds the same records from them (`extract.py`).

A sink runs on the instrumented call's thread, after the call's span ended, so it must be quick and
never block. A failing sink never raises into the application: the error goes through the shared
`_safety` policy (logged once; re-raised under tests) and the other sinks still run. With no sink
subscribed (the common case in an exporting agent) publishing costs one attribute read.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from otel_tokens._safety import swallow_internal_errors
from otel_tokens.record import Record

__all__ = ["RecordSink", "RecordSinks", "record_sinks"]

#: Receives every record published: a `UsageRecord` (one LLM call) or a `TaskCompletion`.
RecordSink = Callable[[Record], None]


class RecordSinks:
    """A registry of record sinks. Publishing reads an immutable tuple (replaced whole under the lock
    on subscribe/unsubscribe), so the hot path takes no lock."""

    __slots__ = ("_lock", "_sinks", "active")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sinks: tuple[RecordSink, ...] = ()
        #: True when someone listens: publishers skip building what nobody reads. A plain attribute
        #: (kept equal to `bool(self._sinks)` under the lock), not a property: every instrumented
        #: call reads it, and a property is a Python call.
        self.active = False

    def subscribe(self, sink: RecordSink) -> None:
        """Receive every record published from now on (subscribing twice has no extra effect)."""
        with self._lock:
            if sink not in self._sinks:
                self._sinks = (*self._sinks, sink)
            self.active = bool(self._sinks)

    def unsubscribe(self, sink: RecordSink) -> None:
        """Stop receiving records; unknown sinks are ignored."""
        with self._lock:
            self._sinks = tuple(s for s in self._sinks if s != sink)
            self.active = bool(self._sinks)

    def publish(self, record: Record) -> None:
        """Hand `record` to every sink; a sink's error never reaches the caller."""
        for sink in self._sinks:
            try:
                sink(record)
            except Exception:
                # the shared policy logs once (or re-raises under tests); a `with` around every call
                # would cost more than most sinks
                with swallow_internal_errors("record sink"):
                    raise


#: The process's registry: our instrumentation publishes here.
record_sinks = RecordSinks()

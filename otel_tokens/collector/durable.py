"""Durable collector state: what was counted survives SIGTERM, kill -9 and restarts, exactly.

`Durability` is the pipeline's gate (see `otel_tokens.pipeline`): every change — an export's
batch, a flush of held spans, a rejected payload — is applied under one lock, at one pinned time,
and appended to the store's journal in that order; an export's call returns only after its entry
is on disk (group commit, `store.py`), so the receiver's OK follows durability. The journal holds
the changes' *inputs* (records before dedupe, with their arrival time), and the pipeline's
transitions are deterministic given the clock, so replaying it rebuilds the counters, the dedupe
memory and the budget ledger's windows exactly, original arrival times included. The guard's
decision events ride in the same batches (`llm_guard_actions_total`, `llm_tokens_saved_total`,
`guard_decisions.py`), so those counters and their memory of counted spans are kept the same way.

A snapshot of the whole state (aggregator, ledger, dedupe memory, held spans, guard decisions) is
written every
`snapshot_seconds` and at shutdown; it replaces the journal up to its position, so a restart
reads one snapshot and replays what came after. The extractor's own self-metrics (records
clamped, enrichment failures) are counted before a change reaches the gate, so they are kept by
the snapshots only: a `kill -9` can lose their last few seconds, never a token.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from otel_tokens.collector.codec import (
    COMPLETION,
    RECORD,
    VERDICT,
    Decoders,
    decode_json,
    encode_json,
    pack_keys,
    schema,
    unpack_keys,
)
from otel_tokens.collector.store import Store, StoreError
from otel_tokens.dedupe import DeduperState
from otel_tokens.guard_decisions import SpanDecisions
from otel_tokens.pipeline import Batch, IngestResult, Pipeline, PipelineState

if TYPE_CHECKING:
    from otel_tokens.budgets.ledger import BudgetLedger

__all__ = ["DEFAULT_SNAPSHOT_SECONDS", "Durability", "PinnedClock"]

logger = logging.getLogger("otel_tokens.collector")

DEFAULT_SNAPSHOT_SECONDS = 30.0
#: ...or sooner, once this many records were journaled since the last one: bounds replay at start-up.
SNAPSHOT_AFTER_RECORDS = 200_000
_SCHEMA_KEY = "codec_schema"


class PinnedClock:
    """The clock the pipeline and the ledger share: wall time, except inside `pinned(t)`, where this
    thread reads `t` — so one change is applied at one instant, and replayed at the same one."""

    def __init__(self, base: Callable[[], float] = time.time) -> None:
        self.base = base
        self._local = threading.local()

    def __call__(self) -> float:
        at: float | None = getattr(self._local, "at", None)
        return self.base() if at is None else at

    @contextmanager
    def pinned(self, at: float) -> Iterator[float]:
        self._local.at = at
        try:
            yield at
        finally:
            self._local.at = None


class Durability:
    """The journaling gate, the snapshots and the restore of one pipeline (and its ledger)."""

    def __init__(
        self,
        store: Store,
        pipeline: Pipeline,
        ledger: BudgetLedger | None = None,
        *,
        snapshot_seconds: float = DEFAULT_SNAPSHOT_SECONDS,
    ) -> None:
        clock = pipeline.clock
        if not isinstance(clock, PinnedClock):
            raise ValueError("a durable pipeline needs Pipeline(clock=PinnedClock()), shared with its ledger")
        self._clock = clock
        self._store = store
        self._pipeline = pipeline
        self._ledger = ledger
        self._snapshot_seconds = snapshot_seconds
        self._lock = threading.Lock()  # one order of changes: the journal's
        self._snapshot_lock = threading.Lock()
        self._changes_since_snapshot = 0
        self._records_since_snapshot = 0
        self._stop = threading.Event()
        self._snapshotter: threading.Thread | None = None
        self._closed = False
        #: idle series leave as journaled flush changes, not at scrape time (replayable)
        pipeline.aggregator.expire_on_snapshot = False

    @property
    def store(self) -> Store:
        return self._store

    # --- lifecycle ---------------------------------------------------------------------------------
    def restore(self) -> str:
        """Load the snapshot and replay the journal into the (fresh) pipeline and ledger; returns a
        line for the start-up log. Unreadable state stops start-up (StoreError) rather than start
        from zero silently."""
        try:
            return self._restore()
        except (ValueError, KeyError, TypeError) as exc:  # JSON, missing parts, wrong shapes
            raise StoreError(
                f"data dir {self._store.path}: the kept state cannot be read ({type(exc).__name__}: {exc}); "
                "move the directory aside to start from zero"
            ) from exc

    def _restore(self) -> str:
        written = self._store.meta(_SCHEMA_KEY)
        after, notes = self._load_snapshot()
        decoders = Decoders(json.loads(written) if written else schema())
        replayed = 0
        for _, entry in self._store.journal(after):
            self._replay(decode_json(entry), decoders)
            replayed += 1
        if replayed or written != json.dumps(schema()):
            self.snapshot()  # compact, and never leave old entries next to a new schema
            self._store.set_meta(_SCHEMA_KEY, json.dumps(schema()))
        counted = self._pipeline.aggregator.snapshot()
        requests = sum(s.requests_ok + s.requests_error for s in counted.series.values())
        return (
            f"state kept in {self._store.path}: restored {requests} counted calls "
            f"({replayed} journal entries replayed after the snapshot){notes}"
        )

    def start(self) -> Durability:
        """Journal every change from now on, and snapshot periodically."""
        self._store.start()
        self._pipeline.gate = self
        self._snapshotter = threading.Thread(
            target=self._snapshot_loop, name="otel-tokens-snapshot", daemon=True
        )
        self._snapshotter.start()
        return self

    def close(self) -> None:
        """Write a last snapshot and release the data directory. Call after the final flush. An
        export arriving later (a keep-alive connection outliving its listener) is refused with
        StoreError, so its exporter resends it to the next collector instead of being told OK."""
        if self._store.closed:
            return
        self._stop.set()
        if self._snapshotter is not None:
            self._snapshotter.join(timeout=30)
        try:
            self.snapshot()
        finally:
            with self._lock:
                self._closed = True
            self._store.close()

    # --- the gate ------------------------------------------------------------------------------------
    def batch(self, batch: Batch) -> IngestResult:
        if not (
            batch.records
            or batch.completions
            or batch.verdicts
            or batch.decisions
            or batch.rejected
            or batch.result.spans_received
        ):
            return batch.result  # nothing to count, nothing to keep
        with self._lock:
            if self._closed:
                raise StoreError(f"data dir {self._store.path}: the collector is shutting down; resend")
            now = self._clock.base()
            with self._clock.pinned(now):
                result = self._pipeline.apply_batch(batch)
            seq = self._store.append(lambda: _encode_batch(now, batch))
            self._changes_since_snapshot += 1
            self._records_since_snapshot += len(batch.records)
        # money (and what the guard saved of it) waits for the disk; tallies don't
        if batch.records or batch.completions or batch.verdicts or batch.decisions:
            self._store.wait(seq)
        return result

    def flush(self, until: float | None) -> None:
        with self._lock:
            now = self._clock.base()
            with self._clock.pinned(now):
                changed = self._pipeline.apply_flush(until)
            if changed and not self._closed:
                self._store.append(lambda: encode_json({"t": now, "f": until}))
                self._changes_since_snapshot += 1

    def rejection(self, reason: str, rejected: int, received: int) -> None:
        with self._lock:
            now = self._clock.base()
            with self._clock.pinned(now):
                self._pipeline.apply_rejection(reason, rejected, received)
            if self._closed:
                return
            self._store.append(lambda: encode_json({"t": now, "r": reason, "m": rejected, "n": received}))
            self._changes_since_snapshot += 1

    # --- snapshots -----------------------------------------------------------------------------------
    def snapshot(self) -> None:
        """Write the whole state as of the newest journal entry, dropping the journal up to it."""
        with self._snapshot_lock:
            with self._lock:  # a consistent cut: no change half-applied, none after `seq`
                seq = self._store.last_seq
                counters = self._pipeline.aggregator.state()
                budgets = self._ledger.state() if self._ledger is not None else {}
                pipeline = self._pipeline.state()
                guard = self._pipeline.guard_decisions.state()
                self._changes_since_snapshot = self._records_since_snapshot = 0
            self._store.write_snapshot(seq, _encode_snapshot(counters, budgets, pipeline, guard))

    def _snapshot_loop(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(min(1.0, self._snapshot_seconds)) and not self._store.closed:
            due = time.monotonic() - last >= self._snapshot_seconds and self._changes_since_snapshot
            if due or self._records_since_snapshot >= SNAPSHOT_AFTER_RECORDS:
                last = time.monotonic()
                try:
                    self.snapshot()
                except Exception:  # the journal still holds everything; try again next time
                    logger.exception("cannot write a snapshot to %s", self._store.path)

    # --- restore -------------------------------------------------------------------------------------
    def _load_snapshot(self) -> tuple[int, str]:
        found = self._store.snapshot()
        if found is None:
            return 0, ""
        seq, parts = found
        state = decode_json(parts["state"])
        decoders = Decoders(state["schema"])
        notes = ""
        try:
            self._pipeline.aggregator.restore(state["counters"])
        except ValueError as exc:
            logger.warning("counters start at 0: %s", exc)
            notes += "; counters restarted (dimensions or buckets changed)"
        if self._ledger is not None:
            fresh = self._ledger.restore(state["budgets"])
            if fresh:
                notes += f"; budgets starting afresh (new or changed): {', '.join(fresh)}"
        self._pipeline.restore(_decode_pipeline(state["pipeline"], parts, decoders))
        if "guard" in state:  # absent in snapshots written before guard decisions were kept
            self._pipeline.guard_decisions.restore(state["guard"])
        return seq, notes

    def _replay(self, entry: dict[str, Any], decoders: Decoders) -> None:
        with self._clock.pinned(float(entry["t"])):
            if "b" in entry:
                self._pipeline.apply_batch(_decode_batch(entry, decoders))
            elif "f" in entry:
                self._pipeline.apply_flush(None if entry["f"] is None else float(entry["f"]))
            elif "r" in entry:
                self._pipeline.apply_rejection(
                    str(entry["r"]), int(entry.get("m", 1)), int(entry.get("n", 0))
                )


# --- encoding of changes and snapshots ----------------------------------------------------------


def _encode_batch(now: float, batch: Batch) -> bytes:
    encode_record, encode_completion = RECORD.encode, COMPLETION.encode
    return encode_json(
        {
            "t": now,
            "b": [encode_record(r) for r in batch.records],
            "c": [encode_completion(c) for c in batch.completions],
            "v": [VERDICT.encode(v) for v in batch.verdicts],
            "g": batch.decisions,  # NamedTuples: JSON lists
            "n": batch.result.spans_received,
            "x": batch.rejected,
            "k": batch.by_content,
        }
    )


def _decode_batch(entry: dict[str, Any], decoders: Decoders) -> Batch:
    batch = Batch(by_content=bool(entry["k"]))
    batch.records = [decoders.record(v) for v in entry["b"]]
    batch.completions = [decoders.completion(v) for v in entry["c"]]
    batch.verdicts = [decoders.verdict(v) for v in entry.get("v", ())]  # absent before verdicts existed
    batch.decisions = [SpanDecisions.from_json(d) for d in entry.get("g", ())]  # ... before guard decisions
    batch.rejected = {str(k): int(n) for k, n in entry["x"].items()}
    batch.result.spans_received = int(entry["n"])
    return batch


def _encode_snapshot(
    counters: dict[str, Any], budgets: dict[str, Any], pipeline: PipelineState, guard: dict[str, Any]
) -> dict[str, bytes]:
    dedupe = pipeline.deduper
    counted_keys, counted_times = pack_keys(dedupe.counted)
    parent_keys, parent_times = pack_keys(dedupe.counted_parents)
    state = {
        "schema": schema(),
        "counters": counters,
        "budgets": budgets,
        "guard": guard,
        "pipeline": {
            "held": [[k, RECORD.encode(r), d, p] for k, r, d, p in dedupe.held],
            "pending": [[d, COMPLETION.encode(c)] for d, c in pipeline.pending],
            "duplicates_dropped": dedupe.duplicates_dropped,
            "evicted_early": dedupe.evicted_early,
            "extract_stats": list(pipeline.extract_stats),
        },
    }
    return {
        "state": encode_json(state),
        "counted_keys": counted_keys,
        "counted_times": counted_times,
        "parent_keys": parent_keys,
        "parent_times": parent_times,
    }


def _decode_pipeline(state: dict[str, Any], parts: dict[str, bytes], decoders: Decoders) -> PipelineState:
    dedupe = DeduperState(
        counted=unpack_keys(parts["counted_keys"], parts["counted_times"]),
        counted_parents=unpack_keys(parts["parent_keys"], parts["parent_times"]),
        held=[(int(k), decoders.record(r), float(d), p) for k, r, d, p in state["held"]],
        duplicates_dropped=int(state["duplicates_dropped"]),
        evicted_early=int(state["evicted_early"]),
    )
    pending = [(float(d), decoders.completion(c)) for d, c in state["pending"]]
    clamped, failed = state.get("extract_stats", ({}, {}))
    return PipelineState(dedupe, pending, (clamped, failed))

"""Attribution from an ancestor span: the agent an enclosing `invoke_agent` span names.

Agent frameworks name the agent on the span around an agent's run (`invoke_agent`, with
`gen_ai.agent.name`, GenAI semconv) rather than on each LLM call's span. A usage record that names no
agent of its own (none, or only the resource's fallback) takes the agent of its nearest ancestor that
is an `invoke_agent` span, and the workflow of the nearest `invoke_agent` / `invoke_workflow` span up
to that one naming a workflow, found by walking parent links (`Links`: span → parent). A record that
already has its own agent ends the walk for its descendants: its attribution is theirs.

Ancestors end after their descendants, so they arrive in the same export batch or a later one. A
foreign record with a parent is held by the deduper anyway (its hold window, waiting for other spans
of the same call); while it is held, later batches of its trace continue its walk, and the held
record is amended when the walk finds the agent. So the wait for an ancestor is the dedupe hold
window, no longer: when it is over the record is counted with the resource's agent (or none). Our
own records are never held: they are resolved against their own batch (the instrumentation already
took the agent from the current span in-process). At most `max_walks` walks are tracked.

Pure and clock-free: the pipeline passes `now`, scans batches for links (`extract.scan_*`) only of
traces that need them, and locks around every call.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from itertools import compress, repeat
from operator import rshift

from otel_tokens.record import Attribution, UsageRecord

__all__ = ["AncestorResolver", "FreshWalks", "Links", "Scope", "Scopes", "Walk", "span_key"]


@dataclass(frozen=True, slots=True)
class Scope:
    """What a span tells its descendants: an agent and/or workflow; `final` ends the walk there."""

    agent: str | None
    workflow: str | None
    final: bool = False


#: span key → parent key (0: a root span)
Links = dict[int, int]
#: span key → the scope that span opens
Scopes = dict[int, Scope]


def span_key(trace_id: int, span_id: int) -> int:
    """One int per (trace, span), as the deduper keys spans."""
    return (trace_id << 64) | span_id


class Walk:
    """One record's walk up its ancestors: where it has got to and what it found on the way."""

    __slots__ = ("agent", "deadline", "frontier", "record", "workflow")

    def __init__(self, record: UsageRecord, deadline: float, frontier: int | None = None) -> None:
        self.record = record
        self.deadline = deadline
        #: where the walk has got to: first the record's parent (`frontier`, when the caller has it)
        self.frontier = (
            span_key(record.trace_id, record.parent_span_id or 0) if frontier is None else frontier
        )
        self.agent: str | None = None
        self.workflow: str | None = None

    def advance(self, links: Links, scopes: Scopes) -> bool:
        """Walk as far as these spans allow; True when done (an agent found, the root passed, or a
        cycle: a sender's span naming itself, or a descendant, as its parent must not hang ingest)."""
        for _ in range(len(links) + 2):  # a chain visits each link once, then one span not among them
            scope = scopes.get(self.frontier)
            if scope is not None:
                if self.workflow is None:
                    self.workflow = scope.workflow
                if scope.agent is not None or scope.final:
                    self.agent = scope.agent
                    return True
            parent = links.get(self.frontier)
            if parent is None:
                return False  # an ancestor not seen yet
            if parent & _SPAN_MASK == 0:
                return True  # the root: no ancestor names an agent
            self.frontier = parent
        return True  # the parent links loop: no ancestor beyond what was found

    def attribution(self) -> Attribution | None:
        """The record's attribution with what the walk found; None when it found nothing new."""
        who = self.record.attribution
        found: dict[str, str] = {}
        if self.agent is not None:
            found["agent"] = self.agent
        if self.workflow is not None and who.workflow is None:
            found["workflow"] = self.workflow
        return dataclasses.replace(who, **found) if found else None

    def resolved(self) -> UsageRecord:
        """The record with what the walk found (the same object when it found nothing)."""
        attribution = self.attribution()
        if attribution is None:
            return self.record
        return dataclasses.replace(self.record, attribution=attribution, agent_from_resource=False)


_SPAN_MASK = (1 << 64) - 1


class FreshWalks:
    """Walks stopped at their first step (each record's parent not among the spans seen so far),
    as parallel lists instead of a `Walk` apiece: most walks never take a second step (their
    record is counted when its hold is over), so each becomes a `Walk` only when spans of its
    trace arrive (`AncestorResolver.advance`) or someone asks for `walks()`."""

    __slots__ = ("deadline", "frontiers", "keys", "records", "traces")

    def __init__(
        self, records: list[UsageRecord], frontiers: list[int], deadline: float, keys: list[int] | None = None
    ) -> None:
        self.records = records
        self.frontiers = frontiers  # each record's parent key
        self.deadline = deadline
        #: each record's own key (`span_key`), when the caller has them (the deduper's keys)
        self.keys = keys
        self.traces: set[int] = set()  # filled when tracked

    def __len__(self) -> int:
        return len(self.records)

    def walks(self) -> list[Walk]:
        """The same walks as `Walk` objects (record, deadline, frontier; nothing found yet)."""
        return list(map(Walk, self.records, repeat(self.deadline), self.frontiers))

    def only(self, keep: list[bool]) -> FreshWalks:
        """These walks where `keep` is True (as many flags as walks)."""
        return FreshWalks(
            list(compress(self.records, keep)),
            list(compress(self.frontiers, keep)),
            self.deadline,
            None if self.keys is None else list(compress(self.keys, keep)),
        )


class AncestorResolver:
    """Walks of records whose ancestors have not all arrived, by trace; bounded; not locked.

    Records are resolved where they arrive (`start`); a walk that cannot finish there is tracked
    (`track`) only while the deduper holds its record, so a record never waits for an ancestor
    longer than it waits for its duplicates: `advance` finishes walks with later batches' spans and
    the pipeline amends the held record; `expire` forgets walks whose hold is over. Walks that
    never took a step are kept as tracked (`track_fresh`), in bulk, until a span may move them.
    """

    def __init__(self, *, max_walks: int) -> None:
        self.max_walks = max_walks
        self._by_trace: dict[int, list[Walk]] = {}
        #: tracked after every walk in `_by_trace`, oldest first: not yet indexed by trace
        self._fresh: list[FreshWalks] = []
        self._count = 0

    @property
    def waiting(self) -> int:
        return self._count

    @property
    def traces(self) -> set[int]:
        """Trace ids with walks in progress: a batch's spans of these continue them."""
        return set(self._by_trace).union(*(group.traces for group in self._fresh))

    def walks(self) -> list[Walk]:
        """Every walk in progress (for tests and diagnostics; fresh ones built anew on each call)."""
        indexed = [walk for walks in self._by_trace.values() for walk in walks]
        return indexed + [walk for group in self._fresh for walk in group.walks()]

    @staticmethod
    def needs(record: UsageRecord) -> bool:
        """A record without an agent of its own, under some parent span."""
        return bool(record.parent_span_id) and (
            record.attribution.agent is None or record.agent_from_resource
        )

    @staticmethod
    def start(
        records: list[UsageRecord], links: Links, scopes: Scopes, deadline: float
    ) -> tuple[list[UsageRecord], list[Walk]]:
        """Each record resolved as far as this batch allows, and the walks still unfinished (whose
        record is in the list unchanged, the very object, so it can be amended later)."""
        out: list[UsageRecord] = []
        unfinished: list[Walk] = []
        for record in records:
            # `needs`, inline (per record)
            if not record.parent_span_id or (
                record.attribution.agent is not None and not record.agent_from_resource
            ):
                out.append(record)
                continue
            walk = Walk(record, deadline)
            if walk.advance(links, scopes):
                out.append(walk.resolved())
            else:
                out.append(record)
                unfinished.append(walk)
        return out, unfinished

    @staticmethod
    def start_fresh(
        needing: list[UsageRecord], frontiers: list[int], links: Links, scopes: Scopes, deadline: float
    ) -> FreshWalks | None:
        """`start`, in bulk, for the records that `needs` (`needing`, with their parent keys): when
        no parent is among these spans (the common case: a parent ends, and is exported, after its
        children) every walk stops at its first step, all unfinished, no record changed. None when
        some walk would go further (then `start` walks record by record)."""
        if links.keys().isdisjoint(frontiers) and scopes.keys().isdisjoint(frontiers):
            return FreshWalks(needing, frontiers, deadline)
        return None

    def track(self, walk: Walk) -> None:
        """Continue this walk with later batches (dropped when full: the record keeps what it has)."""
        self.track_many([walk])

    def track_many(self, walks: list[Walk]) -> None:
        """`track` of each walk in order (a batch's held records, often every one of its records)."""
        room = self.max_walks - self._count
        if room <= 0:
            return
        self._index_fresh()  # they were tracked first: keep the order
        walks = walks[:room]
        self._index(walks)
        self._count += len(walks)

    def track_fresh(self, fresh: FreshWalks) -> None:
        """`track_many(fresh.walks())`, without building the walks until a span may move them."""
        room = self.max_walks - self._count
        if room <= 0 or not fresh.records:
            return
        if len(fresh) > room:
            fresh = fresh.only([True] * room + [False] * (len(fresh) - room))
        fresh.traces = {r.trace_id for r in fresh.records}
        self._fresh.append(fresh)
        self._count += len(fresh)

    def _index(self, walks: list[Walk]) -> None:
        by_trace = self._by_trace
        for walk in walks:
            trace_id = walk.record.trace_id
            trace_walks = by_trace.get(trace_id)
            if trace_walks is None:
                by_trace[trace_id] = [walk]
            else:
                trace_walks.append(walk)

    def _index_fresh(self) -> None:
        """The fresh walks as `Walk` objects indexed by trace, in the order they were tracked."""
        for group in self._fresh:
            self._index(group.walks())
        self._fresh.clear()

    def advance(self, links: Links, scopes: Scopes) -> list[Walk]:
        """The tracked walks these spans finish (forgotten here)."""
        touched = set(map(rshift, links, repeat(64)))  # the trace of each span
        if self._fresh and any(
            not group.traces.isdisjoint(touched)
            and not (links.keys().isdisjoint(group.frontiers) and scopes.keys().isdisjoint(group.frontiers))
            for group in self._fresh
        ):  # a span of theirs may move some: walk them one by one from now on
            self._index_fresh()
        done: list[Walk] = []
        for trace_id in touched.intersection(self._by_trace):
            walks = self._by_trace[trace_id]
            finished = [w for w in walks if w.advance(links, scopes)]
            if finished:
                done += finished
                rest = [w for w in walks if w not in finished]
                self._count -= len(finished)
                if rest:
                    self._by_trace[trace_id] = rest
                else:
                    del self._by_trace[trace_id]
        return done

    def expire(self, now: float) -> None:
        """Forget walks whose record's hold is over (the deduper has released it)."""
        if now == float("inf"):  # every hold is over (shutdown, or a flush past every window)
            self._by_trace.clear()
            self._fresh.clear()
            self._count = 0
            return
        if self._fresh:
            kept = [group for group in self._fresh if group.deadline > now]
            self._count -= sum(len(group) for group in self._fresh) - sum(len(group) for group in kept)
            self._fresh = kept
        for trace_id in [t for t, ws in self._by_trace.items() if any(w.deadline <= now for w in ws)]:
            rest = [w for w in self._by_trace[trace_id] if w.deadline > now]
            self._count -= len(self._by_trace[trace_id]) - len(rest)
            if rest:
                self._by_trace[trace_id] = rest
            else:
                del self._by_trace[trace_id]

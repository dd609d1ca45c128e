"""What every otel-tokens benchmark shares: quick mode, interleaved rounds, medians, the results file.

Benchmarks compare peers side by side in one process run and report ratios (CONVENTIONS.md): each
round runs every variant once, in a rotated order, so drift (CPU frequency, caches, a noisy
neighbour) lands on all variants alike; the first round calibrates and warms up and is discarded.

`run_all.py` sets `RESULTS_ENV` to a file; `record()` appends one JSON line per headline number
there, which is how it builds its summary table. Run by hand, nothing is written.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

#: "1": tiny iteration counts (the smoke test), a few seconds per benchmark; numbers meaningless.
QUICK_ENV = "OTEL_TOKENS_BENCH_QUICK"
#: Path of a JSON-lines file the headline numbers are appended to (set by run_all.py).
RESULTS_ENV = "OTEL_TOKENS_BENCH_RESULTS"

QUICK = os.environ.get(QUICK_ENV, "") not in ("", "0")


def rounds(full: int, quick: int = 2) -> int:
    return quick if QUICK else full


@dataclass
class Block:
    """One timed variant: `run(n)` does n operations, `check(n)` verifies afterwards that they did
    what the variant claims (spans emitted, records counted) and raises if not."""

    name: str
    run: Callable[[int], None]
    setup: Callable[[], None] = lambda: None
    teardown: Callable[[], None] = lambda: None
    check: Callable[[int], None] = lambda n: None


@dataclass
class Samples:
    """Seconds per operation of each variant, one sample per measured round."""

    per_op: dict[str, list[float]] = field(default_factory=dict)
    ops_per_block: int = 0

    def median(self, name: str) -> float:
        return statistics.median(self.per_op[name])

    def paired(self, name: str, base: str) -> list[float]:
        """Per-round differences against `base`: drift between rounds cancels out."""
        return [a - b for a, b in zip(self.per_op[name], self.per_op[base], strict=True)]


#: What a benchmark may time with: wall time, or this process's CPU time (all its threads). On a
#: machine shared with other work, CPU time is what a noisy neighbour disturbs least; a benchmark
#: whose variants all run in this process (client and server threads alike) should use it.
WALL, CPU = time.perf_counter, time.process_time


def _timed(block: Block, n: int, clock: Callable[[], float] = WALL) -> float:
    block.setup()
    try:
        gc.collect()
        start = clock()
        block.run(n)
        elapsed = clock() - start
        block.check(n)
    finally:
        block.teardown()
    return elapsed


def interleave(
    blocks: Sequence[Block],
    n_rounds: int,
    target_s: float,
    min_ops: int = 1,
    clock: Callable[[], float] = WALL,
) -> Samples:
    """Run every block once per round in rotated order. Two unmeasured rounds come first: a warm-up
    (imports, first patches, connection set-up) and a calibration that sizes the blocks so the
    slowest takes about `target_s`; all blocks then run the same number of operations. `clock`:
    `WALL` or `CPU` (see there)."""
    for b in blocks:
        _timed(b, min_ops, clock)
    ops = min_ops
    if not QUICK:
        slowest = max(_timed(b, min_ops, clock) / min_ops for b in blocks)
        ops = max(min_ops, round(target_s / max(slowest, 1e-9)))
    samples = Samples(per_op={b.name: [] for b in blocks}, ops_per_block=ops)
    for r in range(n_rounds):
        shift = r % len(blocks)
        for block in [*blocks[shift:], *blocks[:shift]]:
            samples.per_op[block.name].append(_timed(block, ops, clock) / ops)
    return samples


def spread(values: Sequence[float], scale: float = 1.0, digits: int = 1) -> str:
    """min..max of the rounds, so a reader sees how much to trust the median."""
    return f"{min(values) * scale:.{digits}f}..{max(values) * scale:.{digits}f}"


def record(bench: str, metric: str, value: float | None, unit: str, note: str = "") -> None:
    """Append one headline number to the results file run_all.py reads (if it asked for one)."""
    path = os.environ.get(RESULTS_ENV)
    if not path:
        return
    row = {"bench": bench, "metric": metric, "value": value, "unit": unit, "note": note}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")

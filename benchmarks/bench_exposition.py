"""/metrics rendering: our page of 10k `llm_tokens_total` series against prometheus_client's plain page.

Our page for 2,000 label sets carries, besides the 10k token series, the cost, request and
input-histogram series of each label set (about 3.7 MB in all). The reference is
`prometheus_client.generate_latest` of a registry holding 10k plain counter series with the same
label names (about 2.3 MB). Measured, interleaved round by round, in CPU time (ms per page):
- `generate_latest`, 10k plain counter series — the reference;
- our page through prometheus_client's own `generate_latest` (every sample rendered every scrape);
- our page through our encoder (`otel_tokens.exposition_text`), nothing changed since the last
  scrape; with 10% of the label sets updated between scrapes; and cold (a new collector: every
  series rendered).
Each block checks the page it produced is the full page.

Run: `.venv/bin/python benchmarks/bench_exposition.py`.
"""

from __future__ import annotations

import functools
import sys

from prometheus_client import CollectorRegistry, Counter, generate_latest

from otel_tokens.aggregate import Aggregator, MetricsConfig
from otel_tokens.exposition import TokenMetricsCollector
from otel_tokens.exposition_text import generate_latest as fast_latest
from otel_tokens.metric_names import DEFAULT_DIMENSIONS, TOKEN_TYPE
from otel_tokens.record import Attribution, TokenCounts, UsageRecord

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _harness import CPU, QUICK, Block, Samples, interleave, record, rounds, spread

BENCH = "exposition"
LABEL_SETS = 2000
PLAIN, THEIRS, UNCHANGED, CHANGED, COLD = (
    "prometheus_client, 10k plain counter series",
    "our page, prometheus_client generate_latest",
    "our page, fast, unchanged",
    "our page, fast, 10% of series changed",
    "our page, fast, cold",
)


def usage_records(n: int) -> list[UsageRecord]:
    return [
        UsageRecord(
            "openai",
            f"model-{i % 7}",
            tokens=TokenCounts(1000 + i, 100 + i, 200, 50, 10),
            cost_usd=0.01 * (1 + i % 5),
            attribution=Attribution(agent=f"agent-{i % 40}", task=f"task-{i // 40}"),
            status="error" if i % 17 == 0 else "ok",
        )
        for i in range(n)
    ]


def plain_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    counter = Counter(
        "plain_tokens", "Plain counter series.", [*DEFAULT_DIMENSIONS, TOKEN_TYPE], registry=registry
    )
    for i in range(LABEL_SETS * 5):
        counter.labels(f"agent-{i % 40}", f"task-{i // 200}", f"model-{i % 7}", "openai", str(i % 5)).inc(i)
    return registry


def page(render: functools.partial[bytes], expect: int, n: int) -> None:
    for _ in range(n):
        n_lines = render().count(b"\n")
        if n_lines < expect:
            raise AssertionError(f"a page of {n_lines} lines, expected at least {expect}")


def changed_page(
    aggregator: Aggregator, registry: CollectorRegistry, updates: list[UsageRecord], n: int
) -> None:
    for _ in range(n):
        aggregator.add_many(updates)
        fast_latest(registry)


def cold_page(aggregator: Aggregator, n: int) -> None:
    for _ in range(n):
        registry = CollectorRegistry()
        registry.register(TokenMetricsCollector(aggregator))
        fast_latest(registry)


def report(names: list[str], s: Samples, n_rounds: int, sizes: dict[str, int]) -> None:
    print(f"/metrics pages: {n_rounds} rounds x {s.ops_per_block} pages; CPU ms a page, median (min..max)")
    for name in names:
        ms = s.median(name) * 1e3
        line = f"  {name:<46}{ms:>8.1f} ms  ({spread(s.per_op[name], 1e3)})"
        if name in sizes:
            line += f"  {sizes[name] / 1e6:.2f} MB"
        if name != PLAIN:
            ratio = sorted(t / p for p, t in zip(s.per_op[PLAIN], s.per_op[name], strict=True))
            mid = ratio[len(ratio) // 2]
            line += f"  x{mid:.3f} of the plain page (rounds x{ratio[0]:.3f}..x{ratio[-1]:.3f})"
            record(BENCH, name, mid, "x", f"of {PLAIN}; {ms:.1f} ms a page")
        else:
            record(BENCH, name, ms, "ms", "the reference page")
        print(line)


def main() -> None:
    aggregator = Aggregator(MetricsConfig())
    records = usage_records(LABEL_SETS)
    aggregator.add_many(records)
    ours = CollectorRegistry()
    ours.register(TokenMetricsCollector(aggregator))
    plain = plain_registry()
    lines = LABEL_SETS * 5
    blocks = [
        Block(PLAIN, functools.partial(page, functools.partial(generate_latest, plain), lines)),
        Block(THEIRS, functools.partial(page, functools.partial(generate_latest, ours), lines)),
        Block(UNCHANGED, functools.partial(page, functools.partial(fast_latest, ours), lines)),
        Block(CHANGED, functools.partial(changed_page, aggregator, ours, records[::10])),
        Block(COLD, functools.partial(cold_page, aggregator)),
    ]
    if fast_latest(ours) != generate_latest(ours):
        raise AssertionError("the fast page differs from prometheus_client's rendering of the same registry")
    sizes = {PLAIN: len(generate_latest(plain)), THEIRS: len(generate_latest(ours))}
    n_rounds = rounds(full=7)
    samples = interleave(blocks, n_rounds, target_s=0.05 if QUICK else 0.5, clock=CPU)
    report([b.name for b in blocks], samples, n_rounds, sizes)
    ratio = samples.median(UNCHANGED) / samples.median(PLAIN)
    cold = samples.median(COLD) / samples.median(PLAIN)
    print(f"/metrics with {LABEL_SETS * 5:,} llm_tokens_total series: x{ratio:.3f} of the plain page "
          f"(unchanged), x{cold:.3f} (cold)")  # fmt: skip


if __name__ == "__main__":
    main()

"""Per-call time of `PriceBook.cost_usd` against `genai_prices.calc_price`, measured in one run.

Run: `.venv/bin/python benchmarks/bench_pricing.py`. A plain script, not a test: timings vary by
machine, the ratio is what matters (the collector prices every span on its hot path).
"""

from __future__ import annotations

import functools
import timeit
from collections.abc import Callable
from typing import Any

from genai_prices import Usage, calc_price

from otel_tokens.pricing import PriceBook
from otel_tokens.record import TokenCounts

CASES = [
    ("openai", "openai", "gpt-4o", TokenCounts(input=12_000, output=800, cache_read=3000)),
    ("anthropic", "anthropic", "claude-sonnet-4-5", TokenCounts(input=250_000, output=900, cache_write=4000)),
    ("openai", "openai", "o3", TokenCounts(input=2000, output=5000, reasoning=4000)),  # conditional price
]
NUMBER = 20_000


def per_call_us(func: Callable[[], Any], number: int) -> float:
    best = min(timeit.repeat(func, number=number, repeat=5))
    return best / number * 1e6


def main() -> None:
    book = PriceBook()
    print(f"{'model':<22}{'cost_usd µs':>13}{'calc_price µs':>15}{'speed-up':>10}")
    for provider, provider_id, model, tokens in CASES:
        usage = Usage(
            input_tokens=tokens.input,
            output_tokens=tokens.output,
            cache_read_tokens=tokens.cache_read,
            cache_write_tokens=tokens.cache_write,
        )
        assert book.cost_usd(provider, model, tokens) is not None  # warm the cache
        ours = per_call_us(functools.partial(book.cost_usd, provider, model, tokens), NUMBER)
        theirs = per_call_us(
            functools.partial(calc_price, usage, model, provider_id=provider_id), NUMBER // 20
        )
        print(f"{model:<22}{ours:>13.2f}{theirs:>15.1f}{theirs / ours:>9.0f}x")


if __name__ == "__main__":
    main()

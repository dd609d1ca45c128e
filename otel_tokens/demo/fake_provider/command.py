"""`otel-tokens fake-provider`: the keyless provider the demo and the tests use, on a port of one's
choosing, to point one's own agent at.

It is the same `FakeProvider` (same wire formats, replies and usage) the tests drive, with a bounded
history so it can run for days. It prints the `base_url` each SDK needs, then serves until Ctrl-C
(or SIGTERM).
"""

from __future__ import annotations

import errno
import signal
import sys
import threading
from types import FrameType

from otel_tokens.demo.fake_provider.server import FakeProvider

#: Calls remembered while serving (the tests' ledger, bounded for a long-running process).
HISTORY = 1000


def serve(host: str, port: int) -> int:
    """Serve until SIGINT/SIGTERM; exit 1 with one clear line when the port cannot be had."""
    try:
        fake = FakeProvider(host, port, max_history=HISTORY)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            print(
                f"otel-tokens fake-provider: port {port} on {host} is already in use; "
                "pick another with --port N",
                file=sys.stderr,
            )
        else:
            print(f"otel-tokens fake-provider: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with fake:
            print(banner(fake), flush=True)
            while not stop.wait(1.0):  # a timed wait keeps signal delivery prompt
                pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print(f"otel-tokens fake-provider: stopped after {len(fake.requests)} recent requests", flush=True)
    return 0


def banner(fake: FakeProvider) -> str:
    """Where to point each SDK (any API key works; the SDKs just insist on having one)."""
    openai, anthropic = fake.openai_base_url, fake.anthropic_base_url
    return "\n".join(
        [
            f"otel-tokens fake-provider: keyless OpenAI and Anthropic APIs on {fake.url}",
            f"  OpenAI:    base_url={openai}   (OPENAI_BASE_URL={openai})",
            f"  Anthropic: base_url={anthropic}   (ANTHROPIC_BASE_URL={anthropic})",
            "  Any API key works (OPENAI_API_KEY=any, ANTHROPIC_API_KEY=any). Ctrl-C stops it.",
        ]
    )

"""Start-up: what turning the instrumentation on costs an application that imported only `openai`.

Issue 8's start-up row: `otel_tokens.instrument()` used to add ~1.1 s wall and ~38 MB RSS to such an
app (it imported the anthropic SDK the app never uses); the goal is <= 0.1 s, by patching an SDK
only when the application imports it. Each sample is a fresh interpreter (imports are cached per
process, so nothing else measures start-up), and the variants run interleaved, round by round:

- `import openai` alone: the application's own start-up, the reference;
- otel-tokens: then `import otel_tokens; otel_tokens.instrument(tracer_provider=tp)`;
- official openai-v2: then `OpenAIInstrumentor().instrument(tracer_provider=tp)`, where it is
  importable (`.venv-compat`; see benchmarks/README.md).

A TracerProvider is made before the timed part in every variant, so both instrumentations are timed
on the same footing (the app's own OpenTelemetry set-up is not theirs). Measured inside the child:
wall time, CPU time (`time.process_time`, which a loaded machine disturbs less) and resident memory
added (from /proc/self/statm) by the timed part; each child also checks that `anthropic` was not
imported, so a cheap figure cannot come from a patch that silently did nothing — and that the
instrumentation did patch `openai` (a call's span is made against a mock transport).

Run: `python benchmarks/bench_startup.py` (`make bench` runs it under both venvs).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import QUICK, record, rounds

BENCH = "bench_startup.py"
ROOT = Path(__file__).resolve().parent.parent
APP, OURS, OFFICIAL = "import openai (the app)", "otel-tokens instrument()", "official openai-v2 instrument()"
GOAL_S = 0.1

CHILD = r"""
import json, os, sys, time
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
variant = sys.argv[1]
w0, c0, r0 = time.perf_counter(), time.process_time(), rss()
import openai
w1, c1, r1 = time.perf_counter(), time.process_time(), rss()
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
exporter = InMemorySpanExporter()
tp = TracerProvider()
tp.add_span_processor(SimpleSpanProcessor(exporter))
w2, c2, r2 = time.perf_counter(), time.process_time(), rss()
if variant == "ours":
    import otel_tokens
    otel_tokens.instrument(tracer_provider=tp)
elif variant == "official":
    try:
        from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
    except Exception as exc:
        print(json.dumps({"skipped": repr(exc)}))
        raise SystemExit(0)
    OpenAIInstrumentor().instrument(tracer_provider=tp)
w3, c3, r3 = time.perf_counter(), time.process_time(), rss()
anthropic_imported = "anthropic" in sys.modules
spans = 0
if variant != "app":  # did the patch take? one call over a mock transport must make one span
    body = {"id": "c", "object": "chat.completion", "created": 0, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
    import importlib
    top = next(c.__module__.split(".")[0] for c in openai.DefaultHttpxClient.__mro__
               if c.__module__.startswith("httpx"))  # httpx or httpx2: what this SDK is built on
    lib = importlib.import_module(top)
    transport = lib.MockTransport(lambda request: lib.Response(200, json=body))
    http_client = lib.Client(transport=transport)
    client = openai.OpenAI(api_key="k", base_url="http://fake/v1", http_client=http_client)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    spans = len(exporter.get_finished_spans())
print(json.dumps({"app_wall": w1 - w0, "app_cpu": c1 - c0, "app_rss": r1 - r0,
                  "wall": w3 - w2, "cpu": c3 - c2, "rss": r3 - r2,
                  "anthropic_imported": anthropic_imported, "spans": spans}))
"""


def sample(variant: str) -> dict[str, float] | None:
    env = dict(os.environ)
    env.pop("OTEL_TOKENS_BUDGETS_FILE", None)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, variant], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{variant}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1])
    if "skipped" in result:
        return None
    if result["anthropic_imported"]:
        raise RuntimeError(f"{variant}: imported the anthropic SDK, which the app never imports")
    if variant != "app" and result["spans"] != 1:
        raise RuntimeError(f"{variant}: {result['spans']} spans for one call; the patch did not take")
    return result


def _ms(seconds: list[float]) -> str:
    """Median and spread in milliseconds."""
    median, low, high = statistics.median(seconds) * 1e3, min(seconds) * 1e3, max(seconds) * 1e3
    return f"{median:.0f} ms ({low:.0f}..{high:.0f})"


def main() -> int:
    variants = {"app": APP, "ours": OURS, "official": OFFICIAL}
    samples: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    n = rounds(7, quick=1)
    order = list(variants)
    for r in range(n):
        for variant in order[r % 3 :] + order[: r % 3]:  # rotated: drift lands on every variant alike
            if variant == "official" and r and not samples["official"]:
                continue  # not importable here: found out in round one
            got = sample(variant)
            if got is not None:
                samples[variant].append(got)
    print(f"python {sys.version.split()[0]}, {n} rounds of fresh interpreters, median (min..max)")
    app = samples["app"]
    app_wall = statistics.median(s["app_wall"] for s in app)
    app_rss = statistics.median(s["app_rss"] for s in app)
    print(f"  {APP:<34} {app_wall * 1e3:8.0f} ms wall, {app_rss / 2**20:6.1f} MB RSS (the reference)")
    record(BENCH, "import openai (the app)", app_wall * 1e3, "ms", "wall, the reference")
    for variant in ("ours", "official"):
        got = samples[variant]
        name = variants[variant]
        if not got:
            print(f"  {name:<34} n/a (not importable with this SDK version)")
            record(BENCH, f"{name}: wall", None, "ms", "added to the app's start-up")
            continue
        wall = [s["wall"] for s in got]
        cpu = [s["cpu"] for s in got]
        rss = [s["rss"] / 2**20 for s in got]
        print(f"  {name:<34} +{_ms(wall)} wall, +{_ms(cpu)} CPU, +{statistics.median(rss):.1f} MB RSS")
        record(BENCH, f"{name}: wall", statistics.median(wall) * 1e3, "ms", "added to the app's start-up")
        record(BENCH, f"{name}: CPU", statistics.median(cpu) * 1e3, "ms", "added to the app's start-up")
        record(BENCH, f"{name}: RSS", statistics.median(rss), "MB", "added to the app's start-up")
    if samples["ours"]:
        cpu = statistics.median(s["cpu"] for s in samples["ours"])
        goal = "met" if cpu <= GOAL_S else "not met"
        line = (
            "otel_tokens.instrument() in an app that imported only openai: "
            f"+{cpu * 1e3:.0f} ms CPU (goal <= {GOAL_S * 1e3:.0f} ms: {goal})"
        )
        if samples["official"]:
            official = statistics.median(s["cpu"] for s in samples["official"])
            line += (
                f"; official openai-v2 +{official * 1e3:.0f} ms, ratio ours/official x{cpu / official:.2f}"
            )
        print(line)
    if QUICK:
        print("(quick mode: numbers meaningless)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

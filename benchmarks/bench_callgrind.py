"""Instructions added per sync LLM call by each instrumentation, counted by valgrind's callgrind.

Wall and CPU time per call on a shared 2-core machine vary by more than the differences being
measured (±100-400 µs per block on a 1-3 ms call); an instruction count does not. Each variant runs
in its own process under

    valgrind --tool=callgrind --instr-atstart=no --collect-atstart=no

and `otel_tokens_bench_measured` (benchmarks/_callgrind_measure.c, compiled here with the system C
compiler and called through ctypes) switches collection on with callgrind's client requests exactly
around a callback into Python that makes the N measured calls.
Imports, client set-up and warm-up calls run before instrumentation is switched on, so they are
neither counted nor slowed down; `PYTHONHASHSEED=0` makes dict layouts repeat. One process's count
repeats within ~0.1%, but the address layout (ASLR) and how full the allocator's pools are when
measuring starts (which moves with any unrelated change to what was allocated before) move it by
up to ~10k instructions per call, so each variant runs in `REPEATS` processes, each round on a heap
shifted by a different number of objects allocated first (`HEAP_OFFSETS`), interleaved, and the
median is reported with the spread.

Variants, per SDK (`client.chat.completions.create` for openai, `client.messages.create` for
anthropic, non-streaming, over the SDK's own HTTP client with a `MockTransport` replaying the local
fake provider's exact response bytes — no socket):
- bare SDK: no instrumentation, the baseline every other figure is added to;
- bare span (floor): a `wrapt` wrapper that starts a CLIENT span with the request attributes, makes
  it current while the SDK call runs, sets the usage attributes from the response and ends it —
  what any span-per-call instrumentation pays;
- otel-tokens: `otel_tokens.instrument()` (cost and attribution on);
- otel-tokens + guard: the same with budgets on (benchmarks/bench_instrumentation.py's three);
- otel-tokens + guard (cold): the same, but every call sends a message never sent before. The guard
  remembers the token count of each message it has seen (an agent resends its whole history on
  every call), so the repeated request above is its warm case; this is the cold one, where the
  new message is run through the tokenizer.
- official openai-v2: `opentelemetry-instrumentation-openai-v2` (only where it works: openai 2.x,
  `.venv-compat`).
Every variant's process checks that it emitted one span per call (zero for the bare SDK), so a patch
that silently failed to apply cannot pass as cheap.

Run: `python benchmarks/bench_callgrind.py` (`make bench` runs it under both venvs). To iterate on
one figure: `--variants floor,otel-tokens openai` runs only those (and the bare SDK every figure is
added to), `--repeats N` sets the processes per variant, and `--keep DIR` leaves each process's
callgrind output there for `callgrind_annotate --inclusive=yes DIR/<file>`. Needs `valgrind`
(`make system-deps`) and a C compiler; without either it says so and exits 0.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _harness import QUICK, record  # noqa: E402

BENCH = "callgrind"
HELPER_SOURCE = HERE / "_callgrind_measure.c"
MEASURED_FUNCTION = "otel_tokens_bench_measured"
BASELINE, FLOOR, OURS, GUARDED, GUARDED_COLD, OFFICIAL = (
    "bare SDK",
    "bare span (floor)",
    "otel-tokens",
    "otel-tokens + guard",
    "otel-tokens + guard (cold)",
    "official openai-v2",
)
VARIANTS: dict[str, tuple[str, ...]] = {
    "openai": (BASELINE, FLOOR, OURS, GUARDED, GUARDED_COLD, OFFICIAL),
    "anthropic": (BASELINE, FLOOR, OURS, GUARDED, GUARDED_COLD),
}
#: What the goal is measured against: at most this multiple of the floor's added instructions.
FLOOR_GOAL = 1.3
#: The guard's goal: what it adds, as a share of what otel-tokens itself adds, stays below this.
GUARD_GOAL = 0.20
MODEL = {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-latest"}
MAX_TOKENS = 64
MESSAGES: list[Any] = [
    {"role": "user", "content": "Rename the variable x to retry_count in utils/backoff.py."},
]
CHILD_TIMEOUT_S = 240
#: Uncounted calls before the measured ones. CPython 3.11 quickens a function's bytecode on its
#: 8th run and specialises its instructions over the runs after: with fewer warm-up calls the
#: measured calls paid for warming every function that runs once per call, so an instrumentation
#: made of more (small) functions looked costlier than it is at steady state.
WARM_UP_CALLS = 10
#: Objects allocated before set-up in each round's processes (round r uses entry r % len): each
#: shifts where everything after it lands in the allocator's pools. The count depends on that: a
#: size class whose pools are nearly full makes a call that briefly holds a few more objects open
#: and release pools (`allocate_from_new_pool`, `_PyObject_Free`'s slow path), and it moves with
#: any unrelated change to what was allocated before (a line added to this file moved otel-tokens'
#: figure by 8k and the floor's by 10k). One heap layout per round, the same for every variant of
#: the round, so the median is over layouts rather than one lucky or unlucky layout.
HEAP_OFFSETS = (0, 700, 3000, 9000, 1500)
#: Processes per variant, one per heap layout (`HEAP_OFFSETS`). One process's count repeats within
#: ~0.1%, but where the address space lands (ASLR) and how full the allocator's pools are when
#: measuring starts move it: the interpreter's type-attribute cache and the dicts and sets of
#: objects hashed by address collide differently, and pools open and close, ±3-10k instructions per
#: call. The median of the processes, interleaved variant by variant, is reported, with the spread.
REPEATS = len(HEAP_OFFSETS)


# --- the child: one variant, measured calls inside the C helper -------------------------------------


@dataclass
class Setup:
    """A variant ready to call: `call()` makes one SDK call; `spans()` counts spans emitted so far."""

    call: Callable[[], Any]
    spans: Callable[[], int]
    spans_per_call: int


def child(sdk: str, variant: str, calls: int, warm: int, helper: str, layout: int = 0) -> int:
    _HEAP_OFFSET[:] = _heap_offset(layout)  # held until the process exits
    setup = prepare(sdk, variant)
    if setup is None:
        print(json.dumps({"skipped": f"{variant} not usable with this {sdk} SDK"}))
        return 0
    for _ in range(warm):
        setup.call()
    lib = ctypes.CDLL(helper)
    failure: list[BaseException] = []

    def measured() -> int:
        try:
            for _ in range(calls):
                setup.call()
        except BaseException as exc:  # ctypes would print and swallow it
            failure.append(exc)
        return 0

    callback = ctypes.CFUNCTYPE(ctypes.c_int)(measured)
    import gc

    # The collector runs when allocation counts cross its thresholds, so where its passes fall
    # depends on everything allocated before: off while measuring, the count repeats exactly.
    gc.collect()
    gc.disable()
    getattr(lib, MEASURED_FUNCTION)(callback)
    gc.enable()
    if failure:
        raise failure[0]
    expected = (warm + calls) * setup.spans_per_call
    if setup.spans() != expected:
        raise AssertionError(f"{sdk} {variant}: {setup.spans()} spans, expected {expected}")
    print(json.dumps({"spans": setup.spans()}))
    return 0


_HEAP_OFFSET: list[bytes] = []


def _heap_offset(layout: int) -> list[bytes]:
    """`HEAP_OFFSETS[layout]` small objects of assorted sizes (every size class up to 512 bytes)."""
    count = HEAP_OFFSETS[layout % len(HEAP_OFFSETS)]
    return [bytes(16 + (i * 37) % 480) for i in range(count)]


def prepare(sdk: str, variant: str) -> Setup | None:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class CountingExporter(SpanExporter):
        def __init__(self) -> None:
            self.count = 0

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            self.count += len(spans)
            return SpanExportResult.SUCCESS

    exporter = CountingExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    client = (openai_client if sdk == "openai" else anthropic_client)()
    enabled = enable(sdk, variant, tp)
    if not enabled:
        return None
    create = client.chat.completions.create if sdk == "openai" else client.messages.create
    if variant == GUARDED_COLD:
        fresh = iter(_fresh_messages(COLD_MESSAGES))  # built before measuring: only the guard's work counts

        def call() -> Any:
            return create(model=MODEL[sdk], messages=next(fresh), max_tokens=MAX_TOKENS)
    else:

        def call() -> Any:
            return create(model=MODEL[sdk], messages=MESSAGES, max_tokens=MAX_TOKENS)

    return Setup(call, lambda: exporter.count, 0 if variant == BASELINE else 1)


#: Distinct messages prepared for the cold variant (more than its warm-up and measured calls).
COLD_MESSAGES = 100


def _fresh_messages(n: int) -> list[list[Any]]:
    """`n` requests like MESSAGES, each with a text no other has (the same length, give or take)."""
    return [
        [{"role": "user", "content": f"Rename the variable x{i} to retry_count in utils/backoff.py."}]
        for i in range(n)
    ]


def enable(sdk: str, variant: str, tp: Any) -> bool:
    """Switch the variant on; False when it cannot run here (the official one outside openai 2.x)."""
    import otel_tokens

    if variant == BASELINE:
        return True
    if variant == FLOOR:
        bare_span(sdk, tp)
    elif variant == OURS:
        otel_tokens.instrument(tracer_provider=tp)
    elif variant in (GUARDED, GUARDED_COLD):
        from bench_instrumentation import BENCH_BUDGETS  # the same three budgets

        from otel_tokens.budgets.spec import BudgetFile
        from otel_tokens.guard import Guard

        otel_tokens.instrument(tracer_provider=tp, budgets=Guard(BudgetFile.model_validate(BENCH_BUDGETS)))
    else:
        from bench_instrumentation import official_instrumentor

        official, _about = official_instrumentor()
        if official is None:
            return False
        official.instrument(tracer_provider=tp)
    return True


def bare_span(sdk: str, tp: Any) -> None:
    """The floor: a CLIENT span with the request attributes, current while the SDK call runs, the
    response's usage attributes set on it, then ended. Nothing else."""
    import wrapt
    from opentelemetry import context, trace
    from opentelemetry.trace import SpanKind

    from otel_tokens import semconv as sc

    tracer = tp.get_tracer("otel-tokens-bench.bare-span")
    provider = sdk

    def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        model = kwargs.get("model", "")
        attributes = {
            sc.GEN_AI_OPERATION_NAME: "chat",
            sc.GEN_AI_PROVIDER_NAME: provider,
            sc.GEN_AI_REQUEST_MODEL: model,
            sc.GEN_AI_REQUEST_MAX_TOKENS: kwargs.get("max_tokens", 0),
            sc.SERVER_ADDRESS: "mock.invalid",
            sc.SERVER_PORT: 80,
        }
        span = tracer.start_span(f"chat {model}", kind=SpanKind.CLIENT, attributes=attributes)
        token = context.attach(trace.set_span_in_context(span))
        try:
            response = wrapped(*args, **kwargs)
        finally:
            context.detach(token)
        usage = response.usage
        span.set_attributes(
            {
                sc.GEN_AI_RESPONSE_MODEL: response.model,
                sc.GEN_AI_USAGE_INPUT_TOKENS: getattr(usage, "prompt_tokens", None)
                or getattr(usage, "input_tokens", 0),
                sc.GEN_AI_USAGE_OUTPUT_TOKENS: getattr(usage, "completion_tokens", None)
                or getattr(usage, "output_tokens", 0),
            }
        )
        span.end()
        return response

    if sdk == "openai":
        wrapt.wrap_function_wrapper(
            "openai.resources.chat.completions.completions", "Completions.create", wrapper
        )
    else:
        wrapt.wrap_function_wrapper("anthropic.resources.messages.messages", "Messages.create", wrapper)


def _recorded_body(sdk: str) -> tuple[bytes, str]:
    """The fake provider's exact response to the measured request."""
    from otel_tokens.demo.fake_provider import FakeProvider

    body = {"model": MODEL[sdk], "messages": MESSAGES, "max_tokens": MAX_TOKENS}
    http = _http_lib(sdk)
    with FakeProvider() as fake, http.Client() as plain:
        if sdk == "openai":
            answer = plain.post(f"{fake.openai_base_url}/chat/completions", json=body)
        else:
            answer = plain.post(f"{fake.anthropic_base_url}/v1/messages", json=body)
        answer.raise_for_status()
        return answer.content, answer.headers["content-type"]


def _http_lib(sdk: str) -> Any:
    """httpx or httpx2: whichever the SDK's default client is built on."""
    import importlib

    module = importlib.import_module(sdk)
    for cls in module.DefaultHttpxClient.__mro__:
        top = cls.__module__.split(".")[0]
        if top.startswith("httpx"):
            return importlib.import_module(top)
    raise RuntimeError(f"cannot tell which HTTP library the {sdk} SDK uses")


def _mock_http_client(sdk: str) -> Any:
    http = _http_lib(sdk)
    content, content_type = _recorded_body(sdk)

    def handler(request: Any) -> Any:
        return http.Response(200, headers={"content-type": content_type}, content=content)

    return http.Client(transport=http.MockTransport(handler))


def openai_client() -> Any:
    import openai

    return openai.OpenAI(
        base_url="http://mock.invalid/v1", api_key="x", max_retries=0, http_client=_mock_http_client("openai")
    )


def anthropic_client() -> Any:
    import anthropic

    return anthropic.Anthropic(
        base_url="http://mock.invalid", api_key="x", max_retries=0, http_client=_mock_http_client("anthropic")
    )


# --- the parent: one callgrind process per variant ---------------------------------------------------


def build_helper(directory: Path) -> Path | None:
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        return None
    library = directory / "callgrind_measure.so"
    subprocess.run(
        [compiler, "-O0", "-shared", "-fPIC", "-o", str(library), str(HELPER_SOURCE)],
        check=True,
        capture_output=True,
    )
    return library


def measure(
    sdk: str, variant: str, calls: int, warm: int, helper: Path, out: Path, layout: int = 0
) -> int | None:
    """Instructions executed inside the measured function for `calls` calls; None if skipped."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        "--collect-atstart=no",
        f"--callgrind-out-file={out}",
        sys.executable,
        __file__,
        "--child",
        sdk,
        variant,
        "--calls",
        str(calls),
        "--warm",
        str(warm),
        "--helper",
        str(helper),
        "--layout",
        str(layout),
    ]
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"{sdk} {variant}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        )
    if "skipped" in json.loads(lines[-1]):
        return None
    totals = re.search(r"^totals: (\d+)", out.read_text(), re.MULTILINE)
    if totals is None:
        raise RuntimeError(f"{sdk} {variant}: no totals in {out}")
    return int(totals.group(1))


def report(sdk: str, runs: dict[str, list[float]], calls: int) -> None:
    """Medians over the processes of each variant; the spread is each variant's own (min..max of
    its added instructions), so a difference smaller than it is not one."""
    per_call = {variant: statistics.median(values) if values else None for variant, values in runs.items()}
    base = per_call[BASELINE]
    assert base is not None
    floor = _added(per_call, FLOOR)
    repeats = len(runs[BASELINE])
    print(f"\n{sdk} sync call, mock transport: {calls} measured calls x {repeats} processes, "
          "instructions per call (callgrind; median, spread of the processes)")  # fmt: skip
    print(f"  {BASELINE:<28}{base:>12,.0f}")
    for variant in [v for v in VARIANTS[sdk][1:] if v in runs]:
        added = _added(per_call, variant)
        if added is None:
            print(f"  {variant:<28}{'n/a':>12}  (not usable with this SDK version)")
            record(BENCH, f"{sdk}: {variant}", None, "k instr", "added per call")
            continue
        of_floor = f"x{added / floor:.2f} of floor" if floor else "n/a"
        print(f"  {variant:<28}{added:>+12,.0f}  {of_floor}  ({_spread(runs[variant], base)})")
        record(BENCH, f"{sdk}: {variant}", added / 1e3, "k instr", "added per call")
    ours = _added(per_call, OURS)
    if floor and ours is not None:
        goal = "met" if ours <= FLOOR_GOAL * floor else "not met"
        official = _added(per_call, OFFICIAL)
        theirs = f", official openai-v2 x{official / floor:.2f}" if official is not None else ""
        print(f"added instructions vs the bare-span floor ({sdk}): otel-tokens x{ours / floor:.2f} "
              f"(goal <= x{FLOOR_GOAL}: {goal}){theirs}")  # fmt: skip
        record(BENCH, f"{sdk}: otel-tokens / floor", ours / floor, "x", f"goal <= {FLOOR_GOAL}")
    print(f"spread of the bare SDK's processes: {min(runs[BASELINE]):,.0f}..{max(runs[BASELINE]):,.0f}")
    report_guard(sdk, per_call)


def report_guard(sdk: str, per_call: dict[str, float | None]) -> None:
    """What the guard adds on top of otel-tokens, as a share of what otel-tokens itself adds."""
    ours, guarded, cold = (_added(per_call, v) for v in (OURS, GUARDED, GUARDED_COLD))
    if not ours or guarded is None:
        return
    share = (guarded - ours) / ours
    goal = "met" if share < GUARD_GOAL else "not met"
    line = f"guard added vs otel-tokens' own overhead ({sdk}): x{share:.3f} (goal < {GUARD_GOAL:.2f}: {goal})"
    record(BENCH, f"{sdk}: guard / otel-tokens overhead", share, "x", f"goal < {GUARD_GOAL}")
    if cold is not None:
        cold_share = (cold - ours) / ours
        line += f"; cold, a new message every call: x{cold_share:.3f}"
        record(
            BENCH, f"{sdk}: guard (cold) / otel-tokens overhead", cold_share, "x", "a new message per call"
        )
    print(line)


def _spread(values: list[float], base: float) -> str:
    return f"{min(values) - base:+,.0f}..{max(values) - base:+,.0f}"


def _added(per_call: dict[str, float | None], variant: str) -> float | None:
    value, base = per_call.get(variant), per_call[BASELINE]
    return None if value is None or base is None else value - base


#: `--variants` names: the floor and ours by a short name too, the rest by their report name.
SHORT_NAMES = {"floor": FLOOR, "ours": OURS, "guard": GUARDED, "cold": GUARDED_COLD, "official": OFFICIAL}


def selected_variants(sdk: str, wanted: Sequence[str] | None) -> tuple[str, ...]:
    """The variants to run for `sdk`: all, or the bare SDK (every figure is added to it) and those
    named in `wanted` (short or report names) that this SDK has."""
    if not wanted:
        return VARIANTS[sdk]
    names = {SHORT_NAMES.get(name, name) for name in wanted}
    unknown = names - {v for vs in VARIANTS.values() for v in vs}
    if unknown:
        known = ", ".join([*SHORT_NAMES, *dict.fromkeys(v for vs in VARIANTS.values() for v in vs)])
        raise SystemExit(f"--variants: unknown {', '.join(sorted(unknown))} (known: {known})")
    return tuple(v for v in VARIANTS[sdk] if v == BASELINE or v in names)


def parent(
    sdks: Sequence[str],
    wanted: Sequence[str] | None = None,
    repeats: int | None = None,
    keep: Path | None = None,
) -> int:
    if shutil.which("valgrind") is None:
        print("callgrind benchmark skipped: valgrind not installed (`make system-deps`)")
        return 0
    calls, warm, default_repeats = (2, 2, 1) if QUICK else (20, WARM_UP_CALLS, REPEATS)
    repeats = repeats or default_repeats
    with tempfile.TemporaryDirectory(prefix="otel-tokens-callgrind-") as tmp:
        directory = Path(tmp)
        helper = build_helper(directory)
        if helper is None:
            print("callgrind benchmark skipped: no C compiler for benchmarks/_callgrind_measure.c")
            return 0
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
        print(f"python {sys.version.split()[0]}, {_versions()}")
        for sdk in sdks:
            variants = selected_variants(sdk, wanted)
            runs: dict[str, list[float]] = {variant: [] for variant in variants}
            for round_ in range(repeats):  # interleaved: every variant once per round
                for variant in variants:
                    slug = re.sub(r"[^a-z0-9]+", "-", variant.lower()).strip("-")
                    out = (keep or directory) / f"{sdk}-{slug}-{round_}.out"
                    total = measure(sdk, variant, calls, warm, helper, out, round_)
                    if total is not None:
                        runs[variant].append(total / calls)
            report(sdk, runs, calls)
    return 0


def _versions() -> str:
    found = []
    for name in ("openai", "anthropic", "opentelemetry-sdk", "opentelemetry-instrumentation-openai-v2"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} absent")
    return ", ".join(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--child", nargs=2, metavar=("SDK", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, default=20, help=argparse.SUPPRESS)
    parser.add_argument("--warm", type=int, default=WARM_UP_CALLS, help=argparse.SUPPRESS)
    parser.add_argument("--helper", help=argparse.SUPPRESS)
    parser.add_argument("--layout", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("sdks", nargs="*", help="openai and/or anthropic (default: both)")
    parser.add_argument(
        "--variants",
        type=lambda text: [name.strip() for name in text.split(",") if name.strip()],
        help=f"comma-separated, e.g. floor,ours (short: {', '.join(SHORT_NAMES)}); the bare SDK always runs",
    )
    parser.add_argument("--repeats", type=int, help=f"processes per variant (default {REPEATS})")
    parser.add_argument("--keep", type=Path, help="keep each process's callgrind output in this directory")
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child[0], args.child[1], args.calls, args.warm, args.helper, args.layout)
    return parent(args.sdks or list(VARIANTS), args.variants, args.repeats, args.keep)


if __name__ == "__main__":
    sys.exit(main())

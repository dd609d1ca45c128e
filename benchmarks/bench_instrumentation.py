"""Per-call cost of instrumenting `client.chat.completions.create`: otel-tokens against the official
OpenTelemetry OpenAI instrumentation (`opentelemetry-instrumentation-openai-v2`), both against the
uninstrumented SDK, side by side in one process run.

Variants, each enabled only for its own timed block (instrument → N calls → uninstrument), rounds
rotated so drift hits all alike:
- uninstrumented: the bare SDK;
- otel-tokens: `otel_tokens.instrument(tracer_provider=tp)`;
- otel-tokens + guard: the same with the in-process budget guard on (`budgets=`): three budgets as a
  real file has them (a global monthly USD budget and a per-model daily token budget that match
  every call — estimated with the tokenizer, priced, reserved and settled — and an agent budget
  that matches none), limits never reached. The report gives the guard's added cost per call as a
  share of the instrumentation's own overhead (goal: under 20%);
- official openai-v2: `OpenAIInstrumentor().instrument(tracer_provider=tp)` (default settings:
  content capture off, global no-op meter and logger providers);
- bare span (floor): a `wrapt` wrapper that only starts a CLIENT span with five request attributes,
  makes it current while `create` runs and ends it when `create` returns — nothing read from the
  request beyond the model, nothing from the response, no stream proxy (a stream's span ends
  before its chunks are read). What any span-per-call instrumentation pays with this
  `TracerProvider`; the report gives each instrumentation's overhead as a multiple of it.
All three get the same real SDK `TracerProvider` with a `SimpleSpanProcessor` and a
counting no-op exporter; every block checks it emitted exactly one span per call (zero for the
uninstrumented one), so a patch that silently failed to apply cannot pass as "fast".

Two transports:
- a mock transport (the SDK's own `http_client` with `MockTransport`, httpx for openai 2.x, httpx2
  for 3.x) replaying the exact bytes the fake provider sends: no socket, so the per-call wrapper
  cost is isolated from the HTTP round-trip that otherwise dominates;
- the local fake provider over real HTTP: the wall-clock ratio a user would see (an upper bound on
  the relative cost, since a real provider answers in hundreds of milliseconds, not one).

Run: `python benchmarks/bench_instrumentation.py` — under `.venv-compat` (openai 2.x) for all three
variants; where the official instrumentation is not installed or not usable (openai 3.x: it imports
`httpx`, which the 3.x SDK no longer uses) it reports otel-tokens against the baseline only.
"""

from __future__ import annotations

import functools
import importlib
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from types import ModuleType
from typing import Any

import openai
import wrapt
from opentelemetry import context, trace
from opentelemetry.instrumentation.utils import unwrap
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

import otel_tokens
from otel_tokens import semconv as sc
from otel_tokens.demo.fake_provider import FakeProvider

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _harness import QUICK, Block, Samples, interleave, record, rounds, spread

BENCH = "instrumentation"
BASELINE, OURS, OFFICIAL, FLOOR = "uninstrumented", "otel-tokens", "official openai-v2", "bare span (floor)"
MOCK, SERVER = "mock transport", "local HTTP server"
MODEL = "gpt-4o-mini"
MESSAGES: list[Any] = [
    {"role": "system", "content": "You are a terse coding assistant. Answer with a diff only."},
    {"role": "user", "content": "Rename the variable x to retry_count in utils/backoff.py."},
]
MAX_TOKENS = 64
GUARDED = "otel-tokens + guard"
#: Budgets the guarded variant enforces: two match every call, one matches none; never reached.
BENCH_BUDGETS: dict[str, Any] = {
    "budgets": [
        {"name": "all-monthly-usd", "limit": {"usd": 1e9}, "window": "month", "action": "block"},
        {"name": "mini-daily", "scope": {"model": MODEL}, "limit": {"tokens": 10**15}, "window": "1d",
         "action": "defer"},
        {"name": "other-agent", "scope": {"agent": "other"}, "limit": {"tokens": 1}, "window": "1h",
         "action": "block"},
    ]
}  # fmt: skip
#: A local round-trip slower than this is a stall, not work (see `server_client`).
STALL_S = 0.02
STREAM_ARGS: dict[str, Any] = {"stream": True, "stream_options": {"include_usage": True}}


class CountingExporter(SpanExporter):
    """Exports nothing, counts spans: the cheapest real exporter, identical for both peers."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


@dataclass
class Variant:
    name: str
    enable: Callable[[], None]
    disable: Callable[[], None]
    spans_per_call: int
    verify: Callable[[int], None] = lambda n: None  # raises if the variant did not do its work


@dataclass
class Scenario:
    transport: str  # "mock transport" / "local HTTP server"
    stream: bool
    client: openai.OpenAI

    @property
    def label(self) -> str:
        return f"{self.transport}, {'stream' if self.stream else 'non-stream'}"


# --- the call being measured ------------------------------------------------------------------------


def call(client: openai.OpenAI, stream: bool, n: int) -> None:
    create = client.chat.completions.create
    if stream:
        for _ in range(n):
            for _chunk in create(model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS, **STREAM_ARGS):
                pass
    else:
        for _ in range(n):
            create(model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS)


# --- set-up ------------------------------------------------------------------------------------------


def sdk_http_lib() -> ModuleType:
    """The HTTP library this openai SDK is built on: httpx (≤ 2.x) or httpx2 (3.x)."""
    for cls in openai.DefaultHttpxClient.__mro__:
        top = cls.__module__.split(".")[0]
        if top.startswith("httpx"):
            return importlib.import_module(top)
    raise RuntimeError("cannot tell which HTTP library the openai SDK uses")


def mock_client(http: ModuleType, fake: FakeProvider, stream: bool) -> openai.OpenAI:
    """A client whose transport replays the fake provider's exact response bytes, without a socket."""
    body: dict[str, Any] = {"model": MODEL, "messages": MESSAGES, "max_tokens": MAX_TOKENS}
    if stream:
        body.update(STREAM_ARGS)
    with http.Client() as plain:
        answer = plain.post(f"{fake.openai_base_url}/chat/completions", json=body)
        answer.raise_for_status()
        content, content_type = answer.content, answer.headers["content-type"]

    def handler(request: Any) -> Any:
        return http.Response(200, headers={"content-type": content_type}, content=content)

    transport = http.Client(transport=http.MockTransport(handler))
    return openai.OpenAI(base_url="http://mock.invalid/v1", api_key="x", max_retries=0, http_client=transport)


def server_client(http: ModuleType, fake: FakeProvider) -> openai.OpenAI:
    """A client of the fake provider over real HTTP, keep-alive as the SDK does by default, unless
    the server stalls keep-alive requests: a server that writes a response's header and body in two
    sends with Nagle on makes the second wait for the client's delayed ACK (~40 ms on Linux), which
    would swamp what is measured. Then a fresh connection per call (Linux ACKs a new connection's
    first segments at once) keeps the round-trip real and short."""
    client = openai.OpenAI(base_url=fake.openai_base_url, api_key="x", max_retries=0)
    call(client, stream=False, n=2)  # connect and warm up
    start = time.perf_counter()
    call(client, stream=False, n=3)
    per_call = (time.perf_counter() - start) / 3
    if per_call < STALL_S:
        return client
    print(f"note: the fake provider stalls keep-alive requests (~{per_call * 1e3:.0f} ms "
          "a call: delayed ACK vs Nagle, the handler does not set TCP_NODELAY); local HTTP server "
          "scenarios use a fresh connection per call")  # fmt: skip
    fresh = http.Client(limits=http.Limits(max_keepalive_connections=0))
    return openai.OpenAI(base_url=fake.openai_base_url, api_key="x", max_retries=0, http_client=fresh)


def official_instrumentor() -> tuple[Any | None, str]:
    """The official instrumentor if it is installed and accepts this openai, else why not."""
    try:
        from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
    except ImportError as exc:
        return None, f"not usable here ({type(exc).__name__}: {exc})"
    from opentelemetry.instrumentation.dependencies import get_dependency_conflicts

    instrumentor = OpenAIInstrumentor()
    conflict = get_dependency_conflicts(instrumentor.instrumentation_dependencies())
    if conflict is not None:
        return None, f"not usable here ({conflict})"
    return (
        instrumentor,
        f"opentelemetry-instrumentation-openai-v2 {version('opentelemetry-instrumentation-openai-v2')}",
    )


_CHAT_MODULE, _CREATE = "openai.resources.chat.completions.completions", "Completions.create"


def bare_span_variant(tp: TracerProvider) -> Variant:
    """The floor: one CLIENT span around `create`, current while it runs, and nothing else."""
    tracer = tp.get_tracer("otel-tokens-bench.bare-span")

    def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        model = kwargs.get("model", "")
        attributes = {
            sc.GEN_AI_OPERATION_NAME: "chat",
            sc.GEN_AI_PROVIDER_NAME: "openai",
            sc.GEN_AI_REQUEST_MODEL: model,
            sc.SERVER_ADDRESS: "mock.invalid",
            sc.SERVER_PORT: 80,
        }
        span = tracer.start_span(f"chat {model}", kind=SpanKind.CLIENT, attributes=attributes)
        token = context.attach(trace.set_span_in_context(span))
        try:
            return wrapped(*args, **kwargs)
        finally:
            context.detach(token)
            span.end()

    def enable() -> None:
        wrapt.wrap_function_wrapper(_CHAT_MODULE, _CREATE, wrapper)

    def disable() -> None:
        unwrap(importlib.import_module(_CHAT_MODULE).Completions, "create")

    return Variant(FLOOR, enable, disable, 1)


def guarded_variant(tp: TracerProvider) -> Variant:
    """otel-tokens with the budget guard on, a fresh guard (and in-process state) per block."""
    from otel_tokens.budgets.spec import BudgetFile
    from otel_tokens.guard import Guard

    budget_file = BudgetFile.model_validate(BENCH_BUDGETS)
    guards: list[Guard] = []

    def enable() -> None:
        guards[:] = [Guard(budget_file)]
        otel_tokens.instrument(tracer_provider=tp, budgets=guards[0])

    def verify(n: int) -> None:
        standing = guards[0].state.standing("mini-daily")  # type: ignore[attr-defined]
        if standing.reserved != 0 or standing.used <= 0:
            raise AssertionError(f"{GUARDED}: the guard did not reserve and settle ({standing})")

    return Variant(GUARDED, enable, otel_tokens.uninstrument, 1, verify)


def variants(tp: TracerProvider) -> tuple[list[Variant], str]:
    found = [
        Variant(BASELINE, lambda: None, lambda: None, 0),
        bare_span_variant(tp),
        Variant(OURS, lambda: otel_tokens.instrument(tracer_provider=tp), otel_tokens.uninstrument, 1),
        guarded_variant(tp),
    ]
    official, about = official_instrumentor()
    if official is not None:
        found.append(
            Variant(OFFICIAL, lambda: official.instrument(tracer_provider=tp), official.uninstrument, 1)
        )
    return found, about


def block(variant: Variant, scenario: Scenario, exporter: CountingExporter, fake: FakeProvider) -> Block:
    def setup() -> None:
        fake.reset()
        exporter.spans = 0
        variant.enable()

    def check(n: int) -> None:
        expected = n * variant.spans_per_call
        if exporter.spans != expected:
            raise AssertionError(
                f"{variant.name} ({scenario.label}): {n} calls emitted {exporter.spans} spans, "
                f"expected {expected}: the instrumentation is not doing what is being measured"
            )
        variant.verify(n)

    run = functools.partial(call, scenario.client, scenario.stream)
    return Block(variant.name, run, setup=setup, teardown=variant.disable, check=check)


# --- report ------------------------------------------------------------------------------------------


def report(scenario: Scenario, names: list[str], s: Samples, n_rounds: int) -> None:
    us = 1e6
    print(f"\nchat.completions.create, {scenario.label}: {n_rounds} rounds x {s.ops_per_block} calls, "
          "µs per call, median (min..max over rounds)")  # fmt: skip
    overhead: dict[str, float] = {}
    for name in names:
        line = f"  {name:<20}{s.median(name) * us:>9.1f}  ({spread(s.per_op[name], us)})"
        if name != BASELINE:
            diffs = s.paired(name, BASELINE)
            overhead[name] = statistics.median(diffs) * us
            ratio = statistics.median(a / b for a, b in zip(s.per_op[name], s.per_op[BASELINE], strict=True))
            line += f"  {overhead[name]:+8.1f} µs ({spread(diffs, us)})  x{ratio:.3f} of uninstrumented"
            if scenario.transport != MOCK:  # over a socket the wall-clock ratio is the headline
                record(BENCH, f"{scenario.label}: {name}", ratio, "x", "wall-clock vs uninstrumented")
        print(line)
    ours, official = overhead[OURS], overhead.get(OFFICIAL)
    theirs = f"{official:+.1f} µs" if official is not None else "n/a"
    ratio_text, ratio_value = "n/a", None
    if official is not None and official > 0 and ours > 0:
        ratio_value = ours / official
        ratio_text = f"{ratio_value:.2f}"
    print(f"instrumentation overhead per call ({scenario.label}): {OURS} {ours:+.1f} µs, "
          f"{OFFICIAL} {theirs}, ratio ours/official = {ratio_text}")  # fmt: skip
    guard_report(scenario, overhead)
    floor = overhead[FLOOR]
    of_floor = {name: _ratio(overhead.get(name), floor) for name in (OURS, OFFICIAL)}
    print(
        f"overhead vs the bare-span floor ({scenario.label}): {FLOOR} {floor:+.1f} µs; "
        + ", ".join(f"{name} {_times(of_floor[name])}" for name in (OURS, OFFICIAL))
    )
    if scenario.transport == MOCK:  # without a socket the per-call overhead is the headline
        record(BENCH, f"{scenario.label}: {OURS}", ours, "µs", "overhead per call")
        record(BENCH, f"{scenario.label}: {OFFICIAL}", official, "µs", "overhead per call")
        record(BENCH, f"{scenario.label}: {FLOOR}", floor, "µs", "overhead per call")
        record(BENCH, f"{scenario.label}: ours/official", ratio_value, "x", "overhead ratio")
        record(BENCH, f"{scenario.label}: ours/floor", of_floor[OURS], "x", "overhead ratio")
        record(BENCH, f"{scenario.label}: official/floor", of_floor[OFFICIAL], "x", "overhead ratio")


def guard_report(scenario: Scenario, overhead: dict[str, float]) -> None:
    """The guard's own cost: guarded minus plain otel-tokens, as a share of otel-tokens' overhead."""
    ours, guarded = overhead[OURS], overhead[GUARDED]
    added = guarded - ours
    share = added / ours if ours > 0 else None
    share_text = f"{share:.0%}" if share is not None else "n/a"
    print(f"guard cost per call ({scenario.label}): {GUARDED} {guarded:+.1f} µs, {OURS} {ours:+.1f} µs; "
          f"the guard adds {added:+.1f} µs = {share_text} of the instrumentation's own overhead")  # fmt: skip
    if scenario.transport == MOCK:
        record(BENCH, f"{scenario.label}: guard added", added, "µs", "guard cost per call")
        record(BENCH, f"{scenario.label}: guard/ours", share, "x", "guard share of our overhead")


def _ratio(overhead: float | None, floor: float) -> float | None:
    """An overhead as a multiple of the floor's; None when either is missing or not positive (noise)."""
    return overhead / floor if overhead is not None and overhead > 0 and floor > 0 else None


def _times(ratio: float | None) -> str:
    return f"x{ratio:.2f} of floor" if ratio is not None else "n/a"


def main() -> None:
    exporter = CountingExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    found, about = variants(tp)
    names = [v.name for v in found]
    http = sdk_http_lib()
    print(f"python {sys.version.split()[0]}, openai {openai.__version__} (on {http.__name__}), "
          f"otel-tokens {version('otel-tokens')}; official: {about}")  # fmt: skip
    with FakeProvider() as fake:
        server = server_client(http, fake)
        scenarios = [Scenario(MOCK, stream, mock_client(http, fake, stream)) for stream in (False, True)]
        scenarios += [Scenario(SERVER, stream, server) for stream in (False, True)]
        for scenario in scenarios:
            mock = scenario.transport == MOCK
            n_rounds = rounds(full=15 if mock else 9)
            blocks = [block(v, scenario, exporter, fake) for v in found]
            samples = interleave(blocks, n_rounds, target_s=0.15 if mock else 0.2, min_ops=5)
            report(scenario, names, samples, n_rounds)
        for scenario in scenarios[:2]:  # mock transport: no I/O, so CPU time is the whole cost
            guard_cpu_report(scenario, [v for v in found if v.name in (BASELINE, OURS, GUARDED)])
    tp.shutdown()


def guard_cpu_report(scenario: Scenario, trio: list[Variant]) -> None:
    """The guard's cost in this thread's CPU time (`time.thread_time`): on a loaded machine the
    wall-clock medians above swing by more than the guard costs, while the CPU a call burns does
    not. Rounds alternate the three variants; the minimum per variant is its cost."""
    n, n_rounds = (20, 2) if QUICK else (200, 7)
    best: dict[str, float] = {}
    for _ in range(n_rounds):
        for variant in trio:
            variant.enable()
            try:
                call(scenario.client, scenario.stream, 5)  # warm
                start = time.thread_time()
                call(scenario.client, scenario.stream, n)
                per_call = (time.thread_time() - start) / n
            finally:
                variant.disable()
            best[variant.name] = min(best.get(variant.name, per_call), per_call)
    us = 1e6
    ours, added = (best[OURS] - best[BASELINE]) * us, (best[GUARDED] - best[OURS]) * us
    share = added / ours if ours > 0 else None
    share_text = f"{share:.0%}" if share is not None else "n/a"
    print(f"guard cost per call, CPU time ({scenario.label}): {BASELINE} {best[BASELINE] * us:.1f} µs, "
          f"{OURS} {ours:+.1f} µs, the guard adds {added:+.1f} µs = {share_text} of the "
          "instrumentation's own overhead")  # fmt: skip
    record(BENCH, f"{scenario.label}: guard added (CPU)", added, "µs", "guard cost per call")
    record(BENCH, f"{scenario.label}: guard/ours (CPU)", share, "x", "guard share of our overhead")


if __name__ == "__main__":
    main()

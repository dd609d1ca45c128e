"""Run every `benchmarks/bench_*.py` in its own process, under each interpreter it is meant for, and
print one summary table of the headline numbers (what `make bench` runs).

Each benchmark runs under this interpreter (the main venv: current SDKs). The instrumentation
benchmark also runs under `.venv-compat` (openai 2.x), the one environment where the official
OpenTelemetry OpenAI instrumentation works, so the three-way comparison comes from there. A
benchmark adds summary rows through `_harness.record()`; one that does not (bench_pricing.py) still
runs and its own output stands.

    python benchmarks/run_all.py [--quick] [--results PATH] [NAME ...]   # NAME: a substring of the file name

A full run writes `benchmarks/RESULTS.md` (the machine, versions, date, commit and every headline
ratio, with the spread over rounds where the benchmark reports one); a quick run writes only when
`--results` names a file, so the committed results are never replaced by quick-mode noise.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _harness import QUICK_ENV, RESULTS_ENV  # noqa: E402

COMPAT_PYTHON = ROOT / ".venv-compat" / "bin" / "python"
#: Benchmarks that also run under the compat venv (the previous major SDK versions).
ALSO_UNDER_COMPAT = {"bench_instrumentation.py", "bench_callgrind.py", "bench_startup.py"}
OFFICIAL_INSTALL = (
    ".venv-compat/bin/pip install 'opentelemetry-instrumentation-openai-v2==2.4b0' "
    "'opentelemetry-util-genai==1.1b0'"
)
TIMEOUT_S = 300
#: Benchmarks that need longer: bench_callgrind runs 3 processes per variant (eleven variants) under
#: valgrind, ~6 minutes on the loaded 2-core machine.
TIMEOUTS_S = {"bench_callgrind.py": 1800}
RESULTS_MD = HERE / "RESULTS.md"
#: Packages whose versions decide the figures (the peers and what we build on).
VERSIONS = (
    "protobuf",
    "prometheus-client",
    "opentelemetry-sdk",
    "opentelemetry-proto",
    "openai",
    "anthropic",
)


@dataclass
class Run:
    bench: str
    interpreter: str
    seconds: float
    returncode: int
    rows: list[dict[str, Any]]


def plan(names: list[str]) -> list[tuple[Path, str, Path]]:
    """(benchmark, interpreter label, python) for every run, in order."""
    runs: list[tuple[Path, str, Path]] = []
    for bench in sorted(HERE.glob("bench_*.py")):
        if names and not any(n in bench.name for n in names):
            continue
        runs.append((bench, "main", Path(sys.executable)))
        if bench.name in ALSO_UNDER_COMPAT:
            if COMPAT_PYTHON.exists():
                runs.append((bench, "compat", COMPAT_PYTHON))
            else:
                print(f"note: {COMPAT_PYTHON.relative_to(ROOT)} missing, {bench.name} runs under main only "
                      "(`make compat-test` creates it)")  # fmt: skip
    return runs


def run_one(bench: Path, label: str, python: Path, quick: bool) -> Run:
    env = dict(os.environ)
    # The compat venv may not have otel-tokens installed; the checkout is what is being measured.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    if quick:
        env[QUICK_ENV] = "1"
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl", encoding="utf-8") as results:
        env[RESULTS_ENV] = results.name
        print(f"\n=== {bench.name} under {label} ({os.path.relpath(python, ROOT)})", flush=True)
        start = time.monotonic()
        try:
            timeout = TIMEOUTS_S.get(bench.name, TIMEOUT_S)
            code = subprocess.run([str(python), str(bench)], env=env, cwd=ROOT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            print(f"!!! {bench.name} timed out after {timeout} s", flush=True)
            code = -1
        rows = [json.loads(line) for line in results.read().splitlines() if line.strip()]
    return Run(bench.name, label, time.monotonic() - start, code, rows)


def _value(row: dict[str, Any]) -> str:
    value, unit = row["value"], row["unit"]
    if value is None:
        return "n/a"
    if unit == "x":
        return f"x{value:.3f}"
    if unit == "k instr":
        return f"{value:+,.0f}k instr"
    if unit == "spans/s":
        return f"{value:,.0f} spans/s"
    return f"{value:+.1f} {unit}" if unit == "µs" else f"{value:.4g} {unit}"


def summary(runs: list[Run]) -> None:
    table = [("benchmark", "venv", "measured", "value", "")]
    for run in runs:
        status = "ok" if run.returncode == 0 else f"FAILED (exit {run.returncode})"
        table.append((run.bench, run.interpreter, f"[{status}, {run.seconds:.1f} s]", "", ""))
        if not run.rows:
            table.append(("", "", "(no summary rows: see its output above)", "", ""))
        table.extend(("", "", row["metric"], _value(row), row["note"]) for row in run.rows)
    widths = [max(len(r[i]) for r in table) for i in range(5)]
    print("\n=== summary")
    for i, row in enumerate(table):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths[:4]))


def official_missing(runs: list[Run]) -> bool:
    """The compat run of the instrumentation benchmark measured no official instrumentation."""
    for run in runs:
        if run.bench in ALSO_UNDER_COMPAT and run.interpreter == "compat":
            return not any("official" in r["metric"] and r["value"] is not None for r in run.rows)
    return False


def _machine() -> list[str]:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return [
        f"- machine: {platform.platform()}, {os.cpu_count()} cores ({cpu}); load average at the end {load}",
        f"- Python {platform.python_version()} ({_relative(Path(sys.executable))})",
    ]


def _versions() -> str:
    found = []
    for name in VERSIONS:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return "- versions (main venv): " + ", ".join(found)


def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (
        " with uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
    )


def write_results(runs: list[Run], path: Path, quick: bool) -> None:
    """The markdown record of one run: what ran where, and every headline number."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Benchmark results",
        "",
        "Generated by `make bench` (`benchmarks/run_all.py`) — do not edit; rerun it. Ratios compare",
        "peers run side by side, interleaved round by round, in one run on one machine; see",
        "`benchmarks/README.md` for what each benchmark measures and each file's docstring for details.",
        "",
        f"- date: {now}; commit {_commit()}" + (" — QUICK MODE: numbers meaningless" if quick else ""),
        *_machine(),
        _versions(),
        "",
        "| benchmark | venv | measured | value | note |",
        "|---|---|---|---|---|",
    ]
    for run in runs:
        status = "ok" if run.returncode == 0 else f"FAILED (exit {run.returncode})"
        lines.append(f"| {run.bench} | {run.interpreter} | [{status}, {run.seconds:.0f} s] | | |")
        for row in run.rows:
            note = str(row["note"]).replace("|", "\\|")
            lines.append(f"| | | {row['metric']} | {_value(row)} | {note} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"\nwrote {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help=f"tiny iteration counts (sets {QUICK_ENV}=1)")
    parser.add_argument(
        "--results",
        type=Path,
        help=f"write the markdown results here (default, full runs only: {RESULTS_MD})",
    )
    parser.add_argument("names", nargs="*", help="run only benchmarks whose file name contains one of these")
    args = parser.parse_args(argv)
    runs = [run_one(bench, label, python, args.quick) for bench, label, python in plan(args.names)]
    if not runs:
        print("no benchmark matched", file=sys.stderr)
        return 2
    summary(runs)
    results = args.results if args.results is not None else (None if args.quick else RESULTS_MD)
    if results is not None:
        write_results(runs, results, args.quick)
    if official_missing(runs):
        print(
            f"\nnote: no official OpenAI instrumentation measured in .venv-compat; add it: {OFFICIAL_INSTALL}"
        )
    return 0 if all(r.returncode == 0 for r in runs) else 1


def _relative(path: Path) -> str:
    """A path as the project sees it (`.venv/bin/python`): RESULTS.md is committed, and this
    machine's directories mean nothing elsewhere."""
    try:
        return str(path.relative_to(Path(__file__).resolve().parent.parent))
    except ValueError:
        return path.name


if __name__ == "__main__":
    sys.exit(main())

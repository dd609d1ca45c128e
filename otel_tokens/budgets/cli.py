"""`otel-tokens render` and `check`: thin commands over the budget renderers (and the exit codes and
budget table `status` and the demo share; `status` itself lives in `otel_tokens.ops`).

`check` validates the budget file, compares the committed generated files with a fresh rendering,
and — when Prometheus' and Alertmanager's own tools are installed — lets them judge the output.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from otel_tokens.budgets.loader import BudgetFileError, load_budget_file
from otel_tokens.budgets.render_all import ALERTMANAGER_CONFIG, RULES_FILE, check_rendered, render_all
from otel_tokens.humanize import format_amount

#: `otel-tokens status` exit codes, so scripts and CI can gate on a budget (Nagios' convention).
EXIT_OK, EXIT_WARNING, EXIT_EXCEEDED, EXIT_UNKNOWN = 0, 1, 2, 3


def render_command(budget_file: str, out_dir: str) -> int:
    try:
        written = render_all(budget_file, out_dir)
    except BudgetFileError as exc:
        print(exc, file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0


def check_command(budget_file: str, out_dir: str) -> int:
    try:
        spec = load_budget_file(budget_file)
    except BudgetFileError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{budget_file}: valid ({len(spec.budgets)} budgets)")
    problems = check_rendered(budget_file, out_dir)
    for problem in problems:
        print(problem, file=sys.stderr)
    failed = bool(problems)
    out = Path(out_dir)
    failed |= not _run_tool("promtool", ["check", "rules", str(out / RULES_FILE)])
    failed |= not _run_tool("amtool", ["check-config", str(out / ALERTMANAGER_CONFIG)])
    if not failed:
        print("rendered files are up to date and accepted by their tools")
    return 1 if failed else 0


def _run_tool(tool: str, args: list[str]) -> bool:
    """Run Prometheus'/Alertmanager's own checker when present; absent tools are reported, not failed.
    A rendered file that is missing was already reported (with the command that writes it), so the
    tool is not run on it: its raw "path does not exist" would only repeat that, less clearly."""
    if not Path(args[-1]).is_file():
        print(f"{tool} {' '.join(args)}: not run (the file is missing, see above)")
        return False
    binary = shutil.which(tool)
    if binary is None:
        print(f"{tool} not installed: skipped `{tool} {' '.join(args)}`")
        return True
    result = subprocess.run([binary, *args], capture_output=True, text=True, check=False)
    output = (result.stdout + result.stderr).strip()
    print(f"{tool} {' '.join(args)}: {'ok' if result.returncode == 0 else 'FAILED'}")
    if result.returncode != 0:
        print(output, file=sys.stderr)
    return result.returncode == 0


def status_exit_code(states: Iterable[str]) -> int:
    """The worst state decides: exceeded 2, warning 1, all ok 0."""
    seen = set(states)
    return EXIT_EXCEEDED if "exceeded" in seen else EXIT_WARNING if "warning" in seen else EXIT_OK


def budget_table(budgets: Iterable[Mapping[str, Any]]) -> str:
    """Every budget, one a line, as `status` and the demo print it (figures via `humanize`)."""
    rows = [f"{'budget':<28}{'window':>8}{'used':>14}{'limit':>14}{'%':>7}  state"]
    for b in budgets:
        used, limit = format_amount(b["used"], b["unit"]), format_amount(b["limit"], b["unit"])
        rows.append(
            f"{b['name']:<28}{b['window']:>8}{used:>14}{limit:>14}{100 * b['ratio']:>6.1f}%  {b['state']}"
        )
    return "\n".join(rows)

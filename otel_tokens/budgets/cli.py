"""`otel-tokens render` and `otel-tokens check`: thin commands over the budget renderers.

`check` validates the budget file, compares the committed generated files with a fresh rendering,
and — when Prometheus' and Alertmanager's own tools are installed — lets them judge the output.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from otel_tokens.budgets.loader import BudgetFileError, load_budget_file
from otel_tokens.budgets.render_all import ALERTMANAGER_CONFIG, RULES_FILE, check_rendered, render_all


def format_amount(value: float, unit: str) -> str:
    """A budget figure as people read it: whole tokens with separators, dollars to the cent (or
    finer below a dollar, where demo-sized spend lives)."""
    if unit == "usd":
        return f"${value:,.2f}" if value >= 1 else f"${value:.6f}"
    return f"{value:,.0f}"


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
    """Run Prometheus'/Alertmanager's own checker when present; absent tools are reported, not failed."""
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


def status_command(metrics_url: str) -> int:
    """Print the collector's exact budget standing (its /api/v1/budgets), one budget a line."""
    import json
    import urllib.error
    import urllib.request

    url = metrics_url.rstrip("/") + "/api/v1/budgets"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            budgets = json.loads(response.read())["budgets"]
    except urllib.error.HTTPError as exc:
        hint = " (is the collector running with --budgets-file?)" if exc.code == 404 else ""
        print(f"otel-tokens status: {url}: HTTP {exc.code}{hint}", file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError) as exc:
        print(f"otel-tokens status: cannot read {url}: {exc}", file=sys.stderr)
        return 1
    print(f"{'budget':<28}{'window':>8}{'used':>14}{'limit':>14}{'%':>7}  state")
    for b in budgets:
        used, limit = format_amount(b["used"], b["unit"]), format_amount(b["limit"], b["unit"])
        print(f"{b['name']:<28}{b['window']:>8}{used:>14}{limit:>14}{100 * b['ratio']:>6.1f}%  {b['state']}")
    return 0

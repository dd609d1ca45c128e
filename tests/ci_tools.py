"""A missing tool skips a test on a developer's machine and fails it in CI.

Locally, a test that needs Prometheus, Alertmanager, promtool, amtool, docker-compose or Node.js is
skipped when the tool is absent (`make test` installs them). In CI (`CI` set, as every CI system
does) a skip for a missing tool would hide a test that never ran, so it fails with the skip's own
message. Tests ask for tools with `require_tool()`; `skipif` markers elsewhere keep working: this
plugin turns any skip whose reason says a tool is "missing" or "not installed" into a failure.
Skips for other reasons (an SDK version without a feature) stay skips.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Generator
from typing import Any, NoReturn

import pytest

CI_ENV = "CI"
_MISSING_TOOL = re.compile(r"\b(missing|not installed)\b", re.IGNORECASE)


def in_ci() -> bool:
    """`CI` set to anything but an explicit no (`""`, `0`, `false`, `no`)."""
    return os.environ.get(CI_ENV, "").strip().lower() not in ("", "0", "false", "no")


def tool_missing(message: str) -> NoReturn:
    """Skip with `message` locally; fail with it (and why) in CI."""
    if in_ci():
        pytest.fail(f"{message} ({CI_ENV} is set: a missing tool fails instead of skipping)", pytrace=False)
    pytest.skip(message)


def require_tool(*names: str, install: str) -> str:
    """The path of the first of `names` on PATH, else skip (locally) or fail (CI) saying `install`."""
    for name in names:
        path = shutil.which(name)
        if path is not None:
            return path
    tool_missing(f"{' / '.join(names)} missing: {install}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not (in_ci() and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    if _MISSING_TOOL.search(reason):
        report.outcome = "failed"
        report.longrepr = f"{reason} ({CI_ENV} is set: a missing tool fails instead of skipping)"

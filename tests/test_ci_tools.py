"""In CI a missing tool fails the test that needs it; on a developer's machine it skips.

A real pytest run in a subprocess, with only `tests.ci_tools` loaded, over a probe file that skips
the ways our tests do: `require_tool()`, a `skipif` marker naming a missing tool, and a feature skip
that is not about a tool (which must stay a skip in CI).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import pytest
from tests.ci_tools import require_tool

def test_require_tool():
    require_tool("no-such-tool-otel-tokens", install="apt-get install nothing")

@pytest.mark.skipif(True, reason="docker-compose missing: apt-get install docker-compose")
def test_skipif_marker():
    pass

def test_feature_skip():
    pytest.skip("this openai version has no chat.completions.parse")
"""


def run_probe(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rfs", "-p", "tests.ci_tools", "-p", "no:cacheprovider",
         str(tmp_path / "test_probe.py")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_without_ci_a_missing_tool_skips(tmp_path: Path, ci: str | None):
    run = run_probe(tmp_path, ci)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 skipped" in run.stdout, run.stdout


@pytest.mark.parametrize("ci", ["true", "1"])
def test_in_ci_a_missing_tool_fails_and_says_why(tmp_path: Path, ci: str):
    run = run_probe(tmp_path, ci)
    assert run.returncode == 1, run.stdout + run.stderr
    # A skipif marker acts at setup, so pytest counts that failure as an error: still not a pass.
    assert "1 failed, 1 skipped, 1 error" in run.stdout, run.stdout
    assert (
        "FAILED" in run.stdout and "no-such-tool-otel-tokens missing: apt-get install nothing" in run.stdout
    )
    assert "docker-compose missing: apt-get install docker-compose" in run.stdout
    for test in ("test_require_tool", "test_skipif_marker"):
        sections = run.stdout.split("____ ")
        (section,) = [part for part in sections if part.startswith(test) or f"of {test}" in part]
        assert "(CI is set: a missing tool fails instead of skipping)" in section, section

"""Budgets enforced in an unmodified agent: `OTEL_TOKENS_BUDGETS_FILE` under `opentelemetry-instrument`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from otel_tokens.demo.fake_provider import FakeProvider
from otel_tokens.tokencount import count_message_tokens

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = ("What is a token?", "Why do agents loop?")  # what examples/agent.py asks
DEFAULT_OUTPUT_TOKENS = 4096  # the agent sets no max_tokens: the budget file's default ceiling


def run_agent(fake: FakeProvider, budgets_file: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {
        "OPENAI_BASE_URL": fake.openai_base_url,
        "OPENAI_API_KEY": "not-a-real-key",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_TOKENS_BUDGETS_FILE": str(budgets_file),
    }
    env.pop("OTEL_TOKENS_RAISE_INTERNAL_ERRORS", None)  # the agent as users run it
    command = [str(Path(sys.executable).parent / "opentelemetry-instrument"), sys.executable]
    return subprocess.run(
        [*command, str(ROOT / "examples" / "agent.py")], env=env, capture_output=True, text=True, timeout=60
    )


def test_unmodified_agent_is_stopped_by_its_budget(fake_provider: FakeProvider, tmp_path: Path):
    estimates = [count_message_tokens([{"role": "user", "content": q}], "gpt-4o-mini") for q in QUESTIONS]
    limit = max(estimates) + DEFAULT_OUTPUT_TOKENS + 5  # the first call fits; after it, the second does not
    path = tmp_path / "budgets.yaml"
    budget = {"name": "agent-daily", "limit": {"tokens": limit}, "window": "day", "action": "block"}
    path.write_text(yaml.safe_dump({"budgets": [budget]}))
    run = run_agent(fake_provider, path)
    assert run.returncode != 0
    assert "otel_tokens.guard.errors.BudgetExceeded: budget 'agent-daily'" in run.stderr, run.stderr
    assert len(fake_provider.requests) == 1


def test_broken_budget_file_stops_the_agent_with_every_error(fake_provider: FakeProvider, tmp_path: Path):
    """`opentelemetry-instrument` swallows instrumentor errors; an agent must not run unguarded."""
    path = tmp_path / "budgets.yaml"
    path.write_text("budgets:\n  - name: a\n    limit: {tokens: -5}\n    window: 1d\n    action: explode\n")
    run = run_agent(fake_provider, path)
    assert run.returncode != 0 and fake_provider.requests == []
    assert "otel-tokens: not starting unguarded: 2 problems in budget file" in run.stderr, run.stderr
    assert f"{path}:3: budgets[0].limit.tokens: must be positive, got -5" in run.stderr
    assert f"{path}:5: budgets[0].action: must be one of" in run.stderr

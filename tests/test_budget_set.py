"""`otel-tokens budget set`: one line changes in a commented budgets.yaml, the generated files follow,
and an edit the loader rejects is refused with its file:line error and leaves every file as it was."""

from __future__ import annotations

import difflib
import json
import shutil
from pathlib import Path

import pytest

from otel_tokens.budgets.loader import load_budget_file
from otel_tokens.budgets.render_all import RULES_FILE, check_rendered
from otel_tokens.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "budgets.yaml"


@pytest.fixture
def budgets(tmp_path: Path) -> Path:
    path = tmp_path / "budgets.yaml"
    shutil.copy(EXAMPLE, path)
    return path


def diff(before: str, after: str) -> list[str]:
    """The changed lines only (+/-), without the unified diff's headers and context."""
    lines = difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
    return [x for x in lines if x[:1] in "+-" and not x.startswith(("+++", "---"))]


def set_(budgets: Path, *args: str) -> int:
    return main(["budget", "set", *args, "--file", str(budgets), "--out", str(budgets.parent)])


def test_changing_a_limit_changes_that_one_line_and_rerenders(budgets: Path, capsys):
    before = budgets.read_text()
    assert set_(budgets, "support", "600k") == 0
    assert diff(before, budgets.read_text()) == [
        "-    limit: {tokens: 500000}",
        "+    limit: {tokens: 600000}",
    ]
    assert load_budget_file(budgets).budget("support-daily").limit.tokens == 600_000
    assert check_rendered(budgets, budgets.parent) == []  # the generated files follow the edit
    assert "600000" in (budgets.parent / RULES_FILE).read_text()
    out = capsys.readouterr().out
    assert "budget support-daily limit 600,000 tokens (was 500,000 tokens)" in out


def test_switching_to_dollars_and_adding_a_budget_keep_every_comment(budgets: Path, capsys):
    before = budgets.read_text()
    assert set_(budgets, "research", "25", "--usd") == 0
    assert set_(budgets, "newcomer", "1.5M", "--window", "7d") == 0
    after = budgets.read_text()
    changed = diff(before, after)
    assert changed[:2] == ["-    limit: {tokens: 2000000}", "+    limit: {usd: 25}"]
    assert all(line.startswith("+") for line in changed[2:])  # the rest only adds
    assert (
        "    forecast: {threshold: 0.9, lookback: 6h}\n"
        "\n"
        "  - name: newcomer-weekly\n"
        "    scope: {agent: newcomer}\n"
        "    limit: {tokens: 1500000}\n"
        "    window: 7d\n"
        "\n"
        "alerting:\n"
    ) in after
    comments = [line for line in before.splitlines() if line.lstrip().startswith("#")]
    assert comments and all(c in budgets.read_text() for c in comments)
    assert load_budget_file(budgets).budget("newcomer-weekly").window == "7d"


def test_json_says_what_changed(budgets: Path, capsys):
    assert main(["budget", "set", "codegen", "4M", "--file", str(budgets), "--out", str(budgets.parent),
                 "--json"]) == 0  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert doc["budget"] == "codegen-daily" and doc["added"] is False
    assert doc["old_limit"] == {"tokens": 3000000} and doc["new_limit"] == {"tokens": 4000000}
    assert str(budgets.parent / RULES_FILE) in doc["rendered"]


def test_an_invalid_edit_is_refused_with_the_loaders_error_and_nothing_changes(budgets: Path, capsys):
    before = budgets.read_bytes()
    assert set_(budgets, "support", "0") == 1
    err = capsys.readouterr().err
    assert f"{budgets} left unchanged" in err
    assert f"{budgets}:24: budgets[0].limit.tokens: must be positive, got 0" in err
    assert budgets.read_bytes() == before
    assert not (budgets.parent / RULES_FILE).exists()  # nothing rendered either
    assert [p.name for p in budgets.parent.iterdir()] == ["budgets.yaml"]  # no temporary file left


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["support", "lots"], "LIMIT wants a number such as 500000, 500k, 2M"),
        (["support", "1.5"], "a token LIMIT is a whole number of tokens"),
        (["support", "1,5"], "LIMIT wants a number"),
    ],
)
def test_a_limit_that_is_not_a_number_is_refused(budgets: Path, capsys, args: list[str], said: str):
    before = budgets.read_bytes()
    assert set_(budgets, *args) == 1
    assert said in capsys.readouterr().err
    assert budgets.read_bytes() == before


def test_an_agent_with_two_budgets_needs_window(budgets: Path, capsys):
    assert set_(budgets, "support", "1M", "--window", "day") == 0  # a second, calendar-day budget
    assert set_(budgets, "support", "2M") == 1
    assert (
        "agent 'support' has 2 budgets: support-daily (1d), support-daily-day" not in capsys.readouterr().err
    )
    assert set_(budgets, "support", "2M") == 1
    err = capsys.readouterr().err
    assert "has 2 budgets" in err and "pass --window to pick one" in err
    assert set_(budgets, "support", "2M", "--window", "1d") == 0
    assert load_budget_file(budgets).budget("support-daily").limit.tokens == 2_000_000


def test_a_broken_file_is_reported_as_it_is_not_edited(tmp_path: Path, capsys):
    broken = tmp_path / "budgets.yaml"
    broken.write_text("budgets:\n  - name: x\n    limit: {tokens: -5}\n    window: 1d\n")
    before = broken.read_bytes()
    assert set_(broken, "x", "10") == 1
    assert f"{broken}:3: budgets[0].limit.tokens: must be positive, got -5" in capsys.readouterr().err
    assert broken.read_bytes() == before

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
#: A budget file as people write them: comments everywhere, flow mappings, blank lines, a section
#: after the budgets. Kept here (not the example, which other work edits) so the golden diffs hold.
COMMENTED = """\
# Our LLM budgets. Reviewed monthly by the platform team.
version: 1
timezone: UTC

budgets:
  # support answers tickets all day
  - name: support-daily
    scope: {agent: support}       # the support agent only
    limit: {tokens: 500000}       # raised from 400k in March
    window: 1d
    action: defer

  - name: research-daily
    scope: {agent: research}
    limit: {tokens: 2000000}
    window: 1d

# where pages go
alerting:
  default_receiver: team
  receivers:
    - {name: team, webhook_configs: [{url: "http://hooks.internal/llm"}]}
"""


@pytest.fixture
def budgets(tmp_path: Path) -> Path:
    path = tmp_path / "budgets.yaml"
    path.write_text(COMMENTED)
    return path


def test_the_example_file_changes_by_one_line(tmp_path: Path, capsys):
    example = tmp_path / "budgets.yaml"
    shutil.copy(EXAMPLE, example)
    before = example.read_text()
    assert main(["budget", "set", "support", "600k", "--file", str(example), "--out", str(tmp_path)]) == 0
    changed = diff(before, example.read_text())
    assert len(changed) == 2 and changed[0].startswith("-") and changed[1].startswith("+")
    assert changed[0].replace("500000", "600000")[1:] == changed[1][1:]
    assert check_rendered(example, tmp_path) == []


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
        "-    limit: {tokens: 500000}       # raised from 400k in March",
        "+    limit: {tokens: 600000}       # raised from 400k in March",
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
    assert after == before.replace("    limit: {tokens: 2000000}\n", "    limit: {usd: 25}\n").replace(
        "    window: 1d\n\n# where pages go\n",
        "    window: 1d\n"
        "\n"
        "  - name: newcomer-weekly\n"
        "    scope: {agent: newcomer}\n"
        "    limit: {tokens: 1500000}\n"
        "    window: 7d\n"
        "\n"
        "# where pages go\n",
    )
    comments = [line for line in before.splitlines() if line.lstrip().startswith("#")]
    assert comments and all(c in budgets.read_text() for c in comments)
    assert load_budget_file(budgets).budget("newcomer-weekly").window == "7d"


def test_json_says_what_changed(budgets: Path, capsys):
    assert main(["budget", "set", "research", "4M", "--file", str(budgets), "--out", str(budgets.parent),
                 "--json"]) == 0  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert doc["budget"] == "research-daily" and doc["added"] is False
    assert doc["old_limit"] == {"tokens": 2000000} and doc["new_limit"] == {"tokens": 4000000}
    assert str(budgets.parent / RULES_FILE) in doc["rendered"]


def test_an_invalid_edit_is_refused_with_the_loaders_error_and_nothing_changes(budgets: Path, capsys):
    before = budgets.read_bytes()
    assert set_(budgets, "support", "0") == 1
    err = capsys.readouterr().err
    assert f"{budgets} left unchanged" in err
    assert f"{budgets}:9: budgets[0].limit.tokens: must be positive, got 0" in err
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


def test_block_style_limits_and_unindented_lists_are_edited_in_their_own_style():
    from otel_tokens.ops.budget_edit import edit_budget_text

    text = "budgets:\n- name: a\n  scope: {agent: a}\n  limit:\n    tokens: 5   # small\n  window: 1d"
    changed, _ = edit_budget_text(text, "a", 7, window=None, usd=True)
    assert changed == text.replace("    tokens: 5   # small", "    usd: 7   # small")
    added, edit = edit_budget_text(text, "b", 9, window=None, usd=False)
    assert edit.name == "b-daily" and added == (
        text + "\n- name: b-daily\n  scope: {agent: b}\n  limit: {tokens: 9}\n  window: 1d\n"
    )

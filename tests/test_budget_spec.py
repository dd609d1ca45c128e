"""The budget file contract: good files load, bad files fail with every promised `file:line` error.

Bad fixtures state their expected errors in `# error: <line>: <message>` comments (like rulefmt's
`*.bad.yaml`); the test requires exactly those errors, so "all errors at once" is checked too.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from pydantic import ValidationError

from otel_tokens.budgets import BudgetFile, BudgetFileError, load_budget_file, parse_budget_text
from otel_tokens.budgets.spec import SCHEMA_PATH, json_schema_text, parse_duration

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "budgets"
EXAMPLE = ROOT / "examples" / "budgets.yaml"
GOOD = sorted(FIXTURES.glob("*.good.yaml"))
BAD = sorted(FIXTURES.glob("*.bad.yaml"))


def test_fixture_sets_are_not_empty():
    assert len(GOOD) >= 2 and len(BAD) >= 5


@pytest.mark.parametrize("path", [*GOOD, EXAMPLE], ids=lambda p: p.name)
def test_good_files_load_and_match_the_json_schema(path: Path):
    load_budget_file(path)
    # The published schema accepts what the loader accepts (editors must not flag valid files).
    jsonschema.validate(yaml.safe_load(path.read_text()), json.loads(SCHEMA_PATH.read_text()))


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.name)
def test_bad_files_report_every_promised_error(path: Path):
    expected = re.findall(r"^# error: (\d+): (.*)$", path.read_text(), flags=re.MULTILINE)
    assert expected, f"{path.name} declares no '# error:' lines"
    with pytest.raises(BudgetFileError) as info:
        load_budget_file(path)
    got = [(str(e.line), f"{e.path}: {e.message}" if e.path else e.message) for e in info.value.errors]
    assert got == expected
    for error in info.value.errors:
        assert str(error).startswith(f"{path}:{error.line}: ")


def test_error_message_lists_every_problem_with_file_and_line():
    text = "budgets:\n  - name: a\n    limit: {tokens: -5}\n    window: 1d\n    severity: P9\n"
    with pytest.raises(BudgetFileError) as info:
        parse_budget_text(text, "budgets.yaml")
    message = str(info.value)
    assert "2 problems in budget file" in message
    assert "budgets.yaml:3: budgets[0].limit.tokens: must be positive, got -5" in message
    assert "budgets.yaml:5: budgets[0].severity: must be one of 'P1', 'P2' or 'P3', got 'P9'" in message


def test_missing_file_is_a_budget_file_error_that_says_file_not_found(tmp_path: Path):
    with pytest.raises(BudgetFileError) as info:
        load_budget_file(tmp_path / "absent.yaml")
    assert f"{tmp_path / 'absent.yaml'}: file not found" in str(info.value)
    assert ":0:" not in str(info.value)  # no line number for a file that is not there


def test_unreadable_paths_say_what_they_are(tmp_path: Path):
    with pytest.raises(BudgetFileError, match=r"is a directory, not a budget file"):
        load_budget_file(tmp_path)
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe budgets")
    with pytest.raises(BudgetFileError, match=r"binary\.yaml: not UTF-8 text"):
        load_budget_file(tmp_path / "binary.yaml")


def test_defaults_are_the_four_standard_rules():
    budget = parse_budget_text("budgets: [{name: a, limit: {tokens: 10}, window: 1d}]").budgets[0]
    assert (budget.warn_at, budget.warn_severity, budget.severity, budget.action) == (0.8, "P3", "P2", "warn")
    assert (budget.spike.enabled, budget.spike.factor, budget.spike.severity) == (True, 2.0, "P2")
    assert (budget.forecast.threshold, budget.forecast.severity) == (0.9, "P2")
    assert budget.scope.matchers() == {}


def test_example_covers_the_planning_table():
    example = load_budget_file(EXAMPLE)
    tokens = {b.scope.agent: b.limit.tokens for b in example.budgets if b.scope.agent}
    assert tokens == {
        "support": 500_000,
        "research": 2_000_000,
        "codegen": 3_000_000,
        "data-analysis": 1_000_000,
        "internal-tools": 200_000,
    }
    usd = [b for b in example.budgets if b.limit.unit == "usd"]
    assert [(b.scope.matchers(), b.window) for b in usd] == [({}, "month")]
    assert all(b.per_task_instance and b.per_task_instance.runaway_factor == 3 for b in example.budgets[:5])
    assert example.alerting is not None
    assert {r.severity for r in example.alerting.routes} == {"P1", "P2", "P3"}
    assert example.alerting.receiver("oncall-webhook").webhook_configs


def test_windows():
    budgets = parse_budget_text(
        "budgets:\n"
        + "".join(
            f"  - {{name: b{i}, limit: {{tokens: 1}}, window: {w}}}\n"
            for i, w in enumerate(["1h", "1d", "7d", "30d", "day", "week", "month"])
        )
    ).budgets
    assert [b.is_calendar for b in budgets] == [False] * 4 + [True] * 3
    assert [b.window_seconds for b in budgets[:4]] == [3600, 86400, 7 * 86400, 30 * 86400]
    assert parse_duration("1h30m") == 5400 and parse_duration("250ms") == 0.25
    with pytest.raises(ValueError):
        parse_duration("1 hour")


def test_models_enforce_the_same_rules_when_built_in_python():
    """The guard or a test may build a BudgetFile without YAML: cross-checks still apply."""
    one = {"name": "a", "limit": {"tokens": 1}, "window": "1d"}
    with pytest.raises(ValidationError, match="duplicate budget name"):
        BudgetFile.model_validate({"budgets": [one, one]})
    with pytest.raises(ValidationError, match="downgrade_to"):
        BudgetFile.model_validate({"budgets": [{**one, "action": "downgrade"}]})


def test_committed_json_schema_is_current():
    """Regenerate with `python -c 'from otel_tokens.budgets.spec import write_json_schema as w; w()'`."""
    assert SCHEMA_PATH.read_text() == json_schema_text()

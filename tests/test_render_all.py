"""`render_all` writes every generated file deterministically, and the committed copies match.

The drift test is the contract of "generated — do not edit": a hand edit to a rendered file, or a
change to examples/budgets.yaml without re-rendering, fails here with the command that fixes it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from otel_tokens.budgets import BudgetFileError
from otel_tokens.budgets.render_all import check_rendered, generated_header, render_all

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "budgets.yaml"
SOURCE = "examples/budgets.yaml"
EXPECTED_FILES = {
    "prometheus/rules/otel-tokens.rules.yml",
    "prometheus/prometheus.yml",
    "alertmanager/alertmanager.yml",
    "alertmanager/templates/otel-tokens.tmpl",
    "grafana/provisioning/datasources/prometheus.yml",
    "grafana/provisioning/dashboards/otel-tokens.yml",
    "grafana/dashboards/otel-tokens-overview.json",
    "grafana/dashboards/otel-tokens-agent.json",
}


def test_committed_files_match_the_example_budget_file():
    problems = check_rendered(EXAMPLE, ROOT)
    assert not problems, "\n".join(problems)


def test_renders_every_file_with_the_do_not_edit_header(tmp_path: Path):
    written = render_all(EXAMPLE, tmp_path, source=SOURCE)
    assert {p.relative_to(tmp_path).as_posix() for p in written} == EXPECTED_FILES
    header = generated_header(SOURCE)
    for path in written:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            assert json.loads(text)["description"] == header
        else:
            assert header in text.splitlines()[0], path


def test_rendering_twice_gives_the_same_bytes(tmp_path: Path):
    first = {p.name: p.read_bytes() for p in render_all(EXAMPLE, tmp_path / "a", source=SOURCE)}
    second = {p.name: p.read_bytes() for p in render_all(EXAMPLE, tmp_path / "b", source=SOURCE)}
    assert first == second


def test_header_names_the_budget_file_relative_to_the_output_tree(tmp_path: Path):
    """Same header from any working directory or checkout path, so the drift check is stable."""
    (tmp_path / "examples").mkdir()
    shutil.copy(EXAMPLE, tmp_path / "examples" / "budgets.yaml")
    render_all(tmp_path / "examples" / "budgets.yaml", tmp_path)
    text = (tmp_path / "alertmanager" / "alertmanager.yml").read_text(encoding="utf-8")
    assert text.startswith(f"# {generated_header(SOURCE)}\n")


def test_drift_is_reported_with_the_fix(tmp_path: Path):
    render_all(EXAMPLE, tmp_path, source=SOURCE)
    edited = tmp_path / "alertmanager" / "alertmanager.yml"
    edited.write_text(
        edited.read_text(encoding="utf-8").replace("repeat_interval: 15m", "repeat_interval: 1m")
    )
    (tmp_path / "grafana" / "dashboards" / "otel-tokens-agent.json").unlink()

    problems = check_rendered(EXAMPLE, tmp_path, source=SOURCE)

    assert len(problems) == 2
    assert problems[0].startswith("alertmanager/alertmanager.yml: differs from `otel-tokens render examples/")
    assert "-    repeat_interval: 1m" in problems[0] and "+    repeat_interval: 15m" in problems[0]
    assert problems[1] == (
        "grafana/dashboards/otel-tokens-agent.json: missing; run `otel-tokens render examples/budgets.yaml`"
    )


def test_a_bad_budget_file_writes_nothing(tmp_path: Path):
    bad = tmp_path / "budgets.yaml"
    bad.write_text("budgets:\n  - {name: x, limit: {tokens: -5}, window: 1d}\n", encoding="utf-8")
    with pytest.raises(BudgetFileError):
        render_all(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()

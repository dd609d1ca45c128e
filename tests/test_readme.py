"""The README is for a newcomer: its budget example must be a valid budget file, and the commands it
names must exist."""

from __future__ import annotations

import re
from pathlib import Path

from otel_tokens.budgets.loader import load_budget_file
from otel_tokens.cli import _build_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_budget_example_is_a_valid_budget_file(tmp_path: Path):
    (example,) = [b for b in re.findall(r"```yaml\n(.*?)```", README, re.S) if "budgets:" in b]
    path = tmp_path / "budgets.yaml"
    path.write_text(example)
    spec = load_budget_file(path)
    assert spec.budgets[0].name == "support-daily"


def test_readme_names_the_two_commands_and_they_exist_in_the_makefile():
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test", "unit"):
        assert f"make {target}" in README
        assert re.search(rf"^{target}:", makefile, re.M), target
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_cli_subcommands_exist():
    shell = "\n".join(re.findall(r"```sh\n(.*?)```", README, re.S))
    subcommands = set(re.findall(r"^otel-tokens (\w+)", shell, re.M))
    assert {"collector", "render", "check"} <= subcommands
    parser_actions = _build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert subcommands <= set(parser_actions), subcommands - set(parser_actions)

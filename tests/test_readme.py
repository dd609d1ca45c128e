"""The README is for a newcomer: its budget example must be a valid budget file, the commands it
names must exist, and its quick start must work exactly as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from otel_tokens import metric_names as mn
from otel_tokens.budgets.loader import load_budget_file
from otel_tokens.cli import _build_parser
from otel_tokens.collector import CollectorConfig, CollectorService
from otel_tokens.demo.fake_provider import FakeProvider
from tests import prom_text
from tests.services import poll

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
    subcommands = set(re.findall(r"^otel-tokens ([\w-]+)", shell, re.M))
    assert {"collector", "render", "check", "fake-provider", "status"} <= subcommands
    parser_actions = _build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert subcommands <= set(parser_actions), subcommands - set(parser_actions)


def quick_start() -> str:
    """The Python block of 'Instrument an agent in one line', exactly as a reader copies it."""
    section = README.split("## Instrument an agent in one line", 1)[1].split("\n## ", 1)[0]
    (code,) = [
        b for b in re.findall(r"```python\n(.*?)```", section, re.S) if "otel_tokens.instrument()" in b
    ]
    return str(code)


def test_readme_quick_start_needs_no_exporter_setup():
    """The one line is the whole setup: no TracerProvider, exporter or processor in the snippet."""
    code = quick_start()
    assert "otel_tokens.instrument()" in code
    for setup in ("TracerProvider", "Exporter", "SpanProcessor", "set_tracer_provider"):
        assert setup not in code


@pytest.mark.integration
@pytest.mark.e2e
def test_readme_quick_start_runs_verbatim_and_its_tokens_reach_metrics(tmp_path: Path):
    """Run the snippet as `python agent.py` against the keyless fake provider and a real collector,
    configured only the way the README says (OPENAI_BASE_URL / OPENAI_API_KEY, and the standard
    OTEL_EXPORTER_OTLP_ENDPOINT because this test cannot own port 4318 on a shared machine)."""
    agent = tmp_path / "agent.py"
    agent.write_text(quick_start())
    with (
        FakeProvider() as fake,
        CollectorService(CollectorConfig(http_port=0, grpc_port=0, metrics_port=0)) as collector,
    ):
        env = {
            k: v for k, v in os.environ.items() if not k.startswith("OTEL_") or k.startswith("OTEL_TOKENS_")
        }
        env |= {
            "OPENAI_BASE_URL": fake.openai_base_url,
            "OPENAI_API_KEY": "any",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.http_port}",
        }
        run = subprocess.run(
            [sys.executable, str(agent)], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip(), "the snippet prints the reply"
        expected = fake.reported_totals("openai").total
        tokens = poll(
            lambda: prom_text.series(prom_text.scrape(collector.metrics_port), mn.TOKENS),
            lambda series: sum(series.values()) == expected > 0,
            what="the quick start's tokens on /metrics",
        )
    assert {dict(labels)[mn.AGENT] for labels in tokens} == {"support"}
    assert {dict(labels)[mn.TASK] for labels in tokens} == {"answer-ticket"}


def test_readme_documents_the_status_exit_codes_the_command_returns():
    from otel_tokens.budgets import cli as budgets_cli

    said = re.search(
        r"`otel-tokens status` exits \*\*(\d)\*\* when every budget is ok, \*\*(\d)\*\* when any is at its "
        r"warning threshold,\s+\*\*(\d)\*\* when any is exceeded and \*\*(\d)\*\* when it cannot read",
        README,
    )
    assert said, "README must document otel-tokens status exit codes"
    codes = (
        budgets_cli.EXIT_OK,
        budgets_cli.EXIT_WARNING,
        budgets_cli.EXIT_EXCEEDED,
        budgets_cli.EXIT_UNKNOWN,
    )
    assert tuple(int(c) for c in said.groups()) == codes
    assert budgets_cli.status_exit_code(["ok", "warning", "ok"]) == budgets_cli.EXIT_WARNING
    assert budgets_cli.status_exit_code(["warning", "exceeded"]) == budgets_cli.EXIT_EXCEEDED
    assert budgets_cli.status_exit_code(["ok"]) == budgets_cli.EXIT_OK


def test_readme_fake_provider_command_matches_the_cli():
    """The documented port is the command's default and the URLs are the ones it prints."""
    from otel_tokens.demo.fake_provider.command import banner

    assert "otel-tokens fake-provider --port 18080" in README
    args = _build_parser().parse_args(["fake-provider"])
    assert args.port == 18080
    with FakeProvider(port=0) as fake:
        printed = banner(fake)
    port = fake.url.rsplit(":", 1)[1]
    for documented in (
        "OPENAI_BASE_URL=http://127.0.0.1:18080/v1",
        "ANTHROPIC_BASE_URL=http://127.0.0.1:18080",
    ):
        assert documented in README
        assert documented.replace("18080", port) in printed

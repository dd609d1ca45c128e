"""The command line as a new user meets it: errors that help, help text that is true, exit codes a
script can gate on. Commands run as the user runs them (`python -m otel_tokens.cli ...` in a
subprocess) unless only their output matters; servers and tools are real."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anthropic
import openai
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

import otel_tokens
from otel_tokens.cli import main
from otel_tokens.collector import CollectorConfig, CollectorService
from otel_tokens.demo.fake_provider import FakeProvider
from tests.services import free_port, poll

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "budgets.yaml"
#: What a float printed raw looks like: 0.009011999999999997, 1.1999999999999999e-05.
RAW_FLOAT = re.compile(r"\d\.\d{7,}|\de-\d")


def cli(*args: str, timeout: float = 60, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otel_tokens.cli", *args],
        capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False,
    )  # fmt: skip


@contextmanager
def listening(port: int = 0) -> Iterator[int]:
    """Hold a port as another program would (listening), so ours finds it taken."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield int(sock.getsockname()[1])


# --- check -------------------------------------------------------------------------------------
def test_check_reports_every_error_at_once_including_downgrade_without_a_target(tmp_path: Path):
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text(
        textwrap.dedent(
            """
            budgets:
              - name: research-daily
                limit: {tokens: -5}
                window: fortnight
                action: downgrade
            """
        )
    )
    run = cli("check", str(budgets), "--out", str(tmp_path))
    assert run.returncode == 1
    assert f"{budgets}:4: budgets[0].limit.tokens: must be positive, got -5" in run.stderr
    assert f"{budgets}:5: budgets[0].window:" in run.stderr
    assert f"{budgets}:6: budgets[0].action: action 'downgrade' needs 'downgrade_to'" in run.stderr
    assert "3 problems" in run.stderr


def test_check_of_a_missing_file_says_file_not_found():
    run = cli("check", "nope.yaml")
    assert run.returncode == 1
    assert "nope.yaml: file not found" in run.stderr
    assert "nope.yaml:0" not in run.stderr and "Traceback" not in run.stderr


def test_check_with_rendered_files_missing_says_so_once_without_raw_tool_errors(tmp_path: Path):
    run = cli("check", str(EXAMPLE), "--out", str(tmp_path))
    assert run.returncode == 1
    output = run.stdout + run.stderr
    assert f"prometheus/rules/otel-tokens.rules.yml: missing; run `otel-tokens render {EXAMPLE}" in output
    assert "does not exist" not in output and "error: path" not in output  # promtool's / amtool's own
    assert "not run (the file is missing, see above)" in run.stdout


# --- help text says what the code does ---------------------------------------------------------
def test_render_out_defaults_to_the_current_directory_as_its_help_says(tmp_path: Path):
    assert "default: the current directory" in cli("render", "--help").stdout
    run = cli("render", str(EXAMPLE), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "prometheus" / "rules" / "otel-tokens.rules.yml").is_file()


def test_every_command_is_registered_in_one_parser():
    """`collector` used to bypass the parser; now `otel-tokens --help` lists every command and the
    collector's flags come through the same registration."""
    commands = cli("--help").stdout
    for name in ("collector", "demo", "fake-provider", "render", "check", "status"):
        assert re.search(rf"^\s+{name}\s", commands, re.M), name
    collector_help = cli("collector", "--help").stdout
    assert collector_help.startswith("usage: otel-tokens collector")
    assert "--http-port" in collector_help and "--budgets-file" in collector_help


# --- status exit codes -------------------------------------------------------------------------
@pytest.mark.integration
def test_status_exit_code_is_0_ok_1_warning_2_exceeded_3_unreadable(
    tmp_path: Path, fake_provider: FakeProvider, capsys: pytest.CaptureFixture[str]
):
    ask = [{"role": "user", "content": "How many tokens is this?"}]
    probe = openai.OpenAI(base_url=fake_provider.openai_base_url, api_key="k", max_retries=0)
    probe.chat.completions.create(model="gpt-4o-mini", messages=ask)  # uninstrumented: sizes one call
    per_call = fake_provider.reported_totals().total
    budgets = tmp_path / "budgets.yaml"
    # One call is 90% of the limit (warning at the default 80%), two calls exceed it.
    limit = round(per_call / 0.9)
    budgets.write_text(
        f"budgets:\n  - {{name: tight, scope: {{agent: gate}}, limit: {{tokens: {limit}}}, window: 1d}}\n"
        "  - {name: roomy, limit: {tokens: 1000000}, window: 1d}\n"
    )
    config = CollectorConfig(http_port=0, grpc_port=0, metrics_port=0, budgets_file=str(budgets))
    with CollectorService(config) as collector:
        url = f"http://127.0.0.1:{collector.metrics_port}"
        provider = TracerProvider()
        endpoint = f"http://127.0.0.1:{collector.http_port}/v1/traces"
        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        otel_tokens.instrument(tracer_provider=provider)
        try:
            codes = [main(["status", "--collector", url])]
            for expected_used in (per_call, 2 * per_call):
                with otel_tokens.attribute(agent="gate"):
                    probe.chat.completions.create(model="gpt-4o-mini", messages=ask)
                poll(lambda: collector.ledger.status()[0].used, lambda used, e=expected_used: used == e)
                codes.append(main(["status", "--collector", url]))
        finally:
            otel_tokens.uninstrument()
            provider.shutdown()
    assert codes == [0, 1, 2]
    table = capsys.readouterr().out
    assert "exceeded" in table and "warning" in table and "roomy" in table
    with listening() as closed_port:  # something listening that is not a collector
        pass
    assert main(["status", "--collector", f"http://127.0.0.1:{closed_port}"]) == 3


# --- demo ---------------------------------------------------------------------------------------
def demo_once(*extra: str) -> subprocess.CompletedProcess[str]:
    ports = ("--http-port", "0", "--grpc-port", "0", "--metrics-port", "0")
    return cli("demo", "--once", "--budgets", str(EXAMPLE), *ports, *extra, timeout=120)


@pytest.mark.integration
def test_demo_once_prints_every_budget_in_readable_money_and_says_the_collector_stopped():
    from otel_tokens.budgets.loader import load_budget_file

    run = demo_once()
    assert run.returncode == 0, run.stderr
    out = run.stdout
    # --once: nothing keeps serving, so no "Look at the counters: curl ..." pointing at a dead port.
    assert "curl" not in out
    assert "the demo's collector stops with it" in out
    # Every budget, as `otel-tokens status` shows them (not only those with use).
    for budget in load_budget_file(EXAMPLE).budgets:
        assert re.search(rf"^{re.escape(budget.name)}\s", out, re.M), budget.name
    assert not RAW_FLOAT.search(out), RAW_FLOAT.search(out)
    assert re.search(r"^support\s+[\d,]+\s+\$0\.\d+$", out, re.M), out  # cost as money


@pytest.mark.integration
@pytest.mark.parametrize(("flag", "what"), [("--http-port", "OTLP/HTTP"), ("--metrics-port", "/metrics")])
def test_demo_names_a_taken_port_and_the_flag_that_moves_it(flag: str, what: str):
    with listening() as taken:
        ports = {"--http-port": "0", "--grpc-port": "0", "--metrics-port": "0", flag: str(taken)}
        run = cli("demo", "--once", *[x for kv in ports.items() for x in kv])
    assert run.returncode == 1
    assert f"port {taken} ({what}) is already in use" in run.stderr
    assert f"move this one with {flag} N" in run.stderr
    assert "Traceback" not in run.stderr and "Errno" not in run.stderr


# --- fake-provider ------------------------------------------------------------------------------
@pytest.mark.integration
def test_fake_provider_command_serves_both_sdks_at_the_base_urls_it_prints():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "otel_tokens.cli", "fake-provider", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        banner = [proc.stdout.readline() for _ in range(4)]
        urls = dict(re.findall(r"(OPENAI|ANTHROPIC)_BASE_URL=(\S+)\)", "".join(banner)))
        assert urls == {"OPENAI": f"http://127.0.0.1:{port}/v1", "ANTHROPIC": f"http://127.0.0.1:{port}"}, (
            banner
        )
        chat = openai.OpenAI(base_url=urls["OPENAI"], api_key="any", max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        assert chat.usage is not None and chat.usage.total_tokens > 0
        message = anthropic.Anthropic(
            base_url=urls["ANTHROPIC"], api_key="any", max_retries=0
        ).messages.create(
            model="claude-sonnet-4-6", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        )
        assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "stopped" in out


@pytest.mark.integration
def test_fake_provider_on_a_taken_port_says_which_and_how_to_move_it():
    with listening() as taken:
        run = cli("fake-provider", "--port", str(taken), timeout=30)
    assert run.returncode == 1
    assert f"port {taken} on 127.0.0.1 is already in use; pick another with --port N" in run.stderr
    assert "Traceback" not in run.stderr


def test_fake_provider_history_is_bounded_when_asked():
    """The command runs for days: it keeps the last calls only (tests keep every call)."""
    with FakeProvider(max_history=2) as fake:
        client = openai.OpenAI(base_url=fake.openai_base_url, api_key="k", max_retries=0)
        for _ in range(5):
            client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
        assert len(fake.reported) == 2 and len(fake.requests) == 2


@pytest.mark.integration
@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ["--budgets", "nope.yaml"],
            "otel-tokens demo: 1 problem in budget file:\n  nope.yaml: file not found",
        ),
        (
            ["--alerts-listen", "nonsense"],
            "otel-tokens demo: --alerts-listen wants HOST:PORT, got 'nonsense'",
        ),
    ],
)
def test_demo_start_up_problems_are_one_clear_message(args: list[str], said: str):
    run = cli("demo", "--once", "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", *args)
    assert run.returncode == 1
    assert said in run.stderr and "Traceback" not in run.stderr

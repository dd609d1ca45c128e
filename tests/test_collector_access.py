"""Who gets in: the bearer token on every listener, TLS with the real exporters, IPv4-only 0.0.0.0,
and a taken port reported by number and flag.

The exporters are the real OTLP ones, configured as a user would (`headers=` is what
`OTEL_EXPORTER_OTLP_HEADERS` sets; `certificate_file=` / channel credentials carry the CA of a
self-signed certificate made here with the `openssl` command).
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace.export import SpanExportResult
from prometheus_client.parser import text_string_to_metric_families

from otel_tokens.collector import CollectorConfig, CollectorService
from otel_tokens.collector.config import KEYS
from tests.test_collector_service import PB, make_spans, post, wait_for

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token-for-agents"
METRICS_TOKEN = "read-only-scrape-token"
GOOD_BUDGETS = """
version: 1
budgets:
  - name: support-daily
    scope: {agent: support}
    limit: {tokens: 1000}
    window: 1d
"""


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def get(url: str, headers: dict[str, str] | None = None, context: ssl.SSLContext | None = None) -> int:
    """HTTP status of a GET (errors included)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5,
                                    context=context) as response:  # fmt: skip
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def tokens_counted(
    port: int, token: str, scheme: str = "http", context: ssl.SSLContext | None = None
) -> float:
    request = urllib.request.Request(f"{scheme}://127.0.0.1:{port}/metrics", headers=bearer(token))
    with urllib.request.urlopen(request, timeout=5, context=context) as response:
        text = response.read().decode()
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "llm_tokens_total"
    )


@pytest.fixture
def token_files(tmp_path: Path) -> tuple[Path, Path]:
    token, metrics_token = tmp_path / "token", tmp_path / "metrics-token"
    token.write_text(TOKEN + "\n")  # a trailing newline, as `echo` writes it, is not part of the token
    metrics_token.write_text(METRICS_TOKEN)
    return token, metrics_token


@pytest.fixture
def guarded(token_files: tuple[Path, Path], tmp_path: Path) -> Iterator[CollectorService]:
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text(GOOD_BUDGETS)
    config = CollectorConfig(
        http_port=0, grpc_port=0, metrics_port=0, dedupe_hold_seconds=0.05, flush_interval_seconds=0.02,
        auth_token_file=str(token_files[0]), metrics_auth_token_file=str(token_files[1]),
        budgets_file=str(budgets),
    )  # fmt: skip
    with CollectorService(config) as service:
        yield service


# --- the bearer token --------------------------------------------------------------------------------


def test_without_the_token_every_protected_endpoint_refuses_and_counts_nothing(guarded: CollectorService):
    http_url = f"http://127.0.0.1:{guarded.http_port}/v1/traces"
    for headers in ({}, bearer("wrong"), {"authorization": TOKEN}):  # none, wrong, scheme missing
        exporter = HttpExporter(endpoint=http_url, headers=headers, timeout=5)
        assert exporter.export(make_spans(2)) == SpanExportResult.FAILURE
        exporter.shutdown()
        grpc_exporter = GrpcExporter(endpoint=f"127.0.0.1:{guarded.grpc_port}", insecure=True,
                                     headers=headers, timeout=5)  # fmt: skip
        assert grpc_exporter.export(make_spans(2)) == SpanExportResult.FAILURE
        grpc_exporter.shutdown()
    status, _, _ = post(guarded, b"", PB)
    assert status == 401

    with grpc.insecure_channel(f"127.0.0.1:{guarded.grpc_port}") as channel:
        export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
        with pytest.raises(grpc.RpcError) as info:
            export(b"", timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED

    base = f"http://127.0.0.1:{guarded.metrics_port}"
    assert get(base + "/metrics") == 401
    assert get(base + "/metrics", bearer(TOKEN)) == 401  # /metrics has its own token here
    assert get(base + "/api/v1/budgets") == 401
    assert get(base + "/api/v1/budgets", bearer(METRICS_TOKEN)) == 401  # the scrape token cannot read the API
    assert get(base + "/healthz") == 200  # liveness probes carry no secret

    assert tokens_counted(guarded.metrics_port, METRICS_TOKEN) == 0
    assert guarded.ledger is not None and guarded.ledger.status()[0].used == 0


def test_with_the_token_counts_are_exact(guarded: CollectorService):
    http_exporter = HttpExporter(endpoint=f"http://127.0.0.1:{guarded.http_port}/v1/traces",
                                 headers=bearer(TOKEN), timeout=5)  # fmt: skip
    assert http_exporter.export(make_spans(3)) == SpanExportResult.SUCCESS
    http_exporter.shutdown()
    grpc_exporter = GrpcExporter(endpoint=f"127.0.0.1:{guarded.grpc_port}", insecure=True,
                                 headers=bearer(TOKEN), timeout=5)  # fmt: skip
    assert grpc_exporter.export(make_spans(2)) == SpanExportResult.SUCCESS
    grpc_exporter.shutdown()
    wait_for(lambda: tokens_counted(guarded.metrics_port, METRICS_TOKEN) >= 5 * 120)
    assert tokens_counted(guarded.metrics_port, METRICS_TOKEN) == 5 * 120
    assert get(f"http://127.0.0.1:{guarded.metrics_port}/api/v1/budgets", bearer(TOKEN)) == 200


def test_metrics_take_the_main_token_when_they_have_none_of_their_own(token_files: tuple[Path, Path]):
    config = CollectorConfig(
        http_port=0, grpc_enabled=False, metrics_port=0, auth_token_file=str(token_files[0])
    )
    with CollectorService(config) as service:
        url = f"http://127.0.0.1:{service.metrics_port}/metrics"
        assert (get(url), get(url, bearer(TOKEN))) == (401, 200)


def test_an_unreadable_or_empty_token_file_stops_start_up(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for path, message in ((tmp_path / "missing", "cannot read token file"), (empty, "must hold one token")):
        with pytest.raises(OSError, match=message) as info:
            CollectorService(
                CollectorConfig(http_port=0, grpc_port=0, metrics_port=0, auth_token_file=str(path))
            )
        assert "auth.token_file" in str(info.value)


# --- TLS -------------------------------------------------------------------------------------------


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl command missing: apt-get install openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def test_tls_on_every_listener_with_the_real_exporters(
    certificate: tuple[Path, Path], token_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
):
    # requests lets these variables override a session's CA file, i.e. the exporter's certificate_file
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    cert, key = certificate
    config = CollectorConfig(
        http_port=0, grpc_port=0, metrics_port=0, dedupe_hold_seconds=0.05, flush_interval_seconds=0.02,
        tls_cert_file=str(cert), tls_key_file=str(key), auth_token_file=str(token_files[0]),
    )  # fmt: skip
    with CollectorService(config) as service:
        url = f"https://127.0.0.1:{service.http_port}/v1/traces"
        http_exporter = HttpExporter(
            endpoint=url, certificate_file=str(cert), headers=bearer(TOKEN), timeout=5
        )
        assert http_exporter.export(make_spans(2)) == SpanExportResult.SUCCESS
        http_exporter.shutdown()
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        grpc_exporter = GrpcExporter(endpoint=f"127.0.0.1:{service.grpc_port}", credentials=credentials,
                                     headers=bearer(TOKEN), timeout=5)  # fmt: skip
        assert grpc_exporter.export(make_spans(1)) == SpanExportResult.SUCCESS
        grpc_exporter.shutdown()

        context = ssl.create_default_context(cafile=str(cert))
        wait_for(lambda: tokens_counted(service.metrics_port, TOKEN, "https", context) >= 3 * 120)
        assert tokens_counted(service.metrics_port, TOKEN, "https", context) == 3 * 120
        assert "https://" in service.endpoints()[0]
        # plain text to a TLS listener gets nowhere and counts nothing
        plain = HttpExporter(endpoint=f"http://127.0.0.1:{service.http_port}/v1/traces",
                             headers=bearer(TOKEN), timeout=5)  # fmt: skip
        assert plain.export(make_spans(1)) == SpanExportResult.FAILURE
        plain.shutdown()
        assert tokens_counted(service.metrics_port, TOKEN, "https", context) == 3 * 120


def test_tls_needs_both_files():
    from otel_tokens.collector.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"tls\.cert_file and tls\.key_file: set both or neither"):
        load_config(cli={"tls_cert_file": "cert.pem"}, env={})


# --- where it listens --------------------------------------------------------------------------------


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this host")
def test_0_0_0_0_means_ipv4_only_on_every_listener():
    config = CollectorConfig(http_host="0.0.0.0", grpc_host="0.0.0.0", metrics_host="0.0.0.0",
                             http_port=0, grpc_port=0, metrics_port=0)  # fmt: skip
    with CollectorService(config) as service:
        for port in (service.http_port, service.grpc_port, service.metrics_port):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("::1", port), timeout=5)


def _run_collector(*args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from otel_tokens.collector import main; sys.exit(main(sys.argv[1:]))"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_TOKENS_COLLECTOR_")}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                          timeout=60)  # fmt: skip


def test_a_taken_port_names_the_port_and_the_flag_for_every_listener():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        free = ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
        for flag in ("--http-port", "--grpc-port", "--metrics-port"):
            args = [*free]
            args[args.index(flag) + 1] = port
            run = _run_collector(*args)
            assert run.returncode == 1, run.stderr
            assert f"port {port} is already in use" in run.stderr and flag in run.stderr, run.stderr
            assert "Traceback" not in run.stderr


def test_help_shows_every_default():
    run = subprocess.run([sys.executable, "-m", "otel_tokens.cli", "collector", "--help"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stderr
    text = " ".join(run.stdout.split())  # argparse wraps lines
    for key in KEYS:
        assert key.flag in text
    for shown in ("(default: 127.0.0.1;", "(default: 4318;", "(default: 4317;", "(default: 9464;",
                  "(default: 8388608;", "(default: true;", "(default: unset;", "(default: 30.0;",
                  "(default: 256;", "(default: [agent, task, model, provider];"):  # fmt: skip
        assert shown in text, shown
    assert text.count("(default:") == len(KEYS)


# --- Prometheus with the rendered scrape job ------------------------------------------------------


@pytest.mark.integration
def test_prometheus_scrapes_a_token_guarded_collector_with_the_rendered_job(
    guarded: CollectorService, token_files: tuple[Path, Path], tmp_path: Path
):
    import yaml

    from otel_tokens.budgets.render_prometheus import render_prometheus_config
    from tests.services import poll, run_prometheus

    exporter = HttpExporter(endpoint=f"http://127.0.0.1:{guarded.http_port}/v1/traces",
                            headers=bearer(TOKEN), timeout=5)  # fmt: skip
    assert exporter.export(make_spans(3)) == SpanExportResult.SUCCESS
    exporter.shutdown()
    target = [f"127.0.0.1:{guarded.metrics_port}"]
    (tmp_path / "with").mkdir()
    (tmp_path / "without").mkdir()

    def rendered_job(token_file: str | None) -> dict[str, object]:
        config = yaml.safe_load(render_prometheus_config(scrape_token_file=token_file))
        return config["scrape_configs"][0]  # type: ignore[no-any-return]

    with run_prometheus(tmp_path / "with", target, job=rendered_job(str(token_files[1]))) as prom:
        total = poll(lambda: prom.scalar("sum(llm_tokens_total)"), lambda v: v == 3 * 120, what="tokens")
        assert total == 3 * 120
    with run_prometheus(tmp_path / "without", target, job=rendered_job(None)) as prom:
        up = poll(lambda: prom.scalar("up"), lambda v: v is not None, what="a scrape")
        assert up == 0  # refused: the collector wants the token
        assert prom.scalar("sum(llm_tokens_total)") is None


# --- the operator commands against a guarded collector ---------------------------------------------


def test_status_and_usage_send_the_token_and_say_when_it_is_missing(
    guarded: CollectorService, token_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
):  # fmt: skip
    import json

    from otel_tokens.cli import main

    exporter = HttpExporter(endpoint=f"http://127.0.0.1:{guarded.http_port}/v1/traces",
                            headers=bearer(TOKEN), timeout=5)  # fmt: skip
    assert exporter.export(make_spans(2)) == SpanExportResult.SUCCESS
    exporter.shutdown()
    url = f"http://127.0.0.1:{guarded.metrics_port}"
    wait_for(lambda: tokens_counted(guarded.metrics_port, METRICS_TOKEN) >= 2 * 120)
    monkeypatch.delenv("OTEL_TOKENS_COLLECTOR_AUTH_TOKEN_FILE", raising=False)

    monkeypatch.delenv("OTEL_TOKENS_COLLECTOR_METRICS_AUTH_TOKEN_FILE", raising=False)
    assert main(["status", "--collector", url, "--json"]) == 3  # refused: no token
    said = capsys.readouterr().err
    assert "HTTP 401" in said and "--token-file" in said

    assert main(["status", "--collector", url, "--token-file", str(token_files[0]), "--json"]) == 0
    standing = json.loads(capsys.readouterr().out)
    assert [b["name"] for b in standing["budgets"]] == ["support-daily"]
    assert standing["budgets"][0]["used"] == 2 * 120

    # from the environment that set up the collector: /metrics with its own token
    monkeypatch.setenv("OTEL_TOKENS_COLLECTOR_AUTH_TOKEN_FILE", str(token_files[0]))
    monkeypatch.setenv("OTEL_TOKENS_COLLECTOR_METRICS_AUTH_TOKEN_FILE", str(token_files[1]))
    assert main(["usage", "--collector", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"]["total_tokens"] == 2 * 120

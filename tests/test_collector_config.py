"""Collector configuration: one table, one precedence (flag > env > file > default), every error at once."""

from __future__ import annotations

import dataclasses
import os
import textwrap
from pathlib import Path

import pytest

from otel_tokens import settings
from otel_tokens.collector import main, parse_config
from otel_tokens.collector.config import KEYS, CollectorConfig, ConfigError, load_config, reference_table

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


def test_zero_configuration_listens_on_loopback_standard_ports():
    config = load_config(env={})
    assert config == CollectorConfig()
    assert (config.http_host, config.http_port) == ("127.0.0.1", 4318)
    assert (config.grpc_host, config.grpc_port, config.grpc_enabled) == ("127.0.0.1", 4317, True)
    assert (config.metrics_host, config.metrics_port) == ("127.0.0.1", 9464)
    assert config.max_body_bytes == 8 * 1024 * 1024


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path):
    path = write(
        tmp_path,
        """
        otlp:
          http: {port: 1111}
          grpc: {port: 3333}
        metrics: {port: 2222, max_series: 7}
        """,
    )
    env = {settings.ENV_COLLECTOR_HTTP_PORT: "4444", settings.ENV_COLLECTOR_METRICS_PORT: "5555"}
    config = load_config(cli={"config": path, "http_port": "6666"}, env=env)
    assert config.http_port == 6666  # flag
    assert config.metrics_port == 5555  # env beats file
    assert (config.grpc_port, config.max_series_per_metric) == (3333, 7)  # file beats default
    assert config.max_body_bytes == CollectorConfig().max_body_bytes  # default


def test_config_file_from_env_and_flag_wins(tmp_path: Path):
    from_env = write(tmp_path, "otlp: {http: {port: 1001}}\n")
    from_flag = tmp_path / "other.yaml"
    from_flag.write_text("otlp: {http: {port: 1002}}\n")
    env = {settings.ENV_COLLECTOR_CONFIG: from_env}
    assert load_config(env=env).http_port == 1001
    assert load_config(cli={"config": str(from_flag)}, env=env).http_port == 1002


def test_cli_flags_parse_through_the_same_table(monkeypatch: pytest.MonkeyPatch):
    for key in KEYS:
        monkeypatch.delenv(key.env, raising=False)
    monkeypatch.delenv(settings.ENV_COLLECTOR_CONFIG, raising=False)
    config = parse_config(["--no-grpc", "--dimensions", "agent,model", "--dedupe-hold-seconds", "0"])
    assert config.grpc_enabled is False
    assert config.dimensions == ("agent", "model")
    assert config.dedupe_hold_seconds == 0
    assert config.metrics_config().dimensions == ("agent", "model")


def test_every_error_is_reported_at_once_with_file_lines(tmp_path: Path):
    path = write(
        tmp_path,
        """
        otlp:
          http:
            port: 70000
            hots: 0.0.0.0
          max_body_bytes: lots
        metrics:
          max_series: -5
          dimensions: [agent, task_id]
          flush_interval_seconds: 0
        extra: 1
        """,
    )
    env = {settings.ENV_COLLECTOR_GRPC_ENABLED: "maybe"}
    with pytest.raises(ConfigError) as info:
        load_config(cli={"config": path, "metrics_port": "x"}, env=env)
    assert info.value.errors == [
        f"{path}:3: otlp.http.port: expected a port number from 0 to 65535, got 70000",
        f"{path}:4: otlp.http.hots: unknown key (did you mean 'host'? known here: host, port)",
        f"{path}:5: otlp.max_body_bytes: expected a positive integer, got 'lots'",
        f"{path}:7: metrics.max_series: expected a positive integer, got -5",
        f"{path}:8: metrics.dimensions: expected a list of distinct names from {_allowed()}, "
        "got ['agent', 'task_id']",
        f"{path}:9: metrics.flush_interval_seconds: expected a positive number, got 0",
        f"{path}:10: extra: unknown key "
        "(known here: auth, budgets_file, data_dir, metrics, otlp, server, tls)",
        "environment OTEL_TOKENS_COLLECTOR_GRPC_ENABLED: otlp.grpc.enabled: "
        "expected true or false, got 'maybe'",
        "--metrics-port: metrics.port: expected a port number from 0 to 65535, got 'x'",
    ]
    assert str(info.value).startswith("invalid collector configuration:\n  ")


def _allowed() -> str:
    from otel_tokens.aggregate import ALLOWED_DIMENSIONS

    return ", ".join(sorted(ALLOWED_DIMENSIONS))


def test_unknown_and_duplicate_keys_are_rejected(tmp_path: Path):
    path = write(tmp_path, "metrics:\n  max_serie: 5\n  port: 1\n  port: 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(path=path, env={})
    assert info.value.errors[0].startswith(
        f"{path}:2: metrics.max_serie: unknown key (did you mean 'max_series'?"
    )
    assert info.value.errors[1] == f"{path}:4: metrics.port: duplicate key"


def test_yaml_syntax_error_and_missing_file_and_wrong_shape(tmp_path: Path):
    bad = write(tmp_path, "otlp:\n  http: [\n")
    with pytest.raises(ConfigError, match=r"config\.yaml:3: not valid YAML"):
        load_config(path=bad, env={})
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read config file"):
        load_config(path=str(tmp_path / "nope.yaml"), env={})
    with pytest.raises(ConfigError, match=r"config\.yaml:1: otlp: expected a mapping of keys"):
        load_config(path=write(tmp_path, "otlp: 5\n"), env={})


def test_empty_file_means_defaults(tmp_path: Path):
    assert load_config(path=write(tmp_path, "# nothing\n"), env={}) == CollectorConfig()


def test_clashing_ports_are_reported(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"otlp\.http\.port and metrics\.port: both set to port 9000"):
        load_config(cli={"http_port": "9000", "metrics_port": "9000"}, env={})
    # port 0 (ephemeral) never clashes
    assert load_config(cli={"http_port": "0", "metrics_port": "0", "grpc_port": "0"}, env={}).http_port == 0


def test_main_exits_2_listing_errors(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(settings.ENV_COLLECTOR_MAX_SERIES, "-1")
    assert main(["--http-port", "-3"]) == 2
    err = capsys.readouterr().err
    assert (
        "environment OTEL_TOKENS_COLLECTOR_MAX_SERIES: metrics.max_series: expected a positive integer" in err
    )
    assert "--http-port: otlp.http.port: expected a port number from 0 to 65535, got -3" in err


def test_table_covers_every_field_and_env_constant():
    assert sorted(k.attr for k in KEYS) == sorted(f.name for f in dataclasses.fields(CollectorConfig))
    declared = {v for k, v in vars(settings).items() if k.startswith("ENV_COLLECTOR_")}
    assert {k.env for k in KEYS} | {settings.ENV_COLLECTOR_CONFIG} == declared
    assert all(k.env.startswith("OTEL_TOKENS_COLLECTOR_") for k in KEYS)


def test_readme_documents_every_key_in_one_table():
    readme = (ROOT / "collector" / "README.md").read_text()
    assert reference_table() in readme, "collector/README.md drifted: paste config.reference_table()"


def test_shipped_config_is_valid_documents_every_key_and_binds_all_interfaces():
    path = str(ROOT / "collector" / "config.yaml")
    config = load_config(path=path, env={})
    assert (config.http_host, config.grpc_host, config.metrics_host) == ("0.0.0.0",) * 3
    assert config.data_dir == "/var/lib/otel-tokens"  # the container keeps its state (a volume)
    others = dataclasses.replace(
        config, http_host="127.0.0.1", grpc_host="127.0.0.1", metrics_host="127.0.0.1", data_dir=None
    )
    assert others == CollectorConfig()  # the file shows the defaults, it does not change them
    text = Path(path).read_text()
    assert all(k.path.rsplit(".", 1)[-1] + ":" in text for k in KEYS)


def test_workers_flag_env_and_file_in_one_precedence_and_zero_means_one_per_core(tmp_path: Path):
    path = write(tmp_path, "server: {workers: 3}\n")
    env = {settings.ENV_COLLECTOR_WORKERS: "2"}
    assert load_config(path=path, env={}).workers == 3
    assert load_config(path=path, env=env).workers == 2
    assert load_config(cli={"workers": "1"}, path=path, env=env).workers == 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert CollectorConfig().workers == 1  # the default: one process (2 workers were slower on 2 cores)
    assert CollectorConfig().resolved_workers() == 1
    assert CollectorConfig(workers=0).resolved_workers() == cores
    assert CollectorConfig(workers=1).resolved_workers() == 1  # the single-process collector
    expected = r"OTEL_TOKENS_COLLECTOR_WORKERS: server\.workers: expected an integer >= 0, got -1"
    with pytest.raises(ConfigError, match=expected):
        load_config(env={settings.ENV_COLLECTOR_WORKERS: "-1"})

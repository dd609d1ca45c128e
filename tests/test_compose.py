"""`docker-compose.yml`: valid for the compose spec and for Debian's docker-compose, and wired to
the files the renderers write — no Docker engine is needed (none can run here).

A stack that validates but mounts a file that does not exist, or mounts it where the generated
config does not look, fails only at `docker compose up`; these tests catch that at review time.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from otel_tokens.budgets.render_alertmanager import TEMPLATE_GLOB
from otel_tokens.budgets.render_grafana import DASHBOARDS_DIR

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
CHECK_JSONSCHEMA = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent)) or shutil.which(
    "check-jsonschema"
)
DOCKER_COMPOSE = shutil.which("docker-compose")

EXPECTED_PORTS = {
    "collector": {"4317:4317", "4318:4318", "9464:9464"},
    "prometheus": {"9090:9090"},
    "alertmanager": {"9093:9093"},
    "grafana": {"3000:3000"},
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path → host path (resolved in the repository) of every bind mount."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):  # a named volume (the collector's data) is no bind mount
            out[target] = (ROOT / source).resolve()
    return out


@pytest.mark.skipif(CHECK_JSONSCHEMA is None, reason="check-jsonschema missing: pip install check-jsonschema")
def test_valid_against_the_compose_specification():
    assert CHECK_JSONSCHEMA is not None
    command = [CHECK_JSONSCHEMA, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(DOCKER_COMPOSE is None, reason="docker-compose missing: apt-get install docker-compose")
def test_debian_docker_compose_accepts_it():
    assert DOCKER_COMPOSE is not None
    command = [DOCKER_COMPOSE, "-f", str(COMPOSE), "config", "-q"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_services_and_their_documented_ports(compose: dict[str, Any]):
    services = compose["services"]
    assert set(services) == {*EXPECTED_PORTS, "demo-agent"}
    for name, ports in EXPECTED_PORTS.items():
        assert set(services[name]["ports"]) == ports, name


def test_collector_and_demo_agent_build_from_the_collector_dockerfile(compose: dict[str, Any]):
    for name in ("collector", "demo-agent"):
        build = compose["services"][name]["build"]
        assert (ROOT / build["context"] / build["dockerfile"]).is_file()
    command = compose["services"]["demo-agent"]["entrypoint"]
    assert command[:2] == ["otel-tokens", "demo"]
    assert command[command.index("--collector") + 1] == "http://collector:4318"


def test_every_mounted_file_exists_in_the_repository(compose: dict[str, Any]):
    missing = [
        f"{name}: {source.relative_to(ROOT)}"
        for name, service in compose["services"].items()
        for source in mounts(service).values()
        if not source.exists()
    ]
    assert not missing, f"missing (run `otel-tokens render examples/budgets.yaml`): {missing}"


def test_mounts_land_where_the_generated_configs_look(compose: dict[str, Any]):
    services = compose["services"]
    grafana = mounts(services["grafana"])
    assert grafana[DASHBOARDS_DIR] == ROOT / "grafana" / "dashboards"
    assert (
        grafana["/etc/grafana/provisioning/datasources"] == ROOT / "grafana" / "provisioning" / "datasources"
    )

    alertmanager = mounts(services["alertmanager"])
    config_flag = next(a for a in services["alertmanager"]["command"] if a.startswith("--config.file="))
    config = Path(config_flag.split("=", 1)[1])
    assert alertmanager[str(config)] == ROOT / "alertmanager" / "alertmanager.yml"
    # The template glob is relative to the config file: the templates folder must sit beside it.
    assert (
        alertmanager[str(config.parent / Path(TEMPLATE_GLOB).parent)] == ROOT / "alertmanager" / "templates"
    )

    prometheus = mounts(services["prometheus"])
    prometheus_config = yaml.safe_load(
        prometheus["/etc/prometheus/prometheus.yml"].read_text(encoding="utf-8")
    )
    for rule_glob in prometheus_config["rule_files"]:
        assert prometheus[str(Path(rule_glob).parent)] == ROOT / "prometheus" / "rules"


def test_prometheus_scrapes_and_alerts_the_compose_services(compose: dict[str, Any]):
    prometheus = mounts(compose["services"]["prometheus"])
    config = yaml.safe_load(prometheus["/etc/prometheus/prometheus.yml"].read_text(encoding="utf-8"))
    scrape = {t for job in config["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    alerting = {
        t for am in config["alerting"]["alertmanagers"] for c in am["static_configs"] for t in c["targets"]
    }
    assert scrape == {"collector:9464"}
    assert alerting == {"alertmanager:9093"}


def test_alert_webhooks_point_at_a_compose_service(compose: dict[str, Any]):
    """The example's receivers post inside the compose network; their hosts must be services."""
    alertmanager = mounts(compose["services"]["alertmanager"])
    config = yaml.safe_load(alertmanager["/etc/alertmanager/alertmanager.yml"].read_text(encoding="utf-8"))
    hosts = {urlparse(w["url"]).hostname for r in config["receivers"] for w in r.get("webhook_configs", [])}
    assert hosts and hosts <= set(compose["services"])

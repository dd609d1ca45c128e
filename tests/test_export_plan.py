"""What `instrument()` sets up when the application configured no TracerProvider, read from the
standard OTEL_* variables as the OpenTelemetry SDK reads them (pure: no provider is touched; the
end-to-end runs are in test_zero_code.py and test_readme.py)."""

from __future__ import annotations

import pytest

from otel_tokens.instrumentation._export import ExportPlan, plan_export


@pytest.mark.parametrize(
    ("env", "protocol", "endpoint"),
    [
        ({}, "http/protobuf", "http://127.0.0.1:4318/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"}, "http/protobuf", "http://collector:4318/v1/traces"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:1", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://b:2/x"},
            "http/protobuf",
            "http://b:2/x",  # the signal-specific endpoint is used as is
        ),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "grpc", "http://127.0.0.1:4317"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, "grpc", "http://c:4317"),
        (
            {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"},
            "http/protobuf",
            "http://127.0.0.1:4318/v1/traces",
        ),
    ],
)  # fmt: skip
def test_otlp_endpoint_and_protocol_follow_the_standard_variables(
    env: dict[str, str], protocol: str, endpoint: str
):
    assert plan_export(env) == ExportPlan(exporters=("otlp",), protocol=protocol, endpoint=endpoint)


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"OTEL_TRACES_EXPORTER": "none"}, "OTEL_TRACES_EXPORTER=none"),
        ({"OTEL_SDK_DISABLED": "true"}, "OTEL_SDK_DISABLED=true"),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER=zipkin is not one instrument() sets up"),
    ],
)
def test_nothing_is_set_up_when_the_variables_say_so_or_ask_for_what_we_do_not_build(
    env: dict[str, str], reason: str
):
    plan = plan_export(env)
    assert plan.exporters == ()
    assert plan.reason.startswith(reason)


def test_console_and_otlp_together():
    assert plan_export({"OTEL_TRACES_EXPORTER": "otlp, console"}).exporters == ("otlp", "console")


def test_an_unsupported_protocol_falls_back_to_http_and_warns(caplog: pytest.LogCaptureFixture):
    plan = plan_export({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    assert plan.protocol == "http/protobuf"
    assert "'http/json' is not supported here" in caplog.text

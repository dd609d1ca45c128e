"""`alertmanager/alertmanager.yml` and its notification template, rendered from the budget file.

Routing is by the `severity` label every generated alert carries (P1 pages, P3 waits), grouped by
alert, budget and agent so one runaway agent is one notification, not one per series. A budget
that is exceeded silences its own warning through an inhibition rule: the warning says nothing the
page does not. `AlertmanagerOverrides` re-points every receiver at one webhook with short timers,
which is how the end-to-end test catches a real page in well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from otel_tokens import metric_names as mn
from otel_tokens.budgets.promql import eq, regex
from otel_tokens.budgets.spec import (
    Alerting,
    BudgetFile,
    EmailConfig,
    PagerDutyConfig,
    Receiver,
    Route,
    SlackConfig,
    WebhookConfig,
)

__all__ = [
    "DEFAULT_RECEIVER",
    "TEMPLATE_GLOB",
    "AlertmanagerOverrides",
    "alertmanager_config",
    "alertmanager_yaml",
    "notification_template",
]

#: Relative to alertmanager.yml: Alertmanager resolves it against the config file's directory, so
#: the same file works in the repository (amtool) and mounted in the container.
TEMPLATE_GLOB = "templates/*.tmpl"
#: Receiver used when the budget file has no `alerting` section: alerts are kept, sent nowhere.
DEFAULT_RECEIVER = "otel-tokens-null"
#: The label Prometheus puts the alert's name in.
ALERTNAME = "alertname"
#: The exceeded alert inhibits these for the same budget: once over, "nearly over" is noise.
INHIBITED_BY_EXCEEDED = ("BudgetWarning", "BudgetForecast")


_NULL_ALERTING = Alerting(default_receiver=DEFAULT_RECEIVER, receivers=[Receiver(name=DEFAULT_RECEIVER)])


@dataclass(frozen=True)
class AlertmanagerOverrides:
    """Deployment-time changes to the rendered config (tests, local demos).

    `webhook_url` replaces every receiver's integrations with one webhook, keeping receiver names so
    routing is exercised unchanged; the timers replace the file's on the root and every route.
    """

    webhook_url: str | None = None
    group_wait: str | None = None
    group_interval: str | None = None
    repeat_interval: str | None = None


def alertmanager_yaml(spec: BudgetFile, header: str, overrides: AlertmanagerOverrides | None = None) -> str:
    """The config file text: a comment header, then YAML in a fixed key order."""
    body = yaml.safe_dump(alertmanager_config(spec, overrides), sort_keys=False, width=1000)
    return f"# {header}\n{body}"


def alertmanager_config(spec: BudgetFile, overrides: AlertmanagerOverrides | None = None) -> dict[str, Any]:
    """The config as data, in Alertmanager's own key names and order."""
    o = overrides or AlertmanagerOverrides()
    alerting = spec.alerting or Alerting(
        default_receiver=DEFAULT_RECEIVER, receivers=[Receiver(name=DEFAULT_RECEIVER)]
    )
    return {
        "templates": [TEMPLATE_GLOB],
        "route": _root_route(alerting, o),
        "inhibit_rules": [
            {
                "source_matchers": [str(eq(ALERTNAME, "BudgetExceeded"))],
                "target_matchers": [str(regex(ALERTNAME, "|".join(INHIBITED_BY_EXCEEDED)))],
                "equal": [mn.BUDGET],
            }
        ],
        "receivers": [_receiver(r, o.webhook_url) for r in alerting.receivers],
    }


def _root_route(alerting: Alerting, o: AlertmanagerOverrides) -> dict[str, Any]:
    return {
        "receiver": alerting.default_receiver,
        "group_by": list(alerting.group_by),
        "group_wait": o.group_wait or alerting.group_wait,
        "group_interval": o.group_interval or alerting.group_interval,
        "repeat_interval": o.repeat_interval or alerting.repeat_interval,
        # Severity order, so a reader sees the page route first whatever order the file used.
        "routes": [_severity_route(r, o) for r in sorted(alerting.routes, key=lambda r: r.severity)],
    }


def _severity_route(route: Route, o: AlertmanagerOverrides) -> dict[str, Any]:
    out: dict[str, Any] = {"receiver": route.receiver, "matchers": [str(eq(mn.SEVERITY, route.severity))]}
    group_wait = o.group_wait or route.group_wait
    group_interval = o.group_interval or route.group_interval
    if group_wait:
        out["group_wait"] = group_wait
    if group_interval:
        out["group_interval"] = group_interval
    out["repeat_interval"] = o.repeat_interval or route.repeat_interval
    return out


def _receiver(receiver: Receiver, webhook_url: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": receiver.name}
    if webhook_url is not None:
        out["webhook_configs"] = [{"url": webhook_url, "send_resolved": True}]
        return out
    if receiver.webhook_configs:
        out["webhook_configs"] = [_webhook(c) for c in receiver.webhook_configs]
    if receiver.slack_configs:
        out["slack_configs"] = [_slack(c) for c in receiver.slack_configs]
    if receiver.email_configs:
        out["email_configs"] = [_email(c) for c in receiver.email_configs]
    if receiver.pagerduty_configs:
        out["pagerduty_configs"] = [_pagerduty(c) for c in receiver.pagerduty_configs]
    return out


def _set(**fields: Any) -> dict[str, Any]:
    """Only the fields the budget file set: Alertmanager's defaults stay Alertmanager's."""
    return {k: v for k, v in fields.items() if v is not None}


def _webhook(c: WebhookConfig) -> dict[str, Any]:
    # The webhook payload is JSON with every label and annotation; it needs no template.
    return _set(url=c.url, send_resolved=c.send_resolved, max_alerts=c.max_alerts or None)


def _slack(c: SlackConfig) -> dict[str, Any]:
    return _set(
        api_url=c.api_url,
        api_url_file=c.api_url_file,
        channel=c.channel,
        send_resolved=c.send_resolved,
        title='{{ template "otel_tokens.title" . }}',
        title_link='{{ template "otel_tokens.dashboard" . }}',
        text='{{ template "otel_tokens.text" . }}',
    )


def _email(c: EmailConfig) -> dict[str, Any]:
    out = _set(
        to=c.to,
        send_resolved=c.send_resolved,
        smarthost=c.smarthost,
        auth_username=c.auth_username,
        auth_password_file=c.auth_password_file,
        require_tls=c.require_tls,
        headers={"Subject": '{{ template "otel_tokens.title" . }}'},
        text='{{ template "otel_tokens.text" . }}',
    )
    if c.from_ is not None:
        out["from"] = c.from_
    return out


def _pagerduty(c: PagerDutyConfig) -> dict[str, Any]:
    return _set(
        routing_key=c.routing_key,
        routing_key_file=c.routing_key_file,
        service_key=c.service_key,
        service_key_file=c.service_key_file,
        url=c.url,
        send_resolved=c.send_resolved,
        description='{{ template "otel_tokens.title" . }}',
        client="otel-tokens",
        client_url='{{ template "otel_tokens.dashboard" . }}',
    )


def notification_template(header: str, dashboard_url: str | None) -> str:
    """Go templates shared by every integration: the numbers an on-call engineer acts on.

    They read the annotations the generated rules attach (used, limit, percent, window, dashboard);
    `with` guards keep alerts without them (spike, context growth) readable instead of "<no value>".
    """
    fallback = dashboard_url or ""
    return (
        f"{{{{/* {header} */}}}}\n"
        '{{ define "otel_tokens.title" -}}\n'
        '[{{ .Status | toUpper }}{{ if eq .Status "firing" }}:{{ .Alerts.Firing | len }}{{ end }}]'
        " {{ .CommonLabels.severity }} {{ .CommonLabels.alertname }}"
        "{{ with .CommonLabels.budget }} budget={{ . }}{{ end }}"
        "{{ with .CommonLabels.agent }} agent={{ . }}{{ end }}\n"
        "{{- end }}\n\n"
        '{{ define "otel_tokens.dashboard" -}}\n'
        "{{ with .CommonAnnotations.dashboard }}{{ . }}{{ else }}" + fallback + "{{ end }}\n"
        "{{- end }}\n\n"
        '{{ define "otel_tokens.alert" -}}\n'
        "{{ .Labels.alertname }} ({{ .Labels.severity }})"
        "{{ with .Labels.budget }} budget {{ . }}{{ end }}"
        "{{ with .Labels.agent }} agent {{ . }}{{ end }}"
        "{{ with .Labels.task }} task {{ . }}{{ end }}\n"
        "{{ with .Annotations.summary }}{{ . }}\n{{ end }}"
        "{{ with .Annotations.used }}used {{ . }}{{ end }}"
        "{{ with .Annotations.limit }} of limit {{ . }}{{ end }}"
        "{{ with .Annotations.percent }} ({{ . }}){{ end }}"
        "{{ with .Annotations.window }} over {{ . }}{{ end }}\n"
        "{{ with .Annotations.description }}{{ . }}\n{{ end }}"
        "{{ with .Annotations.dashboard }}dashboard: {{ . }}\n{{ end }}"
        "{{- end }}\n\n"
        '{{ define "otel_tokens.text" -}}\n'
        '{{ range .Alerts.Firing }}{{ template "otel_tokens.alert" . }}\n{{ end }}'
        "{{ if .Alerts.Resolved }}Resolved:\n"
        '{{ range .Alerts.Resolved }}{{ template "otel_tokens.alert" . }}\n{{ end }}{{ end }}'
        "{{- end }}\n"
    )

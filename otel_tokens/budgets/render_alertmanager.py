"""`alertmanager/alertmanager.yml` and its notification template, rendered from the budget file.

Routing is by the `severity` label every generated alert carries (P1 pages, P3 waits), grouped by
alert, budget and agent so one runaway agent is one notification, not one per series. A budget
that is exceeded silences its own warning through an inhibition rule: the warning says nothing the
page does not. `AlertmanagerOverrides` re-points every receiver at one webhook with short timers,
which is how the end-to-end test catches a real page in well under a second.

Alerts that act: with `alerting.collector_url` set, a first route sends every alert carrying an
`action` label (`kill_agent_task`, `pause_all_noncritical_agents`, and the older
`pause_noncritical`) to the collector's webhook
(`/api/v1/alerts`, resolved notifications included, so a resolved alert lifts its stop order),
ungrouped and at once, then `continue`s so the people's routes page as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from otel_tokens import metric_names as mn
from otel_tokens.budgets import gotemplate as t
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
    "COLLECTOR_RECEIVER",
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
#: The receiver posting alerts that act to the collector (`alerting.collector_url`).
COLLECTOR_RECEIVER = "otel-tokens-collector"
#: The collector's Alertmanager webhook path (`otel_tokens.collector.api_guard.ALERTS_PATH`).
COLLECTOR_ALERTS_PATH = "/api/v1/alerts"
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
    #: replaces `alerting.collector_url` (the collector's receiver is not re-pointed by `webhook_url`)
    collector_url: str | None = None
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
        "receivers": [_receiver(r, o.webhook_url) for r in alerting.receivers]
        + _collector_receiver(alerting, o),
    }


def _collector_url(alerting: Alerting, o: AlertmanagerOverrides) -> str | None:
    return o.collector_url or alerting.collector_url


def _collector_route(alerting: Alerting, o: AlertmanagerOverrides) -> list[dict[str, Any]]:
    """Alerts that act go to the collector first, one notification per alert, at once; `continue`
    lets the severity routes page people too."""
    if _collector_url(alerting, o) is None:
        return []
    acts = "|".join(mn.STOP_ACTIONS)
    return [
        {
            "receiver": COLLECTOR_RECEIVER,
            "matchers": [str(regex(mn.ACTION, acts))],
            "group_by": ["..."],
            "group_wait": "0s",
            "group_interval": o.group_interval or "10s",
            # re-sent while firing, so a restarted collector learns its orders again
            "repeat_interval": "5m",
            "continue": True,
        }
    ]


def _collector_receiver(alerting: Alerting, o: AlertmanagerOverrides) -> list[dict[str, Any]]:
    url = _collector_url(alerting, o)
    if url is None:
        return []
    webhook: dict[str, Any] = {"url": url.rstrip("/") + COLLECTOR_ALERTS_PATH, "send_resolved": True}
    if alerting.collector_credentials_file:
        webhook["http_config"] = {"authorization": {"credentials_file": alerting.collector_credentials_file}}
    return [{"name": COLLECTOR_RECEIVER, "webhook_configs": [webhook]}]


def _root_route(alerting: Alerting, o: AlertmanagerOverrides) -> dict[str, Any]:
    return {
        "receiver": alerting.default_receiver,
        "group_by": list(alerting.group_by),
        "group_wait": o.group_wait or alerting.group_wait,
        "group_interval": o.group_interval or alerting.group_interval,
        "repeat_interval": o.repeat_interval or alerting.repeat_interval,
        # Severity order, so a reader sees the page route first whatever order the file used.
        "routes": _collector_route(alerting, o)
        + [_severity_route(r, o) for r in sorted(alerting.routes, key=lambda r: r.severity)],
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


def _use(template: str) -> str:
    """An integration field filled by one of the shared named templates."""
    return t.action(f'template "{template}" .')


def _webhook(c: WebhookConfig) -> dict[str, Any]:
    # The webhook payload is JSON with every label and annotation; it needs no template.
    return _set(url=c.url, send_resolved=c.send_resolved, max_alerts=c.max_alerts or None)


def _slack(c: SlackConfig) -> dict[str, Any]:
    return _set(
        api_url=c.api_url,
        api_url_file=c.api_url_file,
        channel=c.channel,
        send_resolved=c.send_resolved,
        title=_use(TITLE),
        title_link=_use(DASHBOARD),
        text=_use(TEXT),
    )


def _email(c: EmailConfig) -> dict[str, Any]:
    out = _set(
        to=c.to,
        send_resolved=c.send_resolved,
        smarthost=c.smarthost,
        auth_username=c.auth_username,
        auth_password_file=c.auth_password_file,
        require_tls=c.require_tls,
        headers={"Subject": _use(TITLE)},
        text=_use(TEXT),
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
        description=_use(TITLE),
        client="otel-tokens",
        client_url=_use(DASHBOARD),
    )


def notification_template(header: str, dashboard_url: str | None) -> str:
    """Go templates shared by every integration: the numbers an on-call engineer acts on.

    They read the annotations the generated rules attach (used, limit, percent, window, description,
    dashboard); `with` guards keep alerts without one readable instead of "<no value>".
    """
    return "\n".join(
        [
            t.comment(header),
            t.define(TITLE, _title()),
            t.define(DASHBOARD, t.with_(".CommonAnnotations.dashboard", DOT, t.literal(dashboard_url or ""))),
            t.define(ALERT, _alert_text()),
            t.define(TEXT, _text()),
        ]
    )


#: The named templates, as integrations refer to them (`{{ template "otel_tokens.title" . }}`).
TITLE, DASHBOARD, ALERT, TEXT = (
    "otel_tokens.title",
    "otel_tokens.dashboard",
    "otel_tokens.alert",
    "otel_tokens.text",
)


DOT = t.action(".")  # the value a `with` or `range` is bound to
END = t.action("end")


def _labelled(field: str, name: str, fmt: str) -> str:
    """`fmt` with `.` bound to label `name` of `field` (`.Labels`, `.CommonLabels`), when set."""
    return t.with_(f"{field}.{name}", fmt)


def _title() -> str:
    firing = t.action('if eq .Status "firing"') + ":" + t.action(".Alerts.Firing | len") + END
    status = "[" + t.action(".Status | toUpper") + firing + "]"
    labels = f" {t.action(f'.CommonLabels.{mn.SEVERITY}')} {t.action(f'.CommonLabels.{ALERTNAME}')}"
    scope = "".join(_labelled(".CommonLabels", n, f" {n}={DOT}") for n in (mn.BUDGET, mn.AGENT))
    return status + labels + scope


def _alert_text() -> str:
    head = f"{t.action(f'.Labels.{ALERTNAME}')} ({t.action(f'.Labels.{mn.SEVERITY}')})"
    head += "".join(_labelled(".Labels", n, f" {n} {DOT}") for n in (mn.BUDGET, mn.AGENT, mn.TASK))
    notes = ".Annotations"
    figures = (
        t.with_(f"{notes}.used", f"used {DOT}")
        + t.with_(f"{notes}.limit", f" of limit {DOT}")
        + t.with_(f"{notes}.percent", f" ({DOT})")
        + t.with_(f"{notes}.window", f" over {DOT}")
    )
    return (
        f"{head}\n"
        + t.with_(f"{notes}.summary", f"{DOT}\n")
        + f"{figures}\n"
        + t.with_(f"{notes}.description", f"{DOT}\n")
        + t.with_(f"{notes}.dashboard", f"dashboard: {DOT}\n")
    )


def _text() -> str:
    each = t.action(f'template "{ALERT}" .') + "\n"
    firing = t.action("range .Alerts.Firing") + each + END
    resolved = t.action("range .Alerts.Resolved") + each + END
    return firing + t.action("if .Alerts.Resolved") + "Resolved:\n" + resolved + END

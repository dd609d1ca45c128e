"""Checks of a budget file that no single field can make: unique names, routes and the default
receiver referring to receivers that exist, and fields that only make sense together (`action:
downgrade` needs `downgrade_to`, a limit is `tokens` or `usd`, ...).

They work on plain data (the raw YAML or a model dump) and tolerate wrong types, so the loader runs
them on the raw YAML even when other fields of the same budget failed validation — pydantic skips a
model's own cross-field validator then — and the author sees every problem in one pass. The models
call the same functions, so the rules are written once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Problem = tuple[tuple[str | int, ...], str]


def _items(value: Any) -> list[tuple[int, Mapping[str, Any]]]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        return []
    return [(i, item) for i, item in enumerate(value) if isinstance(item, Mapping)]


def _duplicates(items: list[tuple[int, Mapping[str, Any]]], what: str) -> list[Problem]:
    seen: dict[str, int] = {}
    problems: list[Problem] = []
    for index, item in items:
        name = item.get("name")
        if not isinstance(name, str):
            continue
        if name in seen:
            problems.append(
                ((index, "name"), f"duplicate {what} name {name!r} (first at index {seen[name]})")
            )
        else:
            seen[name] = index
    return problems


def budget_name_problems(data: Mapping[str, Any]) -> list[Problem]:
    """Budget names key the ledger, label values and alert groups, so they must be unique."""
    return [(("budgets", *path), msg) for path, msg in _duplicates(_items(data.get("budgets")), "budget")]


def alerting_problems(alerting: Mapping[str, Any]) -> list[Problem]:
    """Paths are relative to the `alerting` block."""
    receivers = _items(alerting.get("receivers"))
    problems = [(("receivers", *path), msg) for path, msg in _duplicates(receivers, "receiver")]
    names = {item.get("name") for _, item in receivers}
    known = ", ".join(sorted(str(n) for n in names if isinstance(n, str))) or "none defined"
    default = alerting.get("default_receiver")
    if isinstance(default, str) and default not in names:
        problems.append((("default_receiver",), f"unknown receiver {default!r} (receivers: {known})"))
    severities: dict[str, int] = {}
    for index, route in _items(alerting.get("routes")):
        receiver = route.get("receiver")
        if isinstance(receiver, str) and receiver not in names:
            problems.append(
                (("routes", index, "receiver"), f"unknown receiver {receiver!r} (receivers: {known})")
            )
        severity = route.get("severity")
        if isinstance(severity, str) and severity in severities:
            first = severities[severity]
            problems.append((("routes", index, "severity"), f"a route for {severity} exists (index {first})"))
        elif isinstance(severity, str):
            severities[severity] = index
    return problems


#: `action` values (spec.Action); a value outside them is the field's own error, not a pairing one.
_ACTIONS = ("block", "defer", "downgrade", "compress", "warn")
_PAGERDUTY_KEYS = ("routing_key", "routing_key_file", "service_key", "service_key_file")


def limit_problems(limit: Mapping[str, Any]) -> list[Problem]:
    """Paths are relative to the `limit` block."""
    problems: list[Problem] = []
    if (limit.get("tokens") is None) == (limit.get("usd") is None):
        problems.append(((), "set exactly one of 'tokens' or 'usd'"))
    if limit.get("usd") is not None and limit.get("token_types") is not None:
        problems.append((("token_types",), "'token_types' only applies to a 'tokens' limit"))
    return problems


def budget_problems(budget: Mapping[str, Any]) -> list[Problem]:
    """Paths are relative to the budget."""
    problems: list[Problem] = []
    action, downgrade_to = budget.get("action", "warn"), budget.get("downgrade_to")
    if action == "downgrade" and downgrade_to is None:
        problems.append((("action",), "action 'downgrade' needs 'downgrade_to' (the cheaper model)"))
    if action in _ACTIONS and action != "downgrade" and downgrade_to is not None:
        message = f"'downgrade_to' only applies to action 'downgrade', not {action!r}"
        problems.append((("downgrade_to",), message))
    if action in _ACTIONS and action != "defer" and budget.get("defer_wait") is not None:
        message = f"'defer_wait' only applies to action 'defer', not {action!r}"
        problems.append((("defer_wait",), message))
    scope = budget.get("scope")
    if isinstance(scope, Mapping) and scope.get("user") is not None:
        # `user` is not a metric label: only the ledger can count it, PromQL cannot filter on it.
        for key in ("context_growth", "prompt_cache_miss"):
            if budget.get(key) is not None:
                message = f"'{key}' cannot apply to a 'user' scope (user is not a metric label)"
                problems.append(((key,), message))
    limit = budget.get("limit")
    if isinstance(limit, Mapping):
        problems += [(("limit", *path), msg) for path, msg in limit_problems(limit)]
    return problems


def slack_problems(slack: Mapping[str, Any]) -> list[Problem]:
    if (slack.get("api_url") is None) == (slack.get("api_url_file") is None):
        return [((), "set exactly one of 'api_url' or 'api_url_file'")]
    return []


def pagerduty_problems(pagerduty: Mapping[str, Any]) -> list[Problem]:
    if sum(pagerduty.get(k) is not None for k in _PAGERDUTY_KEYS) != 1:
        return [((), f"set exactly one of {', '.join(_PAGERDUTY_KEYS)}")]
    return []


def _receiver_problems(alerting: Mapping[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    for index, receiver in _items(alerting.get("receivers")):
        for key, check in (("slack_configs", slack_problems), ("pagerduty_configs", pagerduty_problems)):
            for n, config in _items(receiver.get(key)):
                problems += [(("receivers", index, key, n, *path), msg) for path, msg in check(config)]
    return problems


def file_problems(data: Mapping[str, Any]) -> list[Problem]:
    """Every problem no single field shows, with paths from the document root."""
    problems = budget_name_problems(data)
    for index, budget in _items(data.get("budgets")):
        problems += [(("budgets", index, *path), msg) for path, msg in budget_problems(budget)]
    alerting = data.get("alerting")
    if isinstance(alerting, Mapping):
        problems += [
            (("alerting", *path), msg)
            for path, msg in [*alerting_problems(alerting), *_receiver_problems(alerting)]
        ]
    return problems + tier_problems(data)


def tier_problems(data: Mapping[str, Any]) -> list[Problem]:
    """`tiers` (model → cheaper model) must name another model and never loop: a downgrade along a
    cycle never gets cheaper."""
    tiers = data.get("tiers")
    if not isinstance(tiers, Mapping):
        return []
    problems: list[Problem] = []
    for model, cheaper in tiers.items():
        if model == cheaper:
            problems.append((("tiers", model), f"tier {model!r} maps to itself"))
            continue
        seen, current = {model}, cheaper
        while isinstance(current, str) and current in tiers:
            if current in seen:
                problems.append((("tiers", model), f"tiers starting at {model!r} loop back to {current!r}"))
                break
            seen.add(current)
            current = tiers[current]
    return problems

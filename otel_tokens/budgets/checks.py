"""File-wide checks of a budget file that no single field can make: unique names, routes and the
default receiver referring to receivers that exist.

They work on plain data (the raw YAML or a model dump) and tolerate wrong types, so the loader can
run them even when other parts of the file failed validation and still report every problem.
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


def file_problems(data: Mapping[str, Any]) -> list[Problem]:
    """Every file-wide problem, with paths from the document root."""
    problems = budget_name_problems(data)
    alerting = data.get("alerting")
    if isinstance(alerting, Mapping):
        problems += [(("alerting", *path), msg) for path, msg in alerting_problems(alerting)]
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

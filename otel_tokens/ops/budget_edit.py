"""`otel-tokens budget set AGENT LIMIT`: edit budgets.yaml in place, keeping what people wrote.

The file is the single source of truth and people comment it, so the edit is a ruamel.yaml
round trip: comments, key order, flow mappings (`{tokens: 500000}`), blank lines and indentation
stay as they were, and only the limit (or one appended budget) changes. The edited text is
validated by the budget loader itself before anything is written — an edit that would make the
file invalid is refused with the loader's `file:line` errors and the file is left untouched — and
is written atomically (temporary file, then rename). The generated files are then re-rendered.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.util import load_yaml_guess_indent

from otel_tokens.budgets.loader import load_budget_file, parse_budget_text

__all__ = ["BudgetEdit", "EditError", "edit_budget_text", "parse_limit", "set_budget"]

_SUFFIX = {"k": 1e3, "m": 1e6, "g": 1e9}
_WINDOW_WORDS = {"1h": "hourly", "1d": "daily", "day": "daily", "7d": "weekly", "week": "weekly",
                 "30d": "monthly", "month": "monthly"}  # fmt: skip


class EditError(ValueError):
    """The edit cannot be made as asked; the message says why and what to do."""


@dataclass(frozen=True)
class BudgetEdit:
    """What changed: the budget's name, whether it was added, and its old and new limit."""

    name: str
    added: bool
    old_limit: dict[str, Any] | None
    new_limit: dict[str, Any]


def parse_limit(text: str, usd: bool) -> int | float:
    """`500000`, `500k`, `2M` tokens (a whole number); `25`, `$25`, `1.5k` dollars with --usd."""
    raw = text.strip().lstrip("$").replace("_", "")
    if re.fullmatch(r"[0-9]{1,3}(,[0-9]{3})+(\.[0-9]+)?[kKmMgG]?", raw):  # 1,500,000: thousands separators
        raw = raw.replace(",", "")
    match = re.fullmatch(r"(-?[0-9]+(?:\.[0-9]+)?)([kKmMgG]?)", raw)
    if not match:
        raise EditError(f"LIMIT wants a number such as 500000, 500k, 2M (or 25 with --usd), got {text!r}")
    value = float(match.group(1)) * _SUFFIX.get(match.group(2).lower(), 1)
    if usd:
        return int(value) if value == int(value) else round(value, 6)  # `25`, not `25.0`
    if value != int(value):
        raise EditError(f"a token LIMIT is a whole number of tokens, got {text!r}")
    return int(value)


def _yaml(text: str) -> tuple[YAML, Any]:
    """A round-trip loader that writes back with the file's own indentation."""
    _, sequence_indent, offset = load_yaml_guess_indent(text)
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap long lines
    yaml.indent(mapping=2, sequence=sequence_indent or 2, offset=offset or 0)
    return yaml, yaml.load(text)


def _candidates(budgets: CommentedSeq, agent: str, window: str | None) -> list[CommentedMap]:
    """Budgets whose scope is exactly this agent (and window, when given)."""
    found = []
    for budget in budgets:
        scope = budget.get("scope") or {}
        if dict(scope) == {"agent": agent} and (window is None or budget.get("window") == window):
            found.append(budget)
    return found


def _set_limit(budget: CommentedMap, amount: int | float, usd: bool) -> dict[str, Any] | None:
    """Replace the limit's amount in place (keeping its style and `token_types` when the unit stays)."""
    limit = budget.get("limit")
    old = dict(limit) if isinstance(limit, dict) else None
    key, other = ("usd", "tokens") if usd else ("tokens", "usd")
    if not isinstance(limit, CommentedMap):
        budget["limit"] = CommentedMap({key: amount})
        return old
    if other in limit:
        limit.pop("token_types", None)  # token types restrict a token limit only
        position = list(limit).index(other)
        del limit[other]
        limit.insert(position, key, amount)
    else:
        limit[key] = amount
    return old


def _new_name(agent: str, window: str, usd: bool, taken: set[str]) -> str:
    """`support-daily`, else `support-1d` (`-usd` for dollars), the first that is free."""
    unit = "-usd" if usd else ""
    names = [f"{agent}-{_WINDOW_WORDS.get(window, window)}{unit}", f"{agent}-{window}{unit}"]
    for name in names:
        if name not in taken:
            return name
    raise EditError(f"budgets named {' and '.join(names)} exist with another scope; edit the file by hand")


def _new_budget(name: str, agent: str, amount: int | float, window: str, usd: bool) -> CommentedMap:
    limit = CommentedMap({"usd" if usd else "tokens": amount})
    scope = CommentedMap({"agent": agent})
    scope.fa.set_flow_style()
    limit.fa.set_flow_style()
    return CommentedMap({"name": name, "scope": scope, "limit": limit, "window": window})


def edit_budget_text(
    text: str, agent: str, amount: int | float, *, window: str | None, usd: bool
) -> tuple[str, BudgetEdit]:
    """The edited text and what changed. Pure: validation and writing are the caller's."""
    yaml, root = _yaml(text)
    budgets = root.get("budgets") if isinstance(root, dict) else None
    if not isinstance(budgets, CommentedSeq):
        raise EditError("the file has no 'budgets' list to edit")
    found = _candidates(budgets, agent, window)
    if len(found) > 1:
        which = ", ".join(f"{b.get('name')} ({b.get('window')})" for b in found)
        raise EditError(f"agent {agent!r} has {len(found)} budgets: {which}; pass --window to pick one")
    if found:
        budget = found[0]
        edit = BudgetEdit(str(budget.get("name")), False, _set_limit(budget, amount, usd), {})
    else:
        taken = {str(b.get("name")) for b in budgets}
        budget = _new_budget(_new_name(agent, window or "1d", usd, taken), agent, amount, window or "1d", usd)
        budgets.append(budget)
        budgets.yaml_set_comment_before_after_key(len(budgets) - 1, before="\n", indent=2)
        edit = BudgetEdit(str(budget["name"]), True, None, {})
    out = io.StringIO()
    yaml.dump(root, out)
    return out.getvalue(), BudgetEdit(edit.name, edit.added, edit.old_limit, dict(budget["limit"]))


def set_budget(path: str | Path, agent: str, limit: str, *, window: str | None, usd: bool) -> BudgetEdit:
    """Edit, validate with the loader (raising its `BudgetFileError`, file untouched), write atomically."""
    path = Path(path)
    load_budget_file(path)  # an already broken file is reported as it is, not edited
    text = path.read_text(encoding="utf-8")
    edited, edit = edit_budget_text(text, agent, parse_limit(limit, usd), window=window, usd=usd)
    parse_budget_text(edited, str(path))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(edited)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return edit

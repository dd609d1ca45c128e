"""`otel-tokens budget set AGENT LIMIT`: edit budgets.yaml in place, keeping what people wrote.

The file is the single source of truth and people comment it, so only the limit's number (or one
appended budget) changes: ruamel.yaml's round-trip loader finds where the limit is (line and
column of every node), and the new value is spliced into the original text there — comments, key
order, flow mappings (`{tokens: 500000}`), blank lines and indentation stay byte for byte. The edited text is
validated by the budget loader itself before anything is written — an edit that would make the
file invalid is refused with the loader's `file:line` errors and the file is left untouched — and
is written atomically (temporary file, then rename). The generated files are then re-rendered.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

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


def _load(text: str) -> Any:
    """The round-trip tree, which knows the line and column of every key, value and item."""
    return YAML(typ="rt").load(text)


def _candidates(budgets: CommentedSeq, agent: str, window: str | None) -> list[CommentedMap]:
    """Budgets whose scope is exactly this agent (and window, when given)."""
    found = []
    for budget in budgets:
        scope = budget.get("scope") or {}
        if dict(scope) == {"agent": agent} and (window is None or budget.get("window") == window):
            found.append(budget)
    return found


def _number(amount: int | float) -> str:
    return str(amount) if isinstance(amount, int) else repr(amount)


def _replace_at(lines: list[str], line: int, col: int, pattern: str, new: str, what: str) -> None:
    match = re.compile(pattern).match(lines[line], col)
    if match is None:
        raise EditError(f"line {line + 1}: cannot find the {what} where the YAML says it is; edit it by hand")
    lines[line] = lines[line][: match.start()] + new + lines[line][match.end() :]


def _splice_limit(lines: list[str], budget: CommentedMap, amount: int | float, usd: bool) -> dict[str, Any]:
    """Rewrite the limit's number (and its key, when the unit changes) in place; nothing else moves."""
    limit = budget.get("limit")
    if not isinstance(limit, CommentedMap) or not ({"tokens", "usd"} & set(limit)):
        raise EditError(
            f"budget {budget.get('name')!r} has no tokens or usd limit to change; edit it by hand"
        )
    old_key = "tokens" if "tokens" in limit else "usd"
    new_key = "usd" if usd else "tokens"
    if new_key != old_key and "token_types" in limit:
        raise EditError(f"budget {budget.get('name')!r} restricts token_types; change its unit by hand")
    old = dict(limit)
    line, col = limit.lc.value(old_key)
    _replace_at(lines, line, col, r"[-+0-9._eE]+", _number(amount), "limit's number")
    if new_key != old_key:  # the key sits left of its value: replace it second, columns still hold
        key_line, key_col = limit.lc.key(old_key)
        _replace_at(lines, key_line, key_col, old_key, new_key, "limit's unit")
    return old


def _new_name(agent: str, window: str, usd: bool, taken: set[str]) -> str:
    """`support-daily`, else `support-1d` (`-usd` for dollars), the first that is free."""
    unit = "-usd" if usd else ""
    names = [f"{agent}-{_WINDOW_WORDS.get(window, window)}{unit}", f"{agent}-{window}{unit}"]
    for name in names:
        if name not in taken:
            return name
    raise EditError(f"budgets named {' and '.join(names)} exist with another scope; edit the file by hand")


def _scalar(value: str) -> str:
    return value if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", value) else json.dumps(value)


def _append(lines: list[str], budgets: CommentedSeq, budget: dict[str, Any]) -> None:
    """Insert one block-style item after the last budget, indented like it; comments and sections
    that follow the list (a comment at the list's own level or left of it) stay where they are."""
    if budgets.fa.flow_style():
        raise EditError("'budgets' is written as a flow sequence [...]; add the budget by hand")
    last_line, content_col = budgets.lc.item(len(budgets) - 1)
    dash_col = lines[last_line].rfind("-", 0, content_col)
    end = last_line + 1
    for i in range(last_line + 1, len(lines)):
        stripped = lines[i].strip()
        indent = len(lines[i]) - len(lines[i].lstrip())
        if not stripped or (stripped.startswith("#") and indent <= dash_col):
            continue  # blank, or a comment that belongs to what comes next
        if indent <= dash_col:
            break  # the next item's dash or the next section: the list ended before it
        end = i + 1
    item_line = lines[last_line]
    gap = last_line > 0 and not lines[last_line - 1].strip()  # budgets separated by blank lines
    pad, inner = " " * dash_col, " " * content_col
    block = [f"{pad}-{' ' * (content_col - dash_col - 1)}name: {budget['name']}\n",
             f"{inner}scope: {{agent: {_scalar(budget['agent'])}}}\n",
             f"{inner}limit: {{{budget['unit']}: {_number(budget['amount'])}}}\n",
             f"{inner}window: {budget['window']}\n"]  # fmt: skip
    if end > 0 and not lines[end - 1].endswith("\n"):
        lines[end - 1] += "\n"
    lines[end:end] = (["\n"] if gap or not item_line.strip() else []) + block


def edit_budget_text(
    text: str, agent: str, amount: int | float, *, window: str | None, usd: bool
) -> tuple[str, BudgetEdit]:
    """The edited text and what changed. Pure: validation and writing are the caller's.

    ruamel.yaml reads the file (it keeps every node's line and column); the edit is spliced into the
    original text at those positions rather than re-dumped, because a dump rewrites what it should
    not (`[{url: x}]` came back as `[url: x]`, and a comment above the next section moved above the
    appended budget) — so every byte not edited stays as written."""
    root = _load(text)
    budgets = root.get("budgets") if isinstance(root, dict) else None
    if not isinstance(budgets, CommentedSeq) or not budgets:
        raise EditError("the file has no 'budgets' list to edit")
    lines = text.splitlines(keepends=True)
    found = _candidates(budgets, agent, window)
    if len(found) > 1:
        which = ", ".join(f"{b.get('name')} ({b.get('window')})" for b in found)
        raise EditError(f"agent {agent!r} has {len(found)} budgets: {which}; pass --window to pick one")
    unit = "usd" if usd else "tokens"
    if found:
        old = _splice_limit(lines, found[0], amount, usd)
        return "".join(lines), BudgetEdit(str(found[0].get("name")), False, old, {unit: amount})
    taken = {str(b.get("name")) for b in budgets}
    name = _new_name(agent, window or "1d", usd, taken)
    new = {"name": name, "agent": agent, "unit": unit, "amount": amount, "window": window or "1d"}
    _append(lines, budgets, new)
    return "".join(lines), BudgetEdit(name, True, None, {unit: amount})


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

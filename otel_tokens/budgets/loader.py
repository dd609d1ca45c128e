"""Loading `budgets.yaml`: YAML → `BudgetFile`, or one `BudgetFileError` listing every problem.

A bad budget file must stop start-up with all of its problems at once, each as
`budgets.yaml:14: budgets[2].limit.tokens: must be positive, got -5`, so the author fixes them in one
pass. Pydantic reports locations as key paths; we compose the YAML node tree (which keeps line
numbers) and walk it along each path to find the line.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from otel_tokens.budgets.checks import file_problems
from otel_tokens.budgets.spec import DURATION_PATTERN, LABEL_VALUE_PATTERN, NAME_PATTERN, BudgetFile

__all__ = ["BudgetError", "BudgetFileError", "load_budget_file", "parse_budget_text"]

Loc = tuple[str | int, ...]

_PATTERN_HINTS = {
    NAME_PATTERN: "must be 1-64 letters, digits, '_', '.', '-' starting with a letter or digit",
    LABEL_VALUE_PATTERN: "must be 1-128 letters, digits or _ . : / @ + - (no spaces, no quotes)",
    DURATION_PATTERN: "must be a duration such as 30s, 5m, 1h, 7d",
}

_BOUND_WORDS = {
    "greater_than": ("gt", "greater than"),
    "greater_than_equal": ("ge", "at least"),
    "less_than": ("lt", "less than"),
    "less_than_equal": ("le", "at most"),
}


@dataclass(frozen=True, order=True)
class BudgetError:
    """One problem: where (file, 1-based line, key path) and what is wrong."""

    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        line = f":{self.line}" if self.line else ""  # 0: about the file as a whole (not found, ...)
        return f"{self.file}{line}: {where}{self.message}"


class BudgetFileError(Exception):
    """A budget file that cannot be used; `errors` holds every problem, sorted by line."""

    def __init__(self, errors: Sequence[BudgetError]) -> None:
        self.errors = sorted(errors)
        count = len(self.errors)
        lines = "\n".join(f"  {e}" for e in self.errors)
        super().__init__(f"{count} problem{'s' * (count != 1)} in budget file:\n{lines}")


def load_budget_file(path: str | Path) -> BudgetFile:
    """Read and validate a budget file; raises `BudgetFileError` naming every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BudgetFileError([BudgetError(str(path), 0, "", "file not found")]) from None
    except IsADirectoryError:
        raise BudgetFileError([BudgetError(str(path), 0, "", "is a directory, not a budget file")]) from None
    except UnicodeDecodeError as exc:
        message = f"not UTF-8 text (byte {exc.start}); a budget file is YAML"
        raise BudgetFileError([BudgetError(str(path), 0, "", message)]) from None
    except OSError as exc:
        raise BudgetFileError([BudgetError(str(path), 0, "", f"cannot read: {exc.strerror}")]) from None
    return parse_budget_text(text, str(path))


def parse_budget_text(text: str, filename: str = "budgets.yaml") -> BudgetFile:
    """Validate YAML text; `filename` is only used in error messages."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        raise BudgetFileError(
            [BudgetError(filename, line, "", f"YAML syntax error: {exc.problem}")]
        ) from None
    except yaml.reader.ReaderError as exc:  # a control character: found by fuzzing, has no mark
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        raise BudgetFileError(
            [
                BudgetError(
                    filename, line, "", f"YAML syntax error: character {exc.character:#x} is not allowed"
                )
            ]
        ) from None
    if not isinstance(data, dict) or root is None:
        raise BudgetFileError([BudgetError(filename, 1, "", "expected a mapping with a 'budgets' list")])
    errors = _duplicate_keys(root, filename, ())
    errors += [BudgetError(filename, _line(root, p), _path_text(p), m) for p, m in file_problems(data)]
    try:
        budget_file = BudgetFile.model_validate(data)
    except ValidationError as exc:
        errors += [_convert(err, root, filename) for err in exc.errors() if err["type"] != "cross_reference"]
    if errors:
        raise BudgetFileError(errors)
    return budget_file


def _duplicate_keys(node: yaml.Node, filename: str, loc: Loc) -> list[BudgetError]:
    """PyYAML silently keeps the last of two equal keys; a budget file must not."""
    errors: list[BudgetError] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key, value in node.value:
            if key.value in seen:
                where = _path_text((*loc, key.value))
                errors.append(BudgetError(filename, key.start_mark.line + 1, where, "duplicate key"))
            seen.add(key.value)
            errors += _duplicate_keys(value, filename, (*loc, key.value))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            errors += _duplicate_keys(item, filename, (*loc, index))
    return errors


def _resolve(root: yaml.Node, loc: Loc) -> tuple[yaml.Node, Loc, bool]:
    """Walk `loc` down the node tree: (deepest node reached, the loc parts that exist, found all?).

    Parts that match nothing in the YAML (pydantic's union tags) are skipped unless last: a last
    part that is absent is a missing key, reported at its parent mapping.
    """
    node: yaml.Node = root
    kept: list[str | int] = []
    for i, part in enumerate(loc):
        child = _child(node, part)
        if child is None:
            if i == len(loc) - 1:
                return node, (*kept, part), False
            continue
        node, kept = child, [*kept, part]
    return node, tuple(kept), True


def _child(node: yaml.Node, part: str | int) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.value == part:
                found: yaml.Node = value
                return found
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        item: yaml.Node = node.value[part]
        return item
    return None


def _key_line(node: yaml.Node, part: str | int) -> int | None:
    if isinstance(node, yaml.MappingNode):
        for key, _ in node.value:
            if key.value == part:
                return int(key.start_mark.line) + 1
    return None


def _line(root: yaml.Node, loc: Loc) -> int:
    parent, _, _ = _resolve(root, loc[:-1]) if loc else (root, (), True)
    key_line = _key_line(parent, loc[-1]) if loc else None
    if key_line is not None:
        return key_line
    node, _, _ = _resolve(root, loc)
    return int(node.start_mark.line) + 1


def _path_text(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _convert(err: ErrorDetails, root: yaml.Node, filename: str) -> BudgetError:
    loc: Loc = tuple(err["loc"])
    _, kept, _ = _resolve(root, loc)
    return BudgetError(filename, _line(root, kept), _path_text(kept), _message(err, kept))


def _message(err: ErrorDetails, loc: Loc) -> str:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    got = f", got {value!r}"
    if kind in _BOUND_WORDS:
        key, words = _BOUND_WORDS[kind]
        if kind == "greater_than" and ctx.get(key) == 0:
            return f"must be positive{got}"
        bound = ctx.get(key)
        bound = int(bound) if isinstance(bound, float) and bound.is_integer() else bound
        return f"must be {words} {bound}{got}"
    if kind == "missing":
        return "required key missing"
    if kind == "extra_forbidden":
        return _unknown_key(loc)
    if kind == "string_pattern_mismatch":
        hint = _PATTERN_HINTS.get(str(ctx.get("pattern")), f"must match {ctx.get('pattern')}")
        return hint + got
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}{got}"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} item(s)"
    if kind in ("window", "timezone"):
        return f"{err['msg']}{got}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"expected a mapping{got}"
    msg = err["msg"]
    return f"{msg[:1].lower()}{msg[1:]}{got}"


def _unknown_key(loc: Loc) -> str:
    allowed = _allowed_keys(loc[:-1])
    message = f"unknown key {loc[-1]!r}"
    close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
    if close:
        return f"{message} (did you mean {close[0]!r}?)"
    return f"{message} (allowed: {', '.join(allowed)})" if allowed else message


def _allowed_keys(loc: Loc) -> list[str]:
    """Field names (YAML spelling) of the model found at `loc`, for did-you-mean hints."""
    model: type[BaseModel] | None = BudgetFile
    for part in loc:
        if model is None:
            return []
        if isinstance(part, str):
            field = model.model_fields.get(part) or next(
                (f for f in model.model_fields.values() if f.alias == part), None
            )
            model = _model_in(field.annotation) if field else None
    if model is None:
        return []
    return sorted(f.alias or name for name, f in model.model_fields.items())


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside `X | None`, `list[X]` or `Annotated[X, ...]`, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, typing.Annotated):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None

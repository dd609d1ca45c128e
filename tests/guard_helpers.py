"""Shared by the guard's SDK tests: turn the guard on with budgets written as YAML mappings."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider

import otel_tokens
from otel_tokens.budgets.loader import load_budget_file
from otel_tokens.guard import Guard


@pytest.fixture
def guard_on(tracer_provider: TracerProvider, tmp_path: Path) -> Iterator[Callable[..., Guard]]:
    """`guard_on(*budgets, summarizer=None, **top_level_keys)` → the guard, instrumented."""

    def turn_on(*budgets: dict[str, Any], summarizer: Any = None, **top: Any) -> Guard:
        path = tmp_path / "budgets.yaml"
        path.write_text(yaml.safe_dump({"budgets": list(budgets), **top}))
        guard = Guard(load_budget_file(path))
        otel_tokens.instrument(tracer_provider=tracer_provider, budgets=guard, summarizer=summarizer)
        return guard

    yield turn_on
    otel_tokens.uninstrument()


def budget(name: str, limit: dict[str, Any], action: str = "warn", **extra: Any) -> dict[str, Any]:
    return {"name": name, "limit": limit, "window": "day", "action": action, **extra}


def events(span: ReadableSpan, name: str) -> list[dict[str, Any]]:
    return [dict(e.attributes or {}) for e in span.events if e.name == name]


def tool_pairs(messages: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Anthropic messages' tool_use ids and tool_result ids, in order: equal lists mean every tool
    call still sits with its result."""

    def blocks(kind: str, field: str) -> list[str]:
        return [
            b[field]
            for m in messages
            if isinstance(m["content"], list)
            for b in m["content"]
            if b["type"] == kind
        ]

    return blocks("tool_use", "id"), blocks("tool_result", "tool_use_id")

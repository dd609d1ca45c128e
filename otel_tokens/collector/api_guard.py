"""The endpoints guards and Alertmanager talk to: reservations of calls in flight and stop orders.

- `POST /api/v1/reservations` `{"amounts": {budget: amount}, "ttl_seconds": s, "force": false}` →
  `{"id": "<id>" | null, "budgets": [...], "stop_orders": [...]}`: id null means refused (the call
  would pass a budget); either way the answer carries the fresh standings, so a guard's decision
  and its sync are one round trip. Optionally `"task_id": "<id>", "instance_tokens": {budget:
  tokens}`: the call must also fit each budget's per-task-instance limit over every process's use
  and holds of that instance, and the answer adds `"task_instance": {"task_id": ..., "budgets":
  {budget: {"used", "reserved", "limit"}}}`.
- `DELETE /api/v1/reservations/{id}` with an optional body `{"used": {budget: amount},
  "hold_seconds": s}`: the call ended; its real use is held until its span has been counted.
- `POST /api/v1/alerts`: Alertmanager's webhook (`collector/stop_orders.py`).

Bodies are JSON, at most `MAX_BODY_BYTES`; errors are 400 with a message that says what is wrong.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from aiohttp import web

from otel_tokens.budgets.ledger import BudgetLedger
from otel_tokens.budgets.reservations import ReservationError
from otel_tokens.collector.stop_orders import StopOrderBook, WebhookError

__all__ = ["ALERTS_PATH", "MAX_BODY_BYTES", "RESERVATIONS_PATH", "GuardApi"]

RESERVATIONS_PATH = "/api/v1/reservations"
ALERTS_PATH = "/api/v1/alerts"
MAX_BODY_BYTES = 1024 * 1024
#: The longest a settled call's use may be held waiting for its span.
_MAX_HOLD_SECONDS = 300.0
#: The longest task id a reservation may name (ids are label-like values).
MAX_TASK_ID_CHARS = 256


def _bad(message: str, status: int = HTTPStatus.BAD_REQUEST) -> web.HTTPException:
    error = web.HTTPBadRequest if status == HTTPStatus.BAD_REQUEST else web.HTTPServiceUnavailable
    return error(text=json.dumps({"error": message}), content_type="application/json")


async def _json_body(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise _bad(f"body of {request.content_length} bytes exceeds the limit of {MAX_BODY_BYTES}")
    raw = await request.content.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise _bad(f"body exceeds the limit of {MAX_BODY_BYTES} bytes")
    if not raw.strip() and optional:
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _bad(f"body must be a JSON object, got {type(body).__name__}")
    return body


def _amounts(value: Any, key: str) -> dict[str, float]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
        for k, v in value.items()
    ):
        raise _bad(f"{key} must be an object of budget name → number")
    return {k: float(v) for k, v in value.items()}


def _task_id(body: Mapping[str, Any]) -> str | None:
    value = body.get("task_id")
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_TASK_ID_CHARS:
        raise _bad(f"task_id must be a string of 1 to {MAX_TASK_ID_CHARS} characters, got {value!r:.80}")
    return value


def _number(body: Mapping[str, Any], key: str, default: float) -> float:
    value = body.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _bad(f"{key} must be a number, got {value!r}")
    return float(value)


class GuardApi:
    """Handlers over one ledger (None: the collector tracks no budgets) and one stop-order book."""

    def __init__(self, ledger: BudgetLedger | None, stops: StopOrderBook) -> None:
        self.ledger = ledger
        self.stops = stops

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(RESERVATIONS_PATH, self.reserve),
            web.delete(RESERVATIONS_PATH + "/{id}", self.settle),
            web.post(ALERTS_PATH, self.alerts),
        ]

    def status_json(self) -> dict[str, Any]:
        """What `GET /api/v1/budgets` answers: every budget's standing and the stop orders."""
        budgets = self.ledger.status() if self.ledger is not None else []
        return {
            "budgets": [dataclasses.asdict(s) for s in budgets],
            "stop_orders": [o.as_json() for o in self.stops.orders()],
        }

    def _ledger(self) -> BudgetLedger:
        if self.ledger is None:
            raise web.HTTPNotFound(text="this collector tracks no budgets (budgets_file is not set)\n")
        return self.ledger

    async def reserve(self, request: web.Request) -> web.Response:
        ledger = self._ledger()
        body = await _json_body(request)
        amounts = _amounts(body.get("amounts"), "amounts")
        ttl = _number(body, "ttl_seconds", 300.0)
        task_id = _task_id(body)
        instance = _amounts(body.get("instance_tokens") or {}, "instance_tokens")
        try:
            hold_id, status = ledger.reserve(
                amounts, ttl, force=body.get("force") is True, task_id=task_id, instance_tokens=instance
            )
        except ReservationError as exc:
            raise _bad(str(exc)) from None
        answer: dict[str, Any] = {
            "id": hold_id,
            "budgets": [dataclasses.asdict(s) for s in status],
            "stop_orders": [o.as_json() for o in self.stops.orders()],
        }
        if task_id is not None:
            answer["task_instance"] = {"task_id": task_id, "budgets": ledger.task_instance(task_id)}
        return web.json_response(answer, dumps=lambda v: json.dumps(v, sort_keys=True))

    async def settle(self, request: web.Request) -> web.Response:
        ledger = self._ledger()
        body = await _json_body(request, optional=True)
        used = _amounts(body["used"], "used") if body.get("used") is not None else None
        hold = min(max(_number(body, "hold_seconds", 15.0), 0.0), _MAX_HOLD_SECONDS)
        found = ledger.settle(request.match_info["id"], used, hold)
        return web.json_response({"settled": found})

    async def alerts(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        try:  # off the event loop: with a data dir the change is written to disk first
            counts = await asyncio.to_thread(self.stops.apply, body)
        except WebhookError as exc:
            raise _bad(str(exc)) from None
        return web.json_response(counts)

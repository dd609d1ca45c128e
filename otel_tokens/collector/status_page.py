"""The status page's routes on the metrics listener: `/`, `/budgets` and `/api/v1/summary`.

Thin: each request builds the summary (`otel_tokens.ops.summary`, from the registry and the ledger)
on the edge's worker pool and answers it as JSON or as the page (`otel_tokens.ops.page`). The page
is covered by the same bearer token as `/api/v1/*` when one is set. Its Content-Security-Policy
allows nothing but itself: inline style and script, and fetches back to this collector.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from otel_tokens.budgets.ledger import BudgetLedger
from otel_tokens.collector.http_edge import HttpEdge
from otel_tokens.ops.page import render_page
from otel_tokens.ops.summary import SUMMARY_PATH, summary

__all__ = ["BUDGETS_PAGE_PATH", "PAGE_PATH", "SUMMARY_PATH", "status_routes"]

PAGE_PATH = "/"
BUDGETS_PAGE_PATH = "/budgets"
_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'"
)


def status_routes(
    registry: CollectorRegistry, ledger: BudgetLedger | None, edge: HttpEdge, started_at: float
) -> list[web.RouteDef]:
    def build() -> dict[str, Any]:
        return summary(registry, ledger, started_at=started_at, now=time.time())

    async def summary_json(request: web.Request) -> web.Response:
        document = await edge.run_blocking(build)
        return web.Response(
            text=json.dumps(document, sort_keys=True), content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )  # fmt: skip

    async def page(request: web.Request) -> web.Response:
        document = await edge.run_blocking(build)
        text = render_page(document, only_budgets=request.path == BUDGETS_PAGE_PATH)
        return web.Response(
            text=text, content_type="text/html",
            headers={"Cache-Control": "no-store", "Content-Security-Policy": _CSP},
        )  # fmt: skip

    return [web.get(PAGE_PATH, page), web.get(BUDGETS_PAGE_PATH, page), web.get(SUMMARY_PATH, summary_json)]

"""Where the operator commands read their numbers: a running collector, or a Prometheus API.

- `CollectorSource` reads one collector: `/metrics` (counter totals since it started, parsed with
  prometheus_client's own parser) and `/api/v1/summary` (budget standings with burn rates).
  It keeps no history, so `--since` is refused with a message naming `--prometheus`.
- `PrometheusSource` reads any Prometheus-compatible query API (Prometheus, VictoriaMetrics, ...),
  which sees every collector of a fleet and keeps history: `--since` becomes `increase()` over that
  range, and the report's charts over time are range queries. Series are summed over `instance`
  and `job`, as every generated rule and panel does.

Both return the same `Sample`s and budget standings, so everything downstream is shared.
Every response is size-bounded and every request times out: a wrong URL fails fast and clearly.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from prometheus_client.parser import text_string_to_metric_families

from otel_tokens import metric_names as mn
from otel_tokens.budgets import budget_queries as q
from otel_tokens.budgets.spec import DURATION_PATTERN, BudgetFile
from otel_tokens.ops.outlook import Outlook, outlook
from otel_tokens.ops.progress import progress
from otel_tokens.ops.summary import SUMMARY_PATH
from otel_tokens.ops.usage import Sample
from otel_tokens.settings import ENV_COLLECTOR_AUTH_TOKEN_FILE

__all__ = [
    "DEFAULT_COLLECTOR",
    "CollectorSource",
    "DataSource",
    "NoBudgets",
    "PrometheusSource",
    "SourceError",
    "check_since",
]

#: The collector's default metrics/API address (collector/config.py: metrics.host, metrics.port).
DEFAULT_COLLECTOR = "http://127.0.0.1:9464"
BUDGETS_PATH = "/api/v1/budgets"
_MAX_BYTES = 64 * 1024 * 1024
_TIMEOUT = 10.0
#: The burn rate Prometheus reports: the same lookback as the forecast rule's default (a budget
#: file given with `--budgets` sets each budget's own `forecast.lookback`, as its rule has it).
RATE_LOOKBACK = "1h"


class SourceError(Exception):
    """The source could not be read or refused the question; the message says what to do."""


class NoBudgets(SourceError):
    """The source tracks no budgets (a collector without --budgets-file)."""


class DataSource(Protocol):
    #: Whether `--since` and `history()` can be answered (Prometheus: yes; a collector: no).
    has_history: bool

    #: How the figures should be read: "since the collector started", "over the last 24h", ...
    def scope_note(self, since: str | None) -> str: ...
    def samples(
        self, names: Sequence[str], since: str | None, filters: Mapping[str, str]
    ) -> dict[str, list[Sample]]: ...
    def outlooks(self) -> list[Outlook]: ...
    def history(
        self, name: str, by: str, start: float, end: float, step: float
    ) -> dict[str, list[tuple[float, float]]] | None: ...


def check_since(since: str | None) -> None:
    if since is not None and not re.fullmatch(DURATION_PATTERN, since):
        raise SourceError(f"--since wants a duration such as 30m, 24h, 7d; got {since!r}")


def read_token_file(path: str | None, *, env: str = ENV_COLLECTOR_AUTH_TOKEN_FILE) -> str | None:
    """The bearer token in `path` (surrounding whitespace, e.g. `echo`'s newline, is not part of it).

    The operator commands send it to a collector started with `--auth-token-file`; without a path
    they take the file named by `env`, the variable that set up the collector."""
    path = path or os.environ.get(env) or None
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as exc:
        raise SourceError(f"token file {path}: {exc.strerror or exc}") from None
    if not token:
        raise SourceError(f"token file {path} is empty")
    return token


def _get(url: str, what: str, token: str | None = None) -> bytes:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with (
            progress(f"reading {what} from {url}"),
            urllib.request.urlopen(request, timeout=_TIMEOUT) as resp,
        ):
            body: bytes = resp.read(_MAX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        hint = " (the collector wants a token: --token-file FILE)" if exc.code == 401 and not token else ""
        raise SourceError(f"{url}: HTTP {exc.code} {exc.reason}{hint}") from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SourceError(f"cannot read {url}: {reason}") from None
    if len(body) > _MAX_BYTES:
        raise SourceError(f"{url}: response larger than {_MAX_BYTES} bytes")
    return body


def _json(url: str, what: str, token: str | None = None) -> Any:
    try:
        return json.loads(_get(url, what, token))
    except ValueError:
        raise SourceError(f"{url}: not JSON (is this the right address?)") from None


# --- a collector ------------------------------------------------------------------------------------


@dataclass
class CollectorSource:
    url: str = DEFAULT_COLLECTOR
    #: The collector's bearer token for its API, when it was started with one.
    token: str | None = None
    #: The token `/metrics` wants: its own (`auth.metrics_token_file`) or the API's.
    metrics_token: str | None = None
    has_history = False

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")

    def scope_note(self, since: str | None) -> str:
        return f"totals since the collector at {self.url} started"

    def samples(
        self, names: Sequence[str], since: str | None, filters: Mapping[str, str]
    ) -> dict[str, list[Sample]]:
        if since is not None:
            raise SourceError(
                "--since needs history, which only Prometheus keeps: add --prometheus URL "
                "(the collector's /metrics holds totals since it started; drop --since to see those)"
            )
        text = _get(f"{self.url}/metrics", "metrics", self.metrics_token or self.token).decode(
            "utf-8", errors="replace"
        )
        try:
            families = list(text_string_to_metric_families(text))
        except ValueError as exc:
            raise SourceError(f"{self.url}/metrics: not Prometheus text ({exc})") from None
        wanted = set(names)
        found: dict[str, list[Sample]] = {name: [] for name in names}
        for family in families:
            for s in family.samples:
                if s.name in wanted:
                    found[s.name].append(Sample(dict(s.labels), float(s.value)))
        return found

    def outlooks(self) -> list[Outlook]:
        """From `/api/v1/summary` (standings with burn rates); an older collector without it
        answers `/api/v1/budgets`, whose standings then have no rate."""
        try:
            summary = _json(f"{self.url}{SUMMARY_PATH}", "budget standings", self.token)
        except SourceError as exc:
            if "HTTP 404" not in str(exc):
                raise
            return self._budgets_only()
        if summary.get("budgets") is None:
            raise NoBudgets(f"{self.url} tracks no budgets (start the collector with --budgets-file)")
        return [Outlook(**b) for b in summary["budgets"]]

    def _budgets_only(self) -> list[Outlook]:
        try:
            body = _json(f"{self.url}{BUDGETS_PATH}", "budget standings", self.token)
        except SourceError as exc:
            if "HTTP 404" in str(exc):
                raise NoBudgets(
                    f"{self.url}{BUDGETS_PATH}: HTTP 404 (is the collector running with --budgets-file?)"
                ) from None
            raise
        now = time.time()
        return [outlook(b, None, now) for b in body["budgets"]]

    def history(
        self, name: str, by: str, start: float, end: float, step: float
    ) -> dict[str, list[tuple[float, float]]] | None:
        return None  # a collector keeps no history


# --- a Prometheus-compatible API --------------------------------------------------------------------


def _matchers(filters: Mapping[str, str]) -> str:
    """`{agent="support"}`; values are escaped as PromQL string literals (json.dumps is exact for
    the characters PromQL needs escaped: backslash and double quote)."""
    inner = ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(filters.items()))
    return "{" + inner + "}" if inner else ""


@dataclass
class PrometheusSource:
    url: str
    #: The budget file whose warn_at thresholds apply; Prometheus does not hold thresholds. Read
    #: when standings are asked for, so a broken file is reported by the command that needs it.
    budgets_file: str | None = None
    has_history = True

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")

    def scope_note(self, since: str | None) -> str:
        when = f"over the last {since}" if since else "since each collector started"
        return f"{when}, from {self.url}"

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        return self._result(_json(url, "a query"), url)

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        url = f"{self.url}/api/v1/query_range?{urllib.parse.urlencode(params)}"
        return self._result(_json(url, "history"), url)

    @staticmethod
    def _result(body: Any, url: str) -> list[dict[str, Any]]:
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else body
            raise SourceError(f"{url}: query failed: {error}")
        return list(body["data"]["result"])

    def samples(
        self, names: Sequence[str], since: str | None, filters: Mapping[str, str]
    ) -> dict[str, list[Sample]]:
        check_since(since)
        found: dict[str, list[Sample]] = {}
        for name in names:
            selector = f"{name}{_matchers(filters)}"
            inner = f"increase({selector}[{since}])" if since else selector
            rows = self.query(f"sum without (instance, job) ({inner})")
            found[name] = [Sample(r["metric"], float(r["value"][1])) for r in rows]
        return found

    def outlooks(self) -> list[Outlook]:
        used = self.query(f"sum by ({mn.BUDGET}, {mn.WINDOW}, {mn.UNIT}) ({mn.BUDGET_USED})")
        if not used:
            raise NoBudgets(f"{self.url} has no {mn.BUDGET_USED} series (no collector tracks budgets)")
        limits = self._by_budget(f"max by ({mn.BUDGET}) ({mn.BUDGET_LIMIT})")
        remaining = self._by_budget(f"max by ({mn.BUDGET}) ({mn.BUDGET_WINDOW_REMAINING})")
        spec = _load(self.budgets_file)
        rates = self._rates(spec)
        now, warn_at = time.time(), ({b.name: b.warn_at for b in spec.budgets} if spec else {})
        order = {name: i for i, name in enumerate(warn_at)}  # the budget file's order, when given
        result = []
        for row in sorted(used, key=lambda r: (order.get(r["metric"].get(mn.BUDGET, ""), len(order)),
                                               r["metric"].get(mn.BUDGET, ""))):  # fmt: skip
            labels, name = row["metric"], row["metric"].get(mn.BUDGET, "")
            status = {
                "name": name, "window": labels.get(mn.WINDOW, ""), "unit": labels.get(mn.UNIT, "tokens"),
                "used": float(row["value"][1]), "limit": limits.get(name, 0.0),
                "remaining_seconds": remaining.get(name, 0.0), "warn_at": warn_at.get(name, 0.8),
            }  # fmt: skip
            result.append(outlook(status, rates.get(name), now))
        return result

    def _rates(self, spec: BudgetFile | None) -> dict[str, float]:
        """Each budget's burn per second: the forecast rule's own `rate()` over its lookback
        (`budget_queries.consumed_rate`); one query for every budget at the default lookback."""
        rates = self._by_budget(f"sum by ({mn.BUDGET}) (rate({mn.BUDGET_CONSUMED_TOTAL}[{RATE_LOOKBACK}]))")
        for budget in spec.budgets if spec else ():
            if budget.forecast.lookback != RATE_LOOKBACK:
                found = self._by_budget(q.consumed_rate(budget.name, budget.forecast.lookback))
                rates.pop(budget.name, None)
                rates.update(found)
        return rates

    def _by_budget(self, expr: str) -> dict[str, float]:
        return {r["metric"].get(mn.BUDGET, ""): float(r["value"][1]) for r in self.query(expr)}

    def history(
        self, name: str, by: str, start: float, end: float, step: float
    ) -> dict[str, list[tuple[float, float]]] | None:
        """`name`'s increase per `step` by label `by`, from `start` to `end`."""
        expr = f"sum by ({by}) (increase({name}[{int(step)}s]))"
        rows = self.query_range(expr, start, end, step)
        return {r["metric"].get(by, mn.UNKNOWN): [(float(t), float(v)) for t, v in r["values"]] for r in rows}


def _load(budget_file: str | Path | None) -> BudgetFile | None:
    """The budget file for what Prometheus does not hold: thresholds and rate lookbacks."""
    if budget_file is None:
        return None
    from otel_tokens.budgets.loader import load_budget_file

    return load_budget_file(budget_file)

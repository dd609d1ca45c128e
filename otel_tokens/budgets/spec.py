"""The budget file's schema: strict pydantic models for `budgets.yaml`.

This module owns the *shape* and the *meaning* of a budget (scope, limit, window, thresholds,
alert rules, Alertmanager receivers and routes). Every consumer — the collector's exact ledger, the
in-process guard (`otel_tokens.guard`) and the Prometheus / Alertmanager / Grafana renderers — reads
these models and nothing else, so the names here are a contract. `action` is carried into alert text
and the ledger's status, and enforced before each call by an agent that turns the guard on (`tiers`,
`guard` and `defer_wait` are read by the guard only). Loading YAML with file:line errors lives in
`loader.py`.

Models forbid unknown keys (a typo such as `warn_At` must fail, not silently fall back to a
default) and names that end up in PromQL string literals, label values and rule group names are
restricted to a safe charset, so renderers never need to escape anything.
"""

from __future__ import annotations

import json
import re
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from otel_tokens.budgets.checks import (
    Problem,
    alerting_problems,
    budget_name_problems,
    budget_problems,
    limit_problems,
    pagerduty_problems,
    slack_problems,
    tier_problems,
)

__all__ = [
    "SCHEMA_PATH",
    "Action",
    "AlertFor",
    "Alerting",
    "Budget",
    "BudgetFile",
    "CacheSettings",
    "CompressLevel",
    "CompressSettings",
    "ContextGrowthRule",
    "EmailConfig",
    "ForecastRule",
    "GuardSettings",
    "Limit",
    "PagerDutyConfig",
    "PromptCacheMissRule",
    "Receiver",
    "Route",
    "RunawaySettings",
    "Scope",
    "Severity",
    "SlackConfig",
    "SpikeRule",
    "TaskInstanceLimit",
    "TokenType",
    "WebhookConfig",
    "parse_duration",
    "write_json_schema",
]

SCHEMA_PATH = Path(__file__).with_name("schema.json")

Severity = Literal["P1", "P2", "P3"]
Action = Literal["block", "defer", "downgrade", "compress", "warn"]
TokenType = Literal["input", "output", "cache_read", "cache_write", "reasoning"]
CalendarPeriod = Literal["day", "week", "month"]
CALENDAR_PERIODS: tuple[str, ...] = ("day", "week", "month")

#: Budget and receiver names: label values, rule group names and file names without escaping.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
#: Scope values (agent, task, model, ...): also model ids such as `anthropic/claude-3@2024` — but no
#: quotes, backslashes or spaces, which would need escaping inside PromQL string literals.
LABEL_VALUE_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:/@+-]{0,127}$"
#: Prometheus duration, e.g. `90s`, `5m`, `1h30m`, `7d`.
DURATION_PATTERN = r"^([0-9]+(ms|s|m|h|d|w|y))+$"

Name = Annotated[str, Field(pattern=NAME_PATTERN)]
LabelValue = Annotated[str, Field(pattern=LABEL_VALUE_PATTERN)]
Duration = Annotated[str, Field(pattern=DURATION_PATTERN)]

_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_MIN_ROLLING_S = 60.0
_MAX_ROLLING_S = 35 * 86400.0
#: Longest a deferred call may wait for room (`defer_wait`): a thread parked longer is a hang.
_MAX_DEFER_WAIT_S = 3600.0


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus duration string (`1h30m` → 5400.0)."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"not a duration: {text!r} (expected e.g. 30s, 5m, 1h, 7d)")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in re.findall(r"([0-9]+)(ms|s|m|h|d|w|y)", text))


class _Strict(BaseModel):
    """Unknown keys are errors; models are immutable so a loaded file is a value."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _semantic(message: str, *path: str | int) -> PydanticCustomError:
    """A cross-field error (kind `cross_reference`); `path` is relative to the model. The loader
    drops these: it runs the same `checks.py` rules on the raw YAML to report every occurrence."""
    return PydanticCustomError("cross_reference", message, {"path": path})


def _raise_first(problems: list[Problem]) -> None:
    """A model's cross-field check, from `checks.py`. The loader runs the same checks on the raw YAML
    (every occurrence, even beside other errors) and drops these; direct `model_validate` callers
    get the first."""
    if problems:
        path, message = problems[0]
        raise _semantic(message, *path)


class Scope(_Strict):
    """Which calls count: every set key must match the call's label; an empty scope is global."""

    agent: LabelValue | None = None
    task: LabelValue | None = None
    user: LabelValue | None = None
    model: LabelValue | None = None
    provider: LabelValue | None = None

    def matchers(self) -> dict[str, str]:
        """The set keys, in a stable order (agent, task, user, model, provider)."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class Limit(_Strict):
    """Exactly one of `tokens` or `usd`. `token_types` restricts a token limit (default: all types,
    using the disjoint split, so input counts fresh input only and cache reads count separately)."""

    tokens: Annotated[int, Field(gt=0)] | None = None
    usd: Annotated[float, Field(gt=0)] | None = None
    token_types: list[TokenType] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_unit(self) -> Limit:
        _raise_first(limit_problems(self.model_dump(by_alias=True)))
        return self

    @property
    def unit(self) -> Literal["tokens", "usd"]:
        return "tokens" if self.tokens is not None else "usd"

    @property
    def amount(self) -> float:
        return float(self.tokens if self.tokens is not None else self.usd or 0.0)


class TaskInstanceLimit(_Strict):
    """Tokens one task instance (one `task_id`) may spend; `runaway_factor` x this means looping."""

    tokens: Annotated[int, Field(gt=0)]
    runaway_factor: Annotated[float, Field(ge=1)] = 3.0
    severity: Severity = "P1"


class SpikeRule(_Strict):
    """Fire when an hour's use exceeds `factor` x the budget's hourly share (limit x 1h / window)."""

    enabled: bool = True
    factor: Annotated[float, Field(gt=1)] = 2.0
    severity: Severity = "P2"


class ForecastRule(_Strict):
    """Fire when use projected to the end of the window (burn rate over `lookback`) passes
    `threshold` x limit."""

    enabled: bool = True
    threshold: Annotated[float, Field(gt=0, le=2)] = 0.9
    lookback: Duration = "1h"
    severity: Severity = "P2"


class ContextGrowthRule(_Strict):
    """Fire when average input tokens per request over `window` exceeds `factor` x the same average
    `baseline_offset` ago: the agent resends an ever-growing context call after call."""

    factor: Annotated[float, Field(gt=1)] = 1.5
    window: Duration = "10m"
    baseline_offset: Duration = "1h"
    severity: Severity = "P3"


class PromptCacheMissRule(_Strict):
    """Fire when requests average at least `min_input_tokens` of input over `window` yet read
    nothing from the prompt cache: large prompts paid in full every time."""

    min_input_tokens: Annotated[int, Field(gt=0)] = 10_000
    window: Duration = "30m"
    severity: Severity = "P3"


class CompressLevel(_Strict):
    """One pressure point of action `compress`: once this call would bring the budget to `at` x its
    limit (used + in flight + this call), the request is shrunk to `target_ratio` x its own input
    tokens (and to at most `target_tokens` when set), keeping the last `keep_last` turns verbatim."""

    at: Annotated[float, Field(gt=0, le=1)]
    target_ratio: Annotated[float, Field(gt=0, lt=1)]
    target_tokens: Annotated[int, Field(gt=0)] | None = None
    keep_last: Annotated[int, Field(ge=1, le=1000)]


class CompressSettings(_Strict):
    """Action `compress`'s two pressure points: moderate (default at 70% of the limit) and
    aggressive (default at 90%); the aggressive one wins when both apply."""

    moderate: CompressLevel = Field(
        default_factory=lambda: CompressLevel(at=0.7, target_ratio=0.6, keep_last=6)
    )
    aggressive: CompressLevel = Field(
        default_factory=lambda: CompressLevel(at=0.9, target_ratio=0.3, keep_last=2)
    )

    @model_validator(mode="after")
    def _ordered(self) -> CompressSettings:
        if self.aggressive.at <= self.moderate.at:
            raise PydanticCustomError("window", "aggressive.at must be above moderate.at")
        return self


class Budget(_Strict):
    """One budget: a scope, a limit over a window, and what happens near and past it.

    `window` is a rolling duration (`1h`, `1d`, `7d`, `30d`; any from 1m to 35d) or a calendar period
    (`day`, `week` from Monday, `month`) that resets at local midnight in the file's `timezone`.
    """

    name: Name
    description: str | None = None
    scope: Scope = Field(default_factory=Scope)
    limit: Limit
    window: str
    warn_at: Annotated[float, Field(gt=0, lt=1)] = 0.8
    warn_severity: Severity = "P3"
    severity: Severity = "P2"
    action: Action = Field(
        "warn",
        description=(
            "What a call does when it would pass the budget, in an agent whose instrumentation has the "
            "guard on (`otel_tokens.instrument(budgets=...)`): block, defer, downgrade or warn; compress "
            "shrinks the request from its first pressure point on (see `compress`). Also shown in alert "
            "text and /api/v1/budgets."
        ),
    )
    downgrade_to: LabelValue | None = Field(
        None, description="The cheaper model for action 'downgrade' (required with it, rejected without)."
    )
    defer_wait: Duration | None = Field(
        None,
        description=(
            "Action 'defer' only: how long the in-process guard holds a deferred call waiting for room "
            "before it raises BudgetDeferred (at most 1h; unset: raise at once)."
        ),
    )
    pause_noncritical: bool = Field(
        False,
        description=(
            "When the budget is exceeded, its BudgetExceeded alert carries "
            "`action: pause_all_noncritical_agents`: "
            "Alertmanager posts it to the collector, and every guarded call in the budget's scope from "
            "an agent not marked critical raises TaskStopped until the alert resolves."
        ),
    )
    compress: CompressSettings = Field(
        default_factory=CompressSettings,
        description="Action 'compress' only: the two pressure points and the token targets.",
    )
    on_runaway: Literal["warn", "stop"] = Field(
        "warn",
        description=(
            "What the in-process guard does when it detects a runaway in a call this budget covers "
            "(a task instance past runaway_factor x its limit, a repeated request, input rising call "
            "after call, the prompt cache expired): warn (span event), or stop (raise TaskStopped "
            "for that task instance or session from then on)."
        ),
    )
    cache_responses: bool = Field(
        False,
        description=(
            "Answer an exact repeat of a deterministic call this budget covers from the response "
            "cache (`guard.cache`) instead of the provider."
        ),
    )
    per_task_instance: TaskInstanceLimit | None = None
    spike: SpikeRule = Field(default_factory=SpikeRule)
    forecast: ForecastRule = Field(default_factory=ForecastRule)
    context_growth: ContextGrowthRule | None = None
    prompt_cache_miss: PromptCacheMissRule | None = None

    @field_validator("window")
    @classmethod
    def _valid_window(cls, value: str) -> str:
        if value in CALENDAR_PERIODS:
            return value
        if not re.fullmatch(DURATION_PATTERN, value):
            raise PydanticCustomError(
                "window", "must be a duration such as 1h, 1d, 7d, 30d or one of day, week, month"
            )
        if not _MIN_ROLLING_S <= parse_duration(value) <= _MAX_ROLLING_S:
            raise PydanticCustomError("window", "a rolling window must be between 1m and 35d")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Budget:
        _raise_first(budget_problems(self.model_dump(by_alias=True)))
        return self

    @field_validator("defer_wait")
    @classmethod
    def _bounded_wait(cls, value: str | None) -> str | None:
        if value is not None and parse_duration(value) > _MAX_DEFER_WAIT_S:
            # kind "window": the loader reports it as the message plus the value given
            raise PydanticCustomError("window", "must be at most 1h (a longer wait is a hung agent)")
        return value

    @property
    def is_calendar(self) -> bool:
        return self.window in CALENDAR_PERIODS

    @property
    def window_seconds(self) -> float:
        """Length of a rolling window; for calendar periods the nominal length (month = 30d),
        which is what spike shares and forecasts use."""
        nominal = {"day": 86400.0, "week": 7 * 86400.0, "month": 30 * 86400.0}
        return nominal[self.window] if self.is_calendar else parse_duration(self.window)


class AlertFor(_Strict):
    """`for:` of each generated alert kind; tests and end-to-end demos set them to `0s`."""

    budget_warning: Duration = "5m"
    budget_exceeded: Duration = "0s"
    runaway_task: Duration = "0s"
    token_spike: Duration = "5m"
    budget_forecast: Duration = "15m"
    context_growth: Duration = "15m"
    prompt_cache_miss: Duration = "15m"


class WebhookConfig(_Strict):
    url: Annotated[str, Field(pattern=r"^https?://\S+$")]
    send_resolved: bool = True
    max_alerts: Annotated[int, Field(ge=0)] = 0


class SlackConfig(_Strict):
    """`api_url` or `api_url_file` (a file holding the secret, kept out of the budget file)."""

    api_url: Annotated[str, Field(pattern=r"^https?://\S+$")] | None = None
    api_url_file: str | None = None
    channel: Annotated[str, Field(min_length=1)]
    send_resolved: bool = True

    @model_validator(mode="after")
    def _one_url(self) -> SlackConfig:
        _raise_first(slack_problems(self.model_dump(by_alias=True)))
        return self


class EmailConfig(_Strict):
    to: Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+$")]
    from_: Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+$")] | None = Field(default=None, alias="from")
    smarthost: Annotated[str, Field(pattern=r"^\S+:[0-9]+$")] | None = None
    auth_username: str | None = None
    auth_password_file: str | None = None
    require_tls: bool = True
    send_resolved: bool = False


class PagerDutyConfig(_Strict):
    """Events API v2 `routing_key`, or the older `service_key`; `*_file` variants keep secrets out."""

    routing_key: str | None = None
    routing_key_file: str | None = None
    service_key: str | None = None
    service_key_file: str | None = None
    url: Annotated[str, Field(pattern=r"^https?://\S+$")] | None = None
    send_resolved: bool = True

    @model_validator(mode="after")
    def _one_key(self) -> PagerDutyConfig:
        _raise_first(pagerduty_problems(self.model_dump(by_alias=True)))
        return self


class Receiver(_Strict):
    """An Alertmanager receiver; field names follow Alertmanager's own so its docs apply."""

    name: Name
    webhook_configs: list[WebhookConfig] = Field(default_factory=list)
    slack_configs: list[SlackConfig] = Field(default_factory=list)
    email_configs: list[EmailConfig] = Field(default_factory=list)
    pagerduty_configs: list[PagerDutyConfig] = Field(default_factory=list)


class Route(_Strict):
    """Alerts of one severity go to `receiver`, re-sent every `repeat_interval` while firing."""

    severity: Severity
    receiver: Name
    repeat_interval: Duration = "4h"
    group_wait: Duration | None = None
    group_interval: Duration | None = None


class Alerting(_Strict):
    """Alertmanager routing: the root route's receiver and timers, and one sub-route per severity."""

    default_receiver: Name
    group_by: list[str] = Field(default_factory=lambda: ["alertname", "budget", "agent"])
    group_wait: Duration = "30s"
    group_interval: Duration = "5m"
    repeat_interval: Duration = "4h"
    receivers: list[Receiver] = Field(min_length=1)
    routes: list[Route] = Field(default_factory=list)
    #: The collector's API base as Alertmanager reaches it (e.g. http://collector:9464): alerts that
    #: carry an `action` (RunawayTask: kill_agent_task; BudgetExceeded of a `pause_noncritical`
    #: budget) are also posted to its `/api/v1/alerts`, where they become the guards' stop orders.
    collector_url: Annotated[str, Field(pattern=r"^https?://\S+$")] | None = None
    #: File with the collector's bearer token, for Alertmanager (`http_config.authorization`).
    collector_credentials_file: str | None = None

    @model_validator(mode="after")
    def _references(self) -> Alerting:
        _raise_first(alerting_problems(self.model_dump(by_alias=True)))
        return self

    def receiver(self, name: str) -> Receiver:
        return next(r for r in self.receivers if r.name == name)


class GuardCollector(_Strict):
    """How guards share budgets through the collector (README, "Enforce budgets in the agent")."""

    #: The collector's API base (its metrics listener, e.g. http://127.0.0.1:9464);
    #: OTEL_TOKENS_COLLECTOR_URL wins. Unset (both): each process enforces alone.
    url: Annotated[str, Field(pattern=r"^https?://\S+$")] | None = None
    #: File with the collector's bearer token; OTEL_TOKENS_COLLECTOR_AUTH_TOKEN_FILE wins.
    auth_token_file: str | None = None
    #: Instead of one collector: a Prometheus-compatible query API (e.g. http://prometheus:9090) as the
    #: global view of a fleet of collectors, read-only (no reservations: a looser overshoot bound).
    prometheus_url: Annotated[str, Field(pattern=r"^https?://\S+$")] | None = None
    #: Collector unreachable: `open` decides on what this process knows (the last standing the
    #: collector sent plus its own calls since), `closed` refuses every call a budget covers.
    on_unreachable: Literal["open", "closed"] = "open"
    #: How long a call waits for the collector's answer before it counts as unreachable.
    timeout_seconds: Annotated[float, Field(gt=0, le=30)] = 2.0
    #: How often stop orders and standings are fetched in the background.
    sync_interval_seconds: Annotated[float, Field(gt=0, le=300)] = 1.0
    #: A reservation expires after this long unless settled (a crashed agent's frees its room).
    reservation_ttl_seconds: Annotated[float, Field(gt=0, le=3600)] = 600.0
    #: A settled call's real use stays held at the collector this long, until its span has surely
    #: arrived (longer than the span exporter's batch delay, 5 s by default).
    settle_hold_seconds: Annotated[float, Field(ge=0, le=300)] = 15.0


class RunawaySettings(_Strict):
    """The in-process runaway detectors' thresholds (per task instance or session)."""

    #: The same request (model + messages) sent this many times in one task instance or session.
    repeated_requests: Annotated[int, Field(ge=2, le=1000)] = 5
    #: Input tokens rising on this many consecutive calls of one session (or task instance).
    rising_input_calls: Annotated[int, Field(ge=3, le=1000)] = 8
    #: A prompt at least this large reading nothing from the prompt cache right after calls of the
    #: same session that read from it: the cache expired between calls.
    cache_expiry_min_input_tokens: Annotated[int, Field(gt=0)] = 4096


class CacheSettings(_Strict):
    """The response cache: exact repeats of deterministic calls answered without the provider."""

    #: On for every call (else only for calls a budget with `cache_responses: true` covers).
    enabled: bool = False
    #: The SQLite file, shared by the agent's processes on this machine (default: the user cache dir).
    path: str | None = None
    ttl: Duration = "1h"
    #: The store's size bound; the least recently used entries go first.
    max_bytes: Annotated[int, Field(gt=0)] = 256 * 1024 * 1024
    #: Only calls that ask for a repeatable answer (temperature 0, or a seed) are cached.
    deterministic_only: bool = True


class GuardSettings(_Strict):
    """How the in-process guard estimates a call before it is sent, detects runaways and caches."""

    #: Output ceiling assumed for a request that sets no `max_tokens` / `max_completion_tokens` /
    #: `max_output_tokens` (an OpenAI call may omit it; Anthropic requires it).
    default_output_tokens: Annotated[int, Field(gt=0, le=1_000_000)] = 4096
    #: Agents a `pause_noncritical` stop order never pauses (besides `attribute(critical=True)`).
    critical_agents: list[LabelValue] = Field(default_factory=list)
    collector: GuardCollector = Field(default_factory=GuardCollector)
    runaway: RunawaySettings = Field(default_factory=RunawaySettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)


class BudgetFile(_Strict):
    """The whole `budgets.yaml`."""

    version: Literal[1] = 1
    timezone: str = "UTC"
    dashboard_url: Annotated[str, Field(pattern=r"^https?://\S+$")] | None = None
    alert_for: AlertFor = Field(default_factory=AlertFor)
    budgets: list[Budget] = Field(min_length=1)
    alerting: Alerting | None = None
    #: Model tiering for `action: downgrade`: model → the cheaper model to send instead. When it names
    #: the call's model it wins over the budget's `downgrade_to` (which may be another provider's).
    tiers: dict[LabelValue, LabelValue] = Field(default_factory=dict)
    guard: GuardSettings = Field(default_factory=GuardSettings)
    #: Where Prometheus reads the collector's metrics token (`auth.metrics_token_file`, or
    #: `auth.token_file` when it has none): the rendered scrape job sends it as a bearer token.
    #: Unset, the job scrapes without one, as a collector without a token expects.
    scrape_token_file: Annotated[str, Field(min_length=1, pattern=r"^\S+$")] | None = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise PydanticCustomError(
                "timezone", "unknown IANA time zone (e.g. UTC, Europe/Berlin)"
            ) from None
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> BudgetFile:
        _raise_first(budget_name_problems(self.model_dump(by_alias=True)))
        return self

    @model_validator(mode="after")
    def _tiers_descend(self) -> BudgetFile:
        _raise_first(tier_problems(self.model_dump(by_alias=True)))
        return self

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    def budget(self, name: str) -> Budget:
        return next(b for b in self.budgets if b.name == name)


def json_schema_text() -> str:
    """The JSON Schema of `budgets.yaml`, deterministic (sorted keys) for the drift test."""
    schema: dict[str, Any] = BudgetFile.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "otel-tokens budgets.yaml"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_json_schema(path: Path = SCHEMA_PATH) -> Path:
    """Regenerate `schema.json` (editor completion via `# yaml-language-server: $schema=...`)."""
    path.write_text(json_schema_text(), encoding="utf-8")
    return path

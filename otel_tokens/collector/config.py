"""The collector's configuration: one table of keys, one precedence, one error type.

Every key is declared once in `KEYS` with its YAML path, environment variable, CLI flag and meaning;
the YAML reader, the environment reader, the argparse flags and the reference table in
collector/README.md are all derived from it, so they cannot drift apart. Precedence, as everywhere
in otel-tokens: CLI argument > environment variable > YAML file > default.

Configuration is read at start-up, so it fails loudly: every problem from every source is collected
and raised together as one `ConfigError`, each naming where (`config.yaml:12`, an environment
variable, a flag), which key, what was expected and what was found.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import yaml

from otel_tokens import settings
from otel_tokens.aggregate import ALLOWED_DIMENSIONS, MetricsConfig
from otel_tokens.dedupe import DedupeConfig
from otel_tokens.extract import DEFAULT_MAX_TOKENS_PER_CALL

__all__ = [
    "KEYS",
    "CollectorConfig",
    "ConfigError",
    "add_arguments",
    "config_from_args",
    "load_config",
    "usable_cores",
]

_DEFAULT_METRICS = MetricsConfig()
_DEFAULT_DEDUPE = DedupeConfig()


class ConfigError(ValueError):
    """The configuration is invalid; `errors` lists every problem found, one line each."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("invalid collector configuration:\n  " + "\n  ".join(self.errors))


@dataclass(frozen=True)
class CollectorConfig:
    """Everything `otel-tokens collector` needs; the defaults run it with zero configuration."""

    http_host: str = "127.0.0.1"
    http_port: int = 4318
    grpc_enabled: bool = True
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 4317
    max_body_bytes: int = 8 * 1024 * 1024
    max_tokens_per_call: int = DEFAULT_MAX_TOKENS_PER_CALL
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464
    dimensions: tuple[str, ...] = _DEFAULT_METRICS.dimensions
    max_series_per_metric: int = _DEFAULT_METRICS.max_series_per_metric
    series_idle_seconds: float = _DEFAULT_METRICS.series_idle_seconds
    dedupe_hold_seconds: float = _DEFAULT_DEDUPE.hold_seconds
    agent_fallback_attribute: str | None = _DEFAULT_METRICS.agent_fallback_attribute
    dedupe_window_seconds: float = _DEFAULT_DEDUPE.window_seconds
    dedupe_max_spans: int = _DEFAULT_DEDUPE.max_remembered_spans
    flush_interval_seconds: float = 0.5
    shutdown_scrape_seconds: float = 5.0
    #: Where counters, budget windows and the dedupe memory are kept; None: in memory only.
    data_dir: str | None = None
    #: budgets.yaml for the collector's exact budget ledger (/api/v1/budgets, llm_budget_* gauges).
    budgets_file: str | None = None
    # --- what any one client may hold, on every listener ---
    idle_timeout_seconds: float = 30.0
    read_timeout_seconds: float = 30.0
    max_connections: int = 256
    #: OTLP ingest processes (workers.py); 0: one per CPU core this process may use; 1 (the
    #: default): everything in one process. `CollectorService` itself is always one process:
    #: `run_collector` picks the multi-process service when this resolves above 1. Default 1: a
    #: worker and the main process together spend ~1.5x one process's CPU a span (the main ~0.5x),
    #: so two workers gain only on free cores (bench_workers: at most ~x1.36 on two; x0.76 on this
    #: shared 2-core machine): more processes are an opt-in for machines with cores to spare.
    workers: int = 1
    # --- who gets in ---
    auth_token_file: str | None = None
    metrics_auth_token_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None

    def resolved_workers(self) -> int:
        """`workers`, with 0 resolved to the CPU cores this process may run on."""
        if self.workers:
            return self.workers
        return usable_cores()

    def metrics_config(self) -> MetricsConfig:
        """The pipeline's own config, with the keys the collector passes through."""
        return replace(
            _DEFAULT_METRICS,
            dimensions=tuple(self.dimensions),
            max_series_per_metric=self.max_series_per_metric,
            series_idle_seconds=self.series_idle_seconds,
            agent_fallback_attribute=self.agent_fallback_attribute,
            # a verdict reported after its task's scope (or in another process) has as long as a
            # span has to meet its duplicates: one documented delay
            verdict_wait_seconds=self.dedupe_hold_seconds,
        )

    def dedupe_config(self) -> DedupeConfig:
        """The deduper's config, with the keys the collector passes through."""
        return replace(
            _DEFAULT_DEDUPE,
            hold_seconds=self.dedupe_hold_seconds,
            window_seconds=self.dedupe_window_seconds,
            max_remembered_spans=self.dedupe_max_spans,
        )


# --- value kinds: what a key accepts, checked the same way whatever the source ---------------------


class _Invalid(Exception):
    """A value does not fit its key; the message is the "expected ..., got ..." part."""


@dataclass(frozen=True)
class _Kind:
    expected: str
    check: Callable[[Any], Any]  # python value (from YAML, or converted from text) -> config value
    from_text: Callable[[str], Any]  # env var / CLI text -> python value for `check`
    metavar: str  # how --help shows the flag's argument


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, as `os.process_cpu_count()` of
    Python 3.13 reads it; a container's CPU quota is not seen), at least 1."""
    count = getattr(os, "process_cpu_count", None)
    if count is not None:
        return int(count() or 1)
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)


def _got(value: object) -> str:
    if value is None:
        return "null"
    return repr(value) if isinstance(value, str) else str(value)


def _int_text(text: str) -> Any:
    try:
        return int(text.strip())
    except ValueError:
        return text


def _float_text(text: str) -> Any:
    try:
        return float(text.strip())
    except ValueError:
        return text


def _bool_text(text: str) -> Any:
    words = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False}
    return words.get(text.strip().lower(), text)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _kind(expected: str, ok: Callable[[Any], bool], from_text: Callable[[str], Any], metavar: str) -> _Kind:
    def check(value: Any) -> Any:
        if not ok(value):
            raise _Invalid(f"expected {expected}, got {_got(value)}")
        return value

    return _Kind(expected, check, from_text, metavar)


_DIMENSIONS = f"a list of distinct names from {', '.join(sorted(ALLOWED_DIMENSIONS))}"


def _names_check(value: Any) -> tuple[str, ...]:
    """Checked here, not only by MetricsConfig.validate(), so the error carries the file line."""
    ok = isinstance(value, list) and all(isinstance(v, str) and v in ALLOWED_DIMENSIONS for v in value)
    if not ok or len(set(value)) != len(value):
        raise _Invalid(f"expected {_DIMENSIONS}, got {_got(value)}")
    return tuple(value)


_HOST = _kind("a host name or IP address", lambda v: isinstance(v, str) and v.strip() != "", str, "HOST")
_PORT = _kind(
    "a port number from 0 to 65535", lambda v: type(v) is int and 0 <= v <= 65535, _int_text, "PORT"
)
_POS_INT = _kind("a positive integer", lambda v: type(v) is int and v > 0, _int_text, "N")
_NONNEG_INT = _kind("an integer >= 0", lambda v: type(v) is int and v >= 0, _int_text, "N")
_POS_NUM = _kind("a positive number", lambda v: _is_number(v) and v > 0, _float_text, "SECONDS")
_NONNEG_NUM = _kind("a number >= 0", lambda v: _is_number(v) and v >= 0, _float_text, "SECONDS")
_BOOL = _kind("true or false", lambda v: isinstance(v, bool), _bool_text, "BOOL")
_NAMES = _Kind(_DIMENSIONS, _names_check, lambda t: [s.strip() for s in t.split(",") if s.strip()], "LABELS")


def _attribute_check(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not value.strip() or value != value.strip():
        raise _Invalid(f"expected a resource attribute name, or null for no fallback, got {_got(value)}")
    return value


_ATTRIBUTE = _Kind(
    "a resource attribute name or null",
    _attribute_check,
    lambda t: None if t.strip().lower() in ("none", "null", "off") else t.strip(),
    "ATTRIBUTE",
)
_PATH = _kind("a file path or null", lambda v: v is None or (isinstance(v, str) and v != ""), str, "FILE")
_DIR = _kind("a directory path or null", lambda v: v is None or (isinstance(v, str) and v != ""), str, "DIR")


@dataclass(frozen=True)
class _Key:
    path: str  # YAML path, dotted
    attr: str  # CollectorConfig attribute
    env: str
    flag: str
    kind: _Kind
    doc: str


KEYS: tuple[_Key, ...] = (
    _Key("otlp.http.host", "http_host", settings.ENV_COLLECTOR_HTTP_HOST, "--http-host", _HOST,
         "Interface the OTLP/HTTP receiver (`POST /v1/traces`) binds; `0.0.0.0`: every IPv4 "
         "interface, `::`: IPv6 (and IPv4 where the system maps it)."),
    _Key("otlp.http.port", "http_port", settings.ENV_COLLECTOR_HTTP_PORT, "--http-port", _PORT,
         "Port of the OTLP/HTTP receiver; 0 picks a free port."),
    _Key("otlp.grpc.enabled", "grpc_enabled", settings.ENV_COLLECTOR_GRPC_ENABLED, "--grpc", _BOOL,
         "Run the OTLP/gRPC receiver (`--no-grpc` turns it off)."),
    _Key("otlp.grpc.host", "grpc_host", settings.ENV_COLLECTOR_GRPC_HOST, "--grpc-host", _HOST,
         "Interface the OTLP/gRPC receiver binds (`0.0.0.0`: IPv4 only)."),
    _Key("otlp.grpc.port", "grpc_port", settings.ENV_COLLECTOR_GRPC_PORT, "--grpc-port", _PORT,
         "Port of the OTLP/gRPC receiver; 0 picks a free port."),
    _Key("otlp.max_body_bytes", "max_body_bytes", settings.ENV_COLLECTOR_MAX_BODY_BYTES, "--max-body-bytes",
         _POS_INT, "Largest accepted export request, before and after decompression (HTTP 413 / "
         "gRPC RESOURCE_EXHAUSTED above it)."),
    _Key("otlp.max_tokens_per_call", "max_tokens_per_call", settings.ENV_COLLECTOR_MAX_TOKENS_PER_CALL,
         "--max-tokens-per-call", _POS_INT, "Most input + output tokens one span may report; a span "
         "above it is rejected (`otel_tokens_spans_rejected_total{reason=\"token_count_too_large\"}`)."),
    _Key("metrics.host", "metrics_host", settings.ENV_COLLECTOR_METRICS_HOST, "--metrics-host", _HOST,
         "Interface of the Prometheus `/metrics` and `/healthz` endpoint."),
    _Key("metrics.port", "metrics_port", settings.ENV_COLLECTOR_METRICS_PORT, "--metrics-port", _PORT,
         "Port of the `/metrics` endpoint; 0 picks a free port."),
    _Key("metrics.dimensions", "dimensions", settings.ENV_COLLECTOR_DIMENSIONS, "--dimensions", _NAMES,
         f"Labels of the token, cost and request counters, from: {', '.join(sorted(ALLOWED_DIMENSIONS))} "
         "(env / flag: comma-separated)."),
    _Key("metrics.max_series", "max_series_per_metric", settings.ENV_COLLECTOR_MAX_SERIES, "--max-series",
         _POS_INT, "Series per metric before new label sets go to the overflow series (names a budget's "
         "scope matches on always get their own)."),
    _Key("metrics.series_idle_seconds", "series_idle_seconds", settings.ENV_COLLECTOR_SERIES_IDLE_SECONDS,
         "--series-idle-seconds", _NONNEG_NUM,
         "A series not updated for this long leaves `/metrics` (0: never); if it comes back it restarts "
         "from 0, which `rate()` reads as a counter reset."),
    _Key("metrics.dedupe_hold_seconds", "dedupe_hold_seconds", settings.ENV_COLLECTOR_DEDUPE_HOLD_SECONDS,
         "--dedupe-hold-seconds", _NONNEG_NUM,
         "How long a span waits for another span of the same LLM call (and for an enclosing "
         "`invoke_agent` span naming its agent) before it is counted; also how long a completed task "
         "waits for a verdict (`otel_tokens.verify`) reported after it."),
    _Key("metrics.agent_fallback_attribute", "agent_fallback_attribute",
         settings.ENV_COLLECTOR_AGENT_FALLBACK_ATTRIBUTE, "--agent-fallback-attribute", _ATTRIBUTE,
         "The resource attribute that names the agent of a span when neither the span nor an "
         "enclosing `invoke_agent` span nor the resource's `gen_ai.agent.name` does (`none`/null: "
         "no fallback, such spans are `agent=\"unknown\"`); the SDK's `unknown_service...` never counts."),
    _Key("metrics.dedupe_window_seconds", "dedupe_window_seconds",
         settings.ENV_COLLECTOR_DEDUPE_WINDOW_SECONDS, "--dedupe-window-seconds", _POS_NUM,
         "How long a counted span is remembered, so an exporter's resend of it is not counted again "
         "(exactly once; well past the OTLP exporters' retry schedule)."),
    _Key("metrics.dedupe_max_spans", "dedupe_max_spans", settings.ENV_COLLECTOR_DEDUPE_MAX_SPANS,
         "--dedupe-max-spans", _POS_INT,
         "Memory cap of that window (~150 bytes a span); spans it forgets early are counted in "
         "`otel_tokens_dedupe_forgotten_early_total`."),
    _Key("metrics.flush_interval_seconds", "flush_interval_seconds",
         settings.ENV_COLLECTOR_FLUSH_INTERVAL_SECONDS, "--flush-interval-seconds", _POS_NUM,
         "How often held spans are flushed into the counters."),
    _Key("metrics.shutdown_scrape_seconds", "shutdown_scrape_seconds",
         settings.ENV_COLLECTOR_SHUTDOWN_SCRAPE_SECONDS, "--shutdown-scrape-seconds", _NONNEG_NUM,
         "At shutdown, when held spans were counted by the final flush, `/metrics` stays up until "
         "it is scraped once more, at most this long."),
    _Key("budgets_file", "budgets_file", settings.ENV_COLLECTOR_BUDGETS_FILE, "--budgets-file", _PATH,
         "Path of `budgets.yaml`: the collector keeps an exact ledger of every budget in it "
         "(`llm_budget_*` gauges on `/metrics`, `/api/v1/budgets`); a broken file stops start-up."),
    _Key("data_dir", "data_dir", settings.ENV_COLLECTOR_DATA_DIR, "--data-dir", _DIR,
         "Directory where counters, budget windows and the dedupe memory are kept (SQLite), durable "
         "before an export is answered and restored at start-up; unset: in memory only."),
    _Key("server.idle_timeout_seconds", "idle_timeout_seconds", settings.ENV_COLLECTOR_IDLE_TIMEOUT_SECONDS,
         "--idle-timeout-seconds", _POS_NUM,
         "A connection that sends no request for this long (from connect, or since its last response) "
         "is closed, on every listener (gRPC: no RPC; its handshake must finish within 10 s)."),
    _Key("server.read_timeout_seconds", "read_timeout_seconds", settings.ENV_COLLECTOR_READ_TIMEOUT_SECONDS,
         "--read-timeout-seconds", _POS_NUM,
         "Time allowed to receive one request body over HTTP (408 after it)."),
    _Key("server.max_connections", "max_connections", settings.ENV_COLLECTOR_MAX_CONNECTIONS,
         "--max-connections", _POS_INT,
         "Open connections per listener; at the cap a new connection replaces the longest-quiet one, "
         "or is refused if every connection is busy. Keep the sum under the open-files limit."),
    _Key("server.workers", "workers", settings.ENV_COLLECTOR_WORKERS, "--workers", _NONNEG_INT,
         "OTLP ingest processes sharing the receiver ports: each decodes and extracts, one main "
         "process dedupes, counts, journals and serves `/metrics`, so counts stay exact; 0: one per "
         "CPU core this process may use; 1 (the default): everything in one process, which is faster "
         "on 2 cores (the main process's share per span is as much as one process's whole ingest). "
         "`server.max_connections` applies per process."),
    _Key("auth.token_file", "auth_token_file", settings.ENV_COLLECTOR_AUTH_TOKEN_FILE, "--auth-token-file",
         _PATH, "File holding a bearer token that every listener then requires "
         "(`Authorization: Bearer <token>`; gRPC: `authorization` metadata). Needed whenever a "
         "listener binds beyond loopback."),
    _Key("auth.metrics_token_file", "metrics_auth_token_file", settings.ENV_COLLECTOR_METRICS_AUTH_TOKEN_FILE,
         "--metrics-auth-token-file", _PATH,
         "Separate bearer token for `GET /metrics` (Prometheus' `authorization.credentials_file`); "
         "unset: `/metrics` takes `auth.token_file`'s token. `/healthz` stays open."),
    _Key("tls.cert_file", "tls_cert_file", settings.ENV_COLLECTOR_TLS_CERT_FILE, "--tls-cert-file", _PATH,
         "PEM certificate (chain): every listener then speaks TLS (https, gRPC with TLS)."),
    _Key("tls.key_file", "tls_key_file", settings.ENV_COLLECTOR_TLS_KEY_FILE, "--tls-key-file", _PATH,
         "PEM private key of `tls.cert_file`."),
)  # fmt: skip

_BY_PATH = {k.path: k for k in KEYS}
_SECTIONS = {p.rsplit(".", i)[0] for p in _BY_PATH for i in range(1, p.count(".") + 1)}


# --- sources -------------------------------------------------------------------------------------

_Found = dict[str, Any]  # attr -> checked value


def _apply(key: _Key, raw: Any, where: str, found: _Found, errors: list[str], text: bool) -> None:
    try:
        value = key.kind.from_text(raw) if text and isinstance(raw, str) else raw
        found[key.attr] = key.kind.check(value)
    except _Invalid as exc:
        errors.append(f"{where}: {key.path}: {exc}")


def _from_env(env: Mapping[str, str], errors: list[str]) -> _Found:
    found: _Found = {}
    for key in KEYS:
        raw = env.get(key.env)
        if raw is not None and raw.strip() != "":
            _apply(key, raw, f"environment {key.env}", found, errors, text=True)
    return found


def _from_cli(cli: Mapping[str, Any], errors: list[str]) -> _Found:
    found: _Found = {}
    for key in KEYS:
        raw = cli.get(key.attr)
        if raw is not None:
            _apply(key, raw, key.flag, found, errors, text=True)
    return found


def _from_yaml(path: str, errors: list[str]) -> _Found:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        errors.append(f"{path}: cannot read config file: {exc.strerror or exc}")
        return {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            at, problem = f":{mark.line + 1}", getattr(exc, "problem", None) or exc
        elif isinstance(exc, yaml.reader.ReaderError):  # a control character (found by fuzzing)
            at = f":{text.count(chr(10), 0, max(exc.position, 0)) + 1}"
            problem = f"character {exc.character:#x} is not allowed"
        else:
            at, problem = "", exc
        errors.append(f"{path}{at}: not valid YAML: {problem}")
        return {}
    found: _Found = {}
    if root is not None:
        for key, node, line in _walk(root, "", path, errors):
            _apply(key, _construct(node), f"{path}:{line}", found, errors, text=False)
    return found


def _construct(node: yaml.Node) -> Any:
    """The plain Python value of one YAML node (the composed tree keeps line numbers, values don't)."""
    return yaml.SafeLoader("").construct_object(node, deep=True)


def _walk(
    node: yaml.Node, prefix: str, path: str, errors: list[str]
) -> Iterator[tuple[_Key, yaml.Node, int]]:
    """Yield every known leaf key with its node and line; report unknown and duplicate keys."""
    line = node.start_mark.line + 1
    if not isinstance(node, yaml.MappingNode):
        errors.append(f"{path}:{line}: {prefix.rstrip('.') or 'top level'}: expected a mapping of keys")
        return
    seen: set[str] = set()
    for key_node, value_node in node.value:
        name, line = str(key_node.value), key_node.start_mark.line + 1
        full = prefix + name
        if full in seen:
            errors.append(f"{path}:{line}: {full}: duplicate key")
        elif full in _BY_PATH:
            yield _BY_PATH[full], value_node, line
        elif full in _SECTIONS:
            yield from _walk(value_node, full + ".", path, errors)
        else:
            errors.append(f"{path}:{line}: {full}: unknown key{_suggest(prefix, name)}")
        seen.add(full)


def _suggest(prefix: str, name: str) -> str:
    siblings = sorted({p[len(prefix) :].split(".")[0] for p in _BY_PATH if p.startswith(prefix)})
    close = difflib.get_close_matches(name, siblings, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f" ({hint}known here: {', '.join(siblings)})"


# --- assembly ------------------------------------------------------------------------------------


def load_config(
    *, cli: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None, path: str | None = None
) -> CollectorConfig:
    """Merge default < YAML file < environment < CLI; raise one `ConfigError` listing every problem.

    The file is `path`, else the CLI's `config`, else `$OTEL_TOKENS_COLLECTOR_CONFIG`, else none.
    """
    cli = cli or {}
    env = os.environ if env is None else env
    path = path or cli.get("config") or env.get(settings.ENV_COLLECTOR_CONFIG) or None
    errors: list[str] = []
    merged: _Found = {}
    if path:
        merged.update(_from_yaml(path, errors))
    merged.update(_from_env(env, errors))
    merged.update(_from_cli(cli, errors))
    config = replace(CollectorConfig(), **merged)
    errors.extend(_cross_checks(config))
    if errors:
        raise ConfigError(errors)
    return config


def _cross_checks(config: CollectorConfig) -> list[str]:
    """Problems no single key shows: clashing ports and what the pipeline's own validation rejects."""
    errors: list[str] = []
    ports = {"otlp.http.port": config.http_port, "metrics.port": config.metrics_port}
    if config.grpc_enabled:
        ports["otlp.grpc.port"] = config.grpc_port
    by_port: dict[int, list[str]] = {}
    for name, port in ports.items():
        if port:
            by_port.setdefault(port, []).append(name)
    errors += [f"{' and '.join(ns)}: both set to port {p}" for p, ns in by_port.items() if len(ns) > 1]
    if (config.tls_cert_file is None) != (config.tls_key_file is None):
        errors.append("tls.cert_file and tls.key_file: set both or neither")
    try:
        config.metrics_config().validate()
    except ValueError as exc:  # normally caught per key above; this keeps the pipeline's word final
        errors.append(f"metrics.{exc}")
    try:
        config.dedupe_config().validate()
    except ValueError as exc:
        errors.append(f"metrics.dedupe_{exc}")
    return errors


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--config` and one flag per key; each defaults to None so unset flags fall through to the
    environment and the file — so `--help` states the built-in default in the text instead."""
    parser.add_argument("--config", metavar="FILE", help="YAML config file (see collector/README.md)")
    defaults = CollectorConfig()
    for key in KEYS:
        value = getattr(defaults, key.attr)
        help_text = f"{key.doc} (default: {'unset' if value is None else _shown(value)}; env {key.env})"
        help_text = help_text.replace("%", "%%")  # argparse formats help strings
        if key.kind is _BOOL:
            parser.add_argument(
                key.flag, dest=key.attr, action=argparse.BooleanOptionalAction, help=help_text
            )
        else:
            parser.add_argument(key.flag, dest=key.attr, metavar=key.kind.metavar, help=help_text)


def _shown(value: object) -> str:
    """A default as the reference table and --help show it."""
    if isinstance(value, tuple):
        return f"[{', '.join(value)}]"
    return _got(value).strip("'").lower()


def config_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> CollectorConfig:
    return load_config(cli=vars(args), env=env)


def reference_table() -> str:
    """The Markdown table of every key, embedded verbatim in collector/README.md (a test checks it)."""
    defaults = CollectorConfig()
    rows = ["| key | environment variable | CLI flag | default | meaning |", "|---|---|---|---|---|"]
    for key in KEYS:
        shown = _shown(getattr(defaults, key.attr))
        flag = f"`{key.flag}` / `--no-{key.flag[2:]}`" if key.kind is _BOOL else f"`{key.flag}`"
        rows.append(f"| `{key.path}` | `{key.env}` | {flag} | `{shown}` | {key.doc} |")
    return "\n".join(rows) + "\n"

"""Auto-instrumentation of the OpenAI and Anthropic Python SDKs.

`OtelTokensInstrumentor` is what the `opentelemetry-instrument` entry point loads; it only wires
patches. Each SDK has its own module (`openai.py`, `anthropic.py`) exposing `instrument(settings)`
and `uninstrument()`; an SDK that is not installed is skipped, so neither is a hard dependency.

An SDK is patched when the application imports it (a post-import hook), never by importing it
ourselves: an app that uses only `openai` must not pay the ~1 s and ~40 MB of importing the
anthropic SDK. If the SDK is already imported, the hook runs at once. Import hooks cannot be
removed, so each SDK's hook is registered once per process and patches with whatever settings are
in force when it fires (none after `uninstrument()`).

With no `tracer_provider` argument the global provider is used; when the application configured
none, `_export.ensure_tracer_provider()` first sets one up from the standard `OTEL_*` variables, so
`otel_tokens.instrument()` alone exports (an application's own provider is left untouched).

With a budget file (`budgets=` or `OTEL_TOKENS_BUDGETS_FILE`) every wrapped call also goes through
the in-process budget guard (`otel_tokens.guard`), handed to the wrappers in `CallSettings`. The file
is loaded before anything is patched: a broken one raises `BudgetFileError` listing every problem
and leaves the SDKs untouched.

The same tracer also opens the task-instance spans of `attribute(task_id=...)` scopes: it is handed
to the attribution module on `instrument()` and taken back on `uninstrument()` (attribution is core
and never imports the instrumentation), so task spans exist exactly while otel-tokens is instrumented.
Likewise, when `instrument()` set the provider up itself, an `AgentScopes` span processor is added to
it (once) so a call made under an agent framework's `invoke_agent` span, however deep, is attributed
to that agent; an application's own provider is never changed (it may add `AgentScopes()` itself).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import threading
import weakref
from collections.abc import Collection
from typing import Any

import wrapt
from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from otel_tokens.attribution import set_agent_scopes, set_task_tracer
from otel_tokens.instrumentation._agent_scopes import AgentScopes, lookup
from otel_tokens.instrumentation._call import CallSettings
from otel_tokens.instrumentation._export import ensure_tracer_provider
from otel_tokens.semconv import INSTRUMENTATION_SCOPE
from otel_tokens.settings import ENV_BUDGETS_FILE, ENV_CAPTURE_CONTENT, env_flag

__all__ = ["AgentScopes", "OtelTokensInstrumentor"]

logger = logging.getLogger("otel_tokens")

#: (SDK distribution to look for, our module wrapping it)
_SDK_MODULES: tuple[tuple[str, str], ...] = (
    ("openai", "otel_tokens.instrumentation.openai"),
    ("anthropic", "otel_tokens.instrumentation.anthropic"),
)


#: The settings each SDK is to be patched with when it is imported (absent: not instrumented).
_pending: dict[str, CallSettings] = {}
_hooked: set[str] = set()
_lock = threading.Lock()
#: The agent-scope processor added to each tracer provider instrument() set up itself (once each: a
#: processor cannot be removed from a provider, so it is switched off on `uninstrument()` instead).
_agent_scopes: weakref.WeakKeyDictionary[Any, AgentScopes] = weakref.WeakKeyDictionary()


def _track_agent_scopes(provider: Any, ours: bool) -> None:
    """Note which agent each open span runs under (see `_agent_scopes.py`) on a provider we set up;
    any `AgentScopes` an application added to its own provider is consulted as well."""
    add = getattr(provider, "add_span_processor", None)
    if ours and add is not None:
        with _lock:
            scopes = _agent_scopes.get(provider)
            if scopes is None:
                scopes = _agent_scopes[provider] = AgentScopes()
                add(scopes)
        scopes.active = True
    set_agent_scopes(lookup)


def _patch_when_imported(sdk: str, module_name: str, settings: CallSettings) -> None:
    """Patch `sdk` now if the application imported it already, else as soon as it does."""
    with _lock:
        _pending[sdk] = settings
        first = sdk not in _hooked
        _hooked.add(sdk)
    if first:
        wrapt.register_post_import_hook(lambda _module: _on_import(sdk, module_name), sdk)
    elif sdk in sys.modules:
        _on_import(sdk, module_name)


def _on_import(sdk: str, module_name: str) -> None:
    with _lock:
        settings = _pending.get(sdk)
    if settings is not None:
        importlib.import_module(module_name).instrument(settings)


def _unpatch(sdk: str, module_name: str) -> None:
    with _lock:
        was_pending = _pending.pop(sdk, None) is not None
    if was_pending and sdk in sys.modules:
        importlib.import_module(module_name).uninstrument()


def _guard_or_stop(budgets: Any, raise_errors: bool, summarizer: Any = None) -> Any:
    """`_guard`, stopping start-up on a broken budget file. `otel_tokens.instrument()` wants the
    `BudgetFileError` itself; `opentelemetry-instrument` would log and swallow it and run the agent
    unguarded, so there the process stops (SystemExit escapes its handler) with every error listed.
    Without budgets the budget modules (pydantic models: ~25 ms) are not even imported."""
    if budgets is None and not os.environ.get(ENV_BUDGETS_FILE, "").strip():
        return None
    from otel_tokens.budgets.loader import BudgetFileError

    try:
        guard = _guard(budgets)
    except BudgetFileError as exc:
        if raise_errors:
            raise
        raise SystemExit(f"otel-tokens: not starting unguarded: {exc}") from None
    if guard is not None and summarizer is not None:
        guard.summarizer = summarizer
    return guard


def _guard(budgets: Any) -> Any:
    """The budget guard for `budgets` (a path, a loaded `BudgetFile`, or a `Guard` built with its
    own `BudgetState`), else for the file named by OTEL_TOKENS_BUDGETS_FILE; None when neither is
    given. A broken file raises `BudgetFileError`."""
    if budgets is None:
        budgets = os.environ.get(ENV_BUDGETS_FILE, "").strip() or None
    if budgets is None:
        return None
    from otel_tokens.budgets.spec import BudgetFile
    from otel_tokens.guard import Guard

    if isinstance(budgets, Guard):
        guard = budgets
    else:
        guard = Guard(budgets) if isinstance(budgets, BudgetFile) else Guard.from_file(budgets)
    return guard


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("otel-tokens")
    except Exception:
        return "0.0.0"


class OtelTokensInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Instruments every supported SDK that is importable. Idempotent: BaseInstrumentor refuses a
    second `instrument()` until `uninstrument()`."""

    def instrumentation_dependencies(self) -> Collection[str]:
        # Both SDKs are optional; each module checks for its own SDK, so demand none here.
        return []

    def _instrument(self, **kwargs: Any) -> None:
        given = kwargs.get("tracer_provider")
        before = trace.get_tracer_provider()
        provider = given or ensure_tracer_provider()
        set_up_here = given is None and provider is not before  # ensure_tracer_provider() made it
        tracer = trace.get_tracer(INSTRUMENTATION_SCOPE, _version(), tracer_provider=provider)
        capture = kwargs.get("capture_content")
        settings = CallSettings(
            tracer=tracer,
            capture_content=env_flag(ENV_CAPTURE_CONTENT) if capture is None else bool(capture),
            guard=_guard_or_stop(
                kwargs.get("budgets"), kwargs.get("raise_budget_errors", False), kwargs.get("summarizer")
            ),
        )
        for sdk, module_name in _SDK_MODULES:
            if importlib.util.find_spec(sdk) is None:
                logger.debug("otel-tokens: %s not installed, not instrumenting it", sdk)
                continue
            _patch_when_imported(sdk, module_name, settings)
        set_task_tracer(tracer)
        _track_agent_scopes(provider, set_up_here)

    def _uninstrument(self, **kwargs: Any) -> None:
        set_task_tracer(None)
        set_agent_scopes(None)
        for scopes in list(_agent_scopes.values()):
            scopes.active = False
        for sdk, module_name in _SDK_MODULES:
            _unpatch(sdk, module_name)

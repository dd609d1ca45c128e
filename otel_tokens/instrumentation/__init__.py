"""Auto-instrumentation of the OpenAI and Anthropic Python SDKs.

`OtelTokensInstrumentor` is what the `opentelemetry-instrument` entry point loads; it only wires
patches. Each SDK has its own module (`openai.py`, `anthropic.py`) exposing `instrument(settings)`
and `uninstrument()`; an SDK that is not installed is skipped, so neither is a hard dependency.

With no `tracer_provider` argument the global provider is used; when the application configured
none, `_export.ensure_tracer_provider()` first sets one up from the standard `OTEL_*` variables, so
`otel_tokens.instrument()` alone exports (an application's own provider is left untouched).

The same tracer also opens the task-instance spans of `attribute(task_id=...)` scopes: it is handed
to the attribution module on `instrument()` and taken back on `uninstrument()` (attribution is core
and never imports the instrumentation), so task spans exist exactly while otel-tokens is instrumented.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Collection
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from otel_tokens.attribution import set_task_tracer
from otel_tokens.instrumentation._call import CallSettings
from otel_tokens.instrumentation._export import ensure_tracer_provider
from otel_tokens.semconv import INSTRUMENTATION_SCOPE
from otel_tokens.settings import ENV_CAPTURE_CONTENT, env_flag

logger = logging.getLogger("otel_tokens")

#: (SDK distribution to look for, our module wrapping it)
_SDK_MODULES: tuple[tuple[str, str], ...] = (
    ("openai", "otel_tokens.instrumentation.openai"),
    ("anthropic", "otel_tokens.instrumentation.anthropic"),
)


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
        provider = kwargs.get("tracer_provider") or ensure_tracer_provider()
        tracer = trace.get_tracer(INSTRUMENTATION_SCOPE, _version(), tracer_provider=provider)
        capture = kwargs.get("capture_content")
        settings = CallSettings(
            tracer=tracer,
            capture_content=env_flag(ENV_CAPTURE_CONTENT) if capture is None else bool(capture),
        )
        for sdk, module_name in _SDK_MODULES:
            if importlib.util.find_spec(sdk) is None:
                logger.debug("otel-tokens: %s not installed, not instrumenting it", sdk)
                continue
            importlib.import_module(module_name).instrument(settings)
        set_task_tracer(tracer)

    def _uninstrument(self, **kwargs: Any) -> None:
        set_task_tracer(None)
        for sdk, module_name in _SDK_MODULES:
            if importlib.util.find_spec(sdk) is not None:
                importlib.import_module(module_name).uninstrument()

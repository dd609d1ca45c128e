"""Every environment variable otel-tokens reads, declared once with its default and meaning.

Precedence everywhere: explicit argument > environment variable > config file > default.
"""

from __future__ import annotations

import os
from typing import Final

#: "true" records prompt and completion text on spans (off by default: counts only). The official
#: OpenTelemetry GenAI instrumentations read the same variable, so one switch governs both.
ENV_CAPTURE_CONTENT: Final = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
#: "1" re-raises our own internal errors instead of logging them (tests set it).
ENV_RAISE_INTERNAL_ERRORS: Final = "OTEL_TOKENS_RAISE_INTERNAL_ERRORS"
#: Directory holding tiktoken encoding files; defaults to a cache we fill from bundled data.
ENV_TIKTOKEN_CACHE_DIR: Final = "TIKTOKEN_CACHE_DIR"
#: Path of the collector's YAML config file.
ENV_COLLECTOR_CONFIG: Final = "OTEL_TOKENS_COLLECTOR_CONFIG"


def env_flag(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return raw.strip().lower() in ("1", "true", "yes", "on")

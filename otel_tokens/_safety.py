"""Telemetry never breaks the agent: our own errors on the hot path are logged once and swallowed.

Under tests (`OTEL_TOKENS_RAISE_INTERNAL_ERRORS=1`) they are re-raised instead, so a bug in our
code fails a test rather than hiding behind a log line.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from otel_tokens.settings import ENV_RAISE_INTERNAL_ERRORS

logger = logging.getLogger("otel_tokens")
_already_logged: set[str] = set()


@contextmanager
def swallow_internal_errors(where: str) -> Iterator[None]:
    """Run our own bookkeeping; on failure log once per place (with traceback) and carry on."""
    try:
        yield
    except Exception:
        if os.environ.get(ENV_RAISE_INTERNAL_ERRORS, "") not in ("", "0", "false"):
            raise
        if where not in _already_logged:
            _already_logged.add(where)
            logger.exception("otel-tokens internal error in %s; the LLM call itself is unaffected", where)

"""How an application reads an SDK's raw response (`.with_raw_response` / `.with_streaming_response`),
shared by the openai and anthropic instrumentation tests: both SDKs use the same response wrappers."""

from __future__ import annotations

import inspect
import json
from typing import Any

#: Every way an application can read a `.with_streaming_response` body itself.
BODY_READS = ("read", "json", "text", "iter_bytes", "iter_lines")


def read_body(response: Any, how: str) -> bytes:
    """The body bytes as the application saw them, read the way `how` (one of `BODY_READS`) names."""
    if how == "read":
        return bytes(response.read())
    if how == "json":
        return json.dumps(response.json()).encode()
    if how == "text":
        return str(response.text()).encode()
    if how == "iter_bytes":
        return b"".join(response.iter_bytes())
    if how == "iter_lines":
        return "\n".join(response.iter_lines()).encode()
    raise ValueError(f"unknown way to read a body: {how!r} (one of {BODY_READS})")


async def parse_async(response: Any) -> Any:
    """`parse()` of an async client's response wrapper: a coroutine in `AsyncAPIResponse`
    (`.with_streaming_response`, and anthropic's `.with_raw_response`), plain in `LegacyAPIResponse`
    (openai's `.with_raw_response`, anthropic 0.x's)."""
    parsed = response.parse()
    return await parsed if inspect.isawaitable(parsed) else parsed

"""Calls made through the SDKs' `.with_raw_response` and `.with_streaming_response`.

Both SDKs (Stainless-generated) then return a response wrapper instead of the parsed object:
`LegacyAPIResponse` (`with_raw_response` in openai, and in anthropic 0.x) or `APIResponse` /
`AsyncAPIResponse` (`with_streaming_response`, and `with_raw_response` in anthropic >= 1). The
application reads the body itself, so we never read anything it has not: the span ends from what
the SDK or the application already read.

- A non-stream body the SDK has already read (`with_raw_response`: the SDK reads it before
  returning) is counted at once, from the SDK's own `_parse()` of those bytes. That caches nothing
  and runs no post-parser, so the application's `parse()` returns exactly what it would without us,
  and raises (a structured-output validation error, say) only where it would without us.
- Otherwise the wrapper's `parse` and `close` are hooked on the instance (its type stays the SDK's):
  - `parse()` of a non-stream body ends the span from the parsed object: the provider's usage;
  - `parse()` of an SSE body returns the SDK's stream observed like a plain `stream=True` call, so
    its span ends with the stream (exact when the provider reported usage in it);
  - `close()` (the `with` block of `.with_streaming_response` exits) ends a span still open: an
    observed stream is told it was closed; a body the application read (`read()`, `json()`,
    `text()`) is parsed from those bytes; a body it iterated itself (`iter_bytes()`,
    `iter_lines()`) was never kept, so the prompt is estimated and the span says so.
  - a wrapper dropped unclosed and unparsed ends its span as estimated when it is collected (a
    stream parsed from it lives on without it, and ends the span itself).
"""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from otel_tokens.instrumentation._call import LLMCall, internal_error

#: The SDKs' request header selecting the wrapper: "raw" / "true" (legacy) for
#: `.with_raw_response`, "stream" for `.with_streaming_response`.
RAW_RESPONSE_HEADER = "X-Stainless-Raw-Response"

#: What a stream observer gives back: the object to hand the application, and what to call if the
#: response is closed under it (ends the span with what was consumed; a no-op once it has ended).
ObservedStream = tuple[Any, Callable[[], None]]


def raw_response_mode(kwargs: Mapping[str, Any]) -> str | None:
    """The raw-response mode a wrapped `create` was called in, or None for a plain call."""
    headers = kwargs.get("extra_headers")
    if not headers:  # the usual call: no ABC check on the hot path
        return None
    mode = headers.get(RAW_RESPONSE_HEADER) if isinstance(headers, Mapping) else None
    return mode if isinstance(mode, str) else None


def body_is_buffered(response: Any) -> bool:
    """True when the HTTP body is already in memory (read by the SDK or by the application), so
    reading it again costs nothing and takes nothing from the application."""
    try:
        response.http_response.content  # noqa: B018 - httpx raises ResponseNotRead if not read
    except Exception:
        return False
    return True


class RawResponseCall:
    """One raw-response call's span; a subclass per SDK says how to read its objects."""

    def __init__(self, call: LLMCall, *, stream: bool) -> None:
        self.call = call
        self.stream = stream
        self._sdk_stream: Any = None  # the stream `parse()` returned, and what we handed back
        self._observed: Any = None
        self._stream_closed: Callable[[], None] | None = None

    # --- per SDK ------------------------------------------------------------------------------------
    def finish_parsed(self, parsed: Any) -> None:
        """End the span from a parsed (non-stream) response object."""
        raise NotImplementedError

    def observe_stream(self, stream: Any) -> ObservedStream | None:
        """Observe the SDK stream `parse()` returned; None if it is not one we know."""
        raise NotImplementedError

    def finish_estimated(self) -> None:
        """End the span from the request alone, flagged as an estimate."""
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------------------
    def attach(self, response: Any) -> Any:
        """Account for `response` and return it, the same object, to the application."""
        if not hasattr(response, "http_response"):  # not a wrapper (a middleware's ready-made result)
            return self._not_a_wrapper(response)
        if not self.stream and body_is_buffered(response):
            self._finish_from_body(response)
        else:
            _hook(response, self)
        return response

    def _not_a_wrapper(self, result: Any) -> Any:
        if not self.stream:
            self.finish_parsed(result)
            return result
        observed = self.observe_stream(result)
        if observed is None:
            self.finish_estimated()
            return result
        return observed[0]

    def _finish_from_body(self, response: Any) -> None:
        """The SDK's own parse of the buffered body: no cache, no post-parser (see module doc)."""
        try:
            self.finish_parsed(response._parse())
        except Exception:
            internal_error("raw response: parsing the buffered body")
        finally:
            if not self.call.ended:
                self.finish_estimated()

    def parsed(self, response: Any, parsed: Any, custom_type: bool) -> Any:
        """The application parsed the body; returns what it gets."""
        try:
            if self.stream:
                return self._stream_parsed(parsed)
            if not self.call.ended:
                if custom_type:  # `parse(to=...)`: not the SDK's model; the body is read now
                    self._finish_from_body(response)
                else:
                    self.finish_parsed(parsed)
        except Exception:
            internal_error("raw response: reading the parsed body")
        return parsed

    def _stream_parsed(self, stream: Any) -> Any:
        if stream is self._sdk_stream:  # `parse()` again: the SDK's cache, so our same object
            return self._observed
        if self._sdk_stream is not None or self.call.ended:
            return stream  # a second stream over the same body: the first one counts
        observed = self.observe_stream(stream)
        if observed is None:
            return stream
        self._sdk_stream = stream
        self._observed, self._stream_closed = observed
        return self._observed

    def closed(self, response: Any) -> None:
        """The application (or the `with` block) closed the response."""
        try:
            if self._stream_closed is not None:
                self._stream_closed()
            elif not self.call.ended:
                if not self.stream and body_is_buffered(response):
                    self._finish_from_body(response)
                else:
                    self.finish_estimated()
        except Exception:
            internal_error("raw response: close")
        finally:
            self._end_if_open()

    def dropped(self) -> None:
        """Garbage-collected: a stream it handed out may still be read, and ends the span itself."""
        if self._stream_closed is None and not self.call.ended:
            try:
                self.finish_estimated()
            except Exception:
                internal_error("raw response: dropped")
            finally:
                self._end_if_open()

    def _end_if_open(self) -> None:
        if self._stream_closed is None:
            self.call.finish(None)  # a no-op unless our accounting above failed


def _hook(response: Any, watcher: RawResponseCall) -> None:
    """Route `response.parse()` and `response.close()` through `watcher`, on this instance only.
    The hooks keep the original signature and docstring, and are coroutines where the SDK's are.
    They hold the response (`create(...).parse()` on a temporary must work), so a response dropped
    unclosed is collected by the cycle collector, which is when `dropped()` runs."""
    cls = type(response)
    parse = getattr(cls, "parse", None)
    if callable(parse):
        response.parse = _parse_hook(parse, response, watcher)
    close = getattr(cls, "close", None)
    if callable(close):
        response.close = _close_hook(close, response, watcher)
    weakref.finalize(response, watcher.dropped).atexit = False


def _parse_hook(parse: Callable[..., Any], response: Any, watcher: RawResponseCall) -> Any:
    if inspect.iscoroutinefunction(parse):

        async def async_parse(*args: Any, **kwargs: Any) -> Any:
            parsed = await parse(response, *args, **kwargs)
            return watcher.parsed(response, parsed, kwargs.get("to") is not None)

        return functools.update_wrapper(async_parse, parse)

    def sync_parse(*args: Any, **kwargs: Any) -> Any:
        parsed = parse(response, *args, **kwargs)
        return watcher.parsed(response, parsed, kwargs.get("to") is not None)

    return functools.update_wrapper(sync_parse, parse)


def _close_hook(close: Callable[..., Any], response: Any, watcher: RawResponseCall) -> Any:
    if inspect.iscoroutinefunction(close):

        async def async_close(*args: Any, **kwargs: Any) -> Any:
            try:
                return await close(response, *args, **kwargs)
            finally:
                watcher.closed(response)

        return functools.update_wrapper(async_close, close)

    def sync_close(*args: Any, **kwargs: Any) -> Any:
        try:
            return close(response, *args, **kwargs)
        finally:
            watcher.closed(response)

    return functools.update_wrapper(sync_close, close)

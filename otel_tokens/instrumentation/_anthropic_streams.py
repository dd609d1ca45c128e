"""Streams of the anthropic SDK, observed without changing what the application sees.

Both ways of streaming end in the SDK's raw `Stream` / `AsyncStream` of Messages events:
`messages.create(stream=True)` returns one, and `messages.stream()` builds a `MessageStream` helper
around one. So usage is read at that single level: the stream object the application gets is the
SDK's own, with its event iterator wrapped, so that `message_start` (input and cache tokens) and
`message_delta` (cumulative output tokens) are seen and our span ends when the stream ends, fails,
is closed or is dropped. The stream helpers' managers, which send the request on `__enter__`, are
wrapped in a `wrapt.ObjectProxy` that opens the span there.
Anthropic's usage is in its own meaning (input excludes cache); `TokenCounts.from_anthropic`
converts it.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import replace
from typing import Any

import wrapt

from otel_tokens import semconv as sc
from otel_tokens._safety import swallow_internal_errors
from otel_tokens.instrumentation._call import LLMCall, inside_llm_call, internal_error
from otel_tokens.record import TokenCounts

#: error.type of a stream the server ended without `message_stop` (the application saw no error).
INCOMPLETE_STREAM = "incomplete_stream"


def usage_tokens(usage: Any) -> TokenCounts | None:
    """A `Usage` model (or None) in semconv meaning; None when the response carried no usage."""
    if usage is None or getattr(usage, "input_tokens", None) is None:
        return None
    cache_write = int(getattr(usage, "cache_creation_input_tokens", 0) or 0)
    return TokenCounts.from_anthropic(
        int(usage.input_tokens or 0),
        int(getattr(usage, "output_tokens", 0) or 0),
        int(getattr(usage, "cache_read_input_tokens", 0) or 0),
        cache_write,
        min(one_hour_cache_writes(usage), cache_write),
    )


def one_hour_cache_writes(usage: Any) -> int:
    """`usage.cache_creation.ephemeral_1h_input_tokens`: cache writes with the 1-hour TTL, billed
    above the 5-minute rate. SDKs that predate the field keep it as a plain dict (their models
    allow extra fields), so both shapes are read."""
    split = getattr(usage, "cache_creation", None)
    if split is None:
        return 0
    value = split.get("ephemeral_1h_input_tokens") if isinstance(split, Mapping) else None
    if value is None:
        value = getattr(split, "ephemeral_1h_input_tokens", None)
    return value if type(value) is int and value > 0 else 0


def estimate_input(call: LLMCall, request: Mapping[str, Any]) -> int:
    """Tokenizer estimate of a request's prompt, for calls whose usage never arrived; 0 with the
    record marked "estimation failed" if the tokenizer raised."""
    from otel_tokens.tokencount import strict_count_message_tokens

    try:
        model = str(request.get("model") or "")
        return strict_count_message_tokens(request.get("messages") or [], model, system=request.get("system"))
    except Exception:
        call.enrichment_failed(sc.ENRICHMENT_ESTIMATION, "anthropic prompt estimation")
        return 0


def estimate_output(call: LLMCall, text: str, model: str) -> int:
    """Tokenizer count of the text received; 0 (record marked) if the tokenizer raised."""
    from otel_tokens.tokencount import strict_count_text_tokens

    try:
        return strict_count_text_tokens(text, model) if text else 0
    except Exception:
        call.enrichment_failed(sc.ENRICHMENT_ESTIMATION, "anthropic output estimation")
        return 0


def input_messages_json(request: Mapping[str, Any]) -> str:
    """The prompt in the semconv `gen_ai.input.messages` shape (only written under content capture)."""
    system = request.get("system")
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "parts": _parts(system)})
    for message in request.get("messages") or []:
        if isinstance(message, Mapping):
            messages.append({"role": message.get("role"), "parts": _parts(message.get("content"))})
    return json.dumps(messages, default=str)


def _parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "content": content}]
    if isinstance(content, list):
        return [
            {"type": "text", "content": b.get("text")} if b.get("type") == "text" else {"type": b.get("type")}
            for b in content
            if isinstance(b, Mapping)
        ]
    return []


def output_messages_json(text: str, finish_reason: str | None) -> str:
    part = {"type": "text", "content": text}
    return json.dumps([{"role": "assistant", "parts": [part], "finish_reason": finish_reason}])


class StreamTracker:
    """Accumulates one stream's events and finishes its `LLMCall` exactly once."""

    def __init__(self, call: LLMCall, request: Mapping[str, Any]) -> None:
        self.call = call
        self._request = request
        #: The helper's manager rebuilt for the request the budget guard admitted (a downgraded
        #: model), entered instead of the application's; None: enter the original.
        self.replacement_manager: Any = None
        self._reported: TokenCounts | None = None  # from message_start, updated by message_delta
        self._saw_delta = False
        self._complete = False
        self._model: str | None = None
        self._id: str | None = None
        self._stop_reason: str | None = None
        self._text: list[str] = []

    def observe(self, event: Any) -> None:
        try:
            kind = getattr(event, "type", None)
            if kind == "content_block_delta":  # the most frequent event first
                text = getattr(event.delta, "text", None)
                if isinstance(text, str):
                    self._text.append(text)
            elif kind == "message_start":
                self._on_start(event.message)
            elif kind == "message_delta":
                self._on_delta(event)
            elif kind == "message_stop":
                self._complete = True
        except Exception:
            internal_error("anthropic stream event")

    def _on_start(self, message: Any) -> None:
        self._model = getattr(message, "model", None)
        self._id = getattr(message, "id", None)
        self._reported = usage_tokens(getattr(message, "usage", None))

    def _on_delta(self, event: Any) -> None:
        """`message_delta` usage is cumulative; newer APIs repeat input and cache counts there too."""
        self._saw_delta = True
        self._stop_reason = getattr(event.delta, "stop_reason", None) or self._stop_reason
        usage = getattr(event, "usage", None)
        base = self._reported or TokenCounts()
        if usage is None:
            return
        fresh_input = base.input - base.cache_read - base.cache_write

        def pick(name: str, current: int) -> int:
            value = getattr(usage, name, None)
            return int(value) if value is not None else current

        cache_write = pick("cache_creation_input_tokens", base.cache_write)
        one_hour = one_hour_cache_writes(usage) or base.cache_write_1h  # deltas rarely repeat the split
        self._reported = TokenCounts.from_anthropic(
            pick("input_tokens", fresh_input),
            pick("output_tokens", base.output),
            pick("cache_read_input_tokens", base.cache_read),
            cache_write,
            min(one_hour, cache_write),
        )

    # --- ends -------------------------------------------------------------------------------------
    def done(self) -> None:
        """The SDK's iterator ended: complete, or cut short by the server (no `message_stop`)."""
        self._finish(None if self._complete else INCOMPLETE_STREAM)

    def closed(self) -> None:
        """The application closed the stream: not an error; what was consumed is recorded."""
        self._finish(None)

    def fail(self, error: BaseException) -> None:
        self._finish(None, error)

    def _finish(self, error_type: str | None, error: BaseException | None = None) -> None:
        tokens, estimated = self._reported, False  # what the provider said survives our errors
        try:
            tokens, estimated = self._tokens()
        except Exception:
            internal_error("anthropic stream usage")
        try:
            if self.call.settings.capture_content:
                text = "".join(self._text)
                self.call.record_content(
                    sc.GEN_AI_OUTPUT_MESSAGES, output_messages_json(text, self._stop_reason)
                )
        except Exception:
            internal_error("anthropic stream content")
        self.call.finish(
            tokens,
            response_model=self._model,
            response_id=self._id,
            finish_reasons=[self._stop_reason] if self._stop_reason else (),
            estimated=estimated,
            error=error,
            error_type=error_type,
        )

    def _tokens(self) -> tuple[TokenCounts, bool]:
        """Reported usage when it arrived; the tokenizer fills what did not (and says so)."""
        if self._reported is not None and (self._saw_delta or not self._text):
            return self._reported, False  # the usual end: no text to join, nothing to estimate
        model = self._model or str(self._request.get("model") or "")
        text = "".join(self._text)
        if self._reported is None:
            estimate = TokenCounts(
                input=estimate_input(self.call, self._request), output=estimate_output(self.call, text, model)
            )
            return estimate, True
        if not text:
            return self._reported, False
        # message_start's output_tokens is a placeholder; the text consumed is the better count.
        output = max(self._reported.output, estimate_output(self.call, text, model))
        return replace(self._reported, output=output), True


def observe_sync_stream(stream: Any, tracker: StreamTracker) -> Any:
    """Route the SDK `Stream`'s events through `tracker` and hear about `close()`; returns the same
    object. The stream itself is kept (not proxied) because anthropic 0.x overrides
    `isinstance(x, Stream)` to be true only for the exact class, which no proxy passes."""
    stream._iterator = _observed_events(stream._iterator, tracker)
    close = stream.close

    def observed_close() -> None:
        try:
            close()
        finally:
            tracker.closed()

    stream.close = observed_close
    return stream


def observe_async_stream(stream: Any, tracker: StreamTracker) -> Any:
    """`observe_sync_stream` for `AsyncStream`."""
    stream._iterator = _observed_async_events(stream._iterator, tracker)
    close = stream.close

    async def observed_close() -> None:
        try:
            await close()
        finally:
            tracker.closed()

    stream.close = observed_close
    return stream


def _observed_events(events: Iterator[Any], tracker: StreamTracker) -> Iterator[Any]:
    try:
        for event in events:
            tracker.observe(event)
            yield event
    except GeneratorExit:  # closed or dropped before the end
        tracker.closed()
        raise
    except BaseException as exc:
        tracker.fail(exc)
        raise
    tracker.done()


async def _observed_async_events(events: AsyncIterator[Any], tracker: StreamTracker) -> AsyncIterator[Any]:
    try:
        async for event in events:
            tracker.observe(event)
            yield event
    except GeneratorExit:
        tracker.closed()
        raise
    except BaseException as exc:
        tracker.fail(exc)
        raise
    tracker.done()


OpenTracker = Callable[[], "StreamTracker | None"]
AsyncOpenTracker = Callable[[], Awaitable["StreamTracker | None"]]


def _observe_helper(message_stream: Any, tracker: StreamTracker, observe: Callable[..., Any]) -> None:
    """Observe the raw stream under the `MessageStream` helper, which the helper reads lazily, so
    `text_stream`, `get_final_message()` and `close()` all pass through it."""
    if hasattr(message_stream, "_raw_stream"):
        observe(message_stream._raw_stream, tracker)
    else:  # an SDK whose helper we do not know: count the prompt, say it was estimated
        tracker.closed()


class SyncStreamManagerProxy(wrapt.ObjectProxy[Any]):
    """`messages.stream()`'s manager: the request is sent in `__enter__`, so the span opens there."""

    def __init__(self, manager: Any, open_tracker: OpenTracker) -> None:
        super().__init__(manager)
        self._self_open_tracker = open_tracker

    def __enter__(self) -> Any:
        tracker = None if inside_llm_call() else self._self_open_tracker()
        if tracker is None:
            return self.__wrapped__.__enter__()
        if tracker.replacement_manager is not None:
            self.__wrapped__ = tracker.replacement_manager
        try:
            with tracker.call.activate():
                message_stream = self.__wrapped__.__enter__()
        except BaseException as exc:
            tracker.call.finish(None, error=exc)  # no response: nothing was billed
            raise
        with swallow_internal_errors("anthropic stream helper"):
            _observe_helper(message_stream, tracker, observe_sync_stream)
        return message_stream

    def __exit__(self, *exc_info: Any) -> Any:
        return self.__wrapped__.__exit__(*exc_info)


def _discard_request(manager: Any) -> None:
    """The async helper's manager holds its request as a coroutine made by `stream()`; one replaced
    by a downgraded manager is closed, never awaited (nothing was sent)."""
    for value in vars(manager).values():
        if inspect.iscoroutine(value):
            value.close()


class AsyncStreamManagerProxy(wrapt.ObjectProxy[Any]):
    """`AsyncMessages.stream()`'s manager: the request is awaited in `__aenter__`."""

    def __init__(self, manager: Any, open_tracker: AsyncOpenTracker) -> None:
        super().__init__(manager)
        self._self_open_tracker = open_tracker

    async def __aenter__(self) -> Any:
        tracker = None if inside_llm_call() else await self._self_open_tracker()
        if tracker is None:
            return await self.__wrapped__.__aenter__()
        if tracker.replacement_manager is not None:
            _discard_request(self.__wrapped__)
            self.__wrapped__ = tracker.replacement_manager
        try:
            with tracker.call.activate():
                message_stream = await self.__wrapped__.__aenter__()
        except BaseException as exc:
            tracker.call.finish(None, error=exc)  # no response: nothing was billed
            raise
        with swallow_internal_errors("anthropic stream helper"):
            _observe_helper(message_stream, tracker, observe_async_stream)
        return message_stream

    async def __aexit__(self, *exc_info: Any) -> Any:
        return await self.__wrapped__.__aexit__(*exc_info)

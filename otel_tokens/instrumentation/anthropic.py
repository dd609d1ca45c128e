"""Instrumentation of the `anthropic` SDK's Messages API (sync and async, JSON and streams).

Patched: `Messages.create`, `Messages.stream` and `Messages.parse` and their async twins. In the SDK
none of them calls another (each sends through `_post`), so each is one call; the
`inside_llm_call()` guard still keeps a nested patched call from counting twice.
`.with_raw_response` / `.with_streaming_response` call the same patched `create`; their response
wrapper is accounted for by `_raw_response` from what the SDK or the application reads of its body.

The SDK (>= 1.14) emits its own CLIENT span per call (scope `com.anthropic.sdk.python`, name
`anthropic.messages.create`). Our span is current while the SDK sends, so the SDK's span is our
child; the collector treats such a child as the same call, never as a second one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import context
from opentelemetry.context import Context
from opentelemetry.instrumentation.utils import unwrap
from wrapt import wrap_function_wrapper

from otel_tokens import semconv as sc
from otel_tokens._safety import logger
from otel_tokens.instrumentation._anthropic_streams import (
    AsyncOpenTracker,
    AsyncStreamManagerProxy,
    OpenTracker,
    StreamTracker,
    SyncStreamManagerProxy,
    estimate_input,
    input_messages_json,
    observe_async_stream,
    observe_sync_stream,
    output_messages_json,
    usage_tokens,
)
from otel_tokens.instrumentation._cache_replay import MISS, CacheSlot, open_slot
from otel_tokens.instrumentation._call import (
    _INSIDE_CALL_KEY,
    CallSettings,
    LLMCall,
    inside_llm_call,
    internal_error,
)
from otel_tokens.instrumentation._raw_response import ObservedStream, RawResponseCall, raw_response_mode
from otel_tokens.record import TokenCounts

PROVIDER = "anthropic"
OPERATION = "chat"
_MODULE = "anthropic.resources.messages.messages"
_METHODS = ("create", "stream", "parse")

Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]


def instrument(settings: CallSettings) -> None:
    """Patch the Messages resources; a method this SDK version lacks (0.x has no `parse` in old
    releases) is skipped."""
    from anthropic.resources.messages import messages

    wrappers: dict[str, tuple[Wrapper, Wrapper]] = {
        "create": (_sync_call(settings), _async_call(settings)),
        "parse": (_sync_call(settings), _async_call(settings)),
        "stream": (_sync_stream(settings), _async_stream(settings)),
    }
    for method, (sync_wrapper, async_wrapper) in wrappers.items():
        for cls_name, wrapper in (("Messages", sync_wrapper), ("AsyncMessages", async_wrapper)):
            if hasattr(getattr(messages, cls_name), method):
                wrap_function_wrapper(_MODULE, f"{cls_name}.{method}", wrapper)


def uninstrument() -> None:
    from anthropic.resources.messages import messages

    for cls in (messages.Messages, messages.AsyncMessages):
        for method in _METHODS:
            unwrap(cls, method)


# --- opening and finishing a call ---------------------------------------------------------------
def _open_call(
    settings: CallSettings, resource: Any, request: Mapping[str, Any], ctx: Context | None = None
) -> LLMCall | None:
    """The span of one call, or None if our bookkeeping failed (the SDK call goes ahead unobserved)."""
    call: LLMCall | None = None
    try:
        host, port = _server(resource)
        max_tokens = request.get("max_tokens")
        call = LLMCall(  # by position: see `LLMCall.__init__`
            settings,
            PROVIDER,
            OPERATION,
            str(request.get("model") or ""),
            request.get("stream") is True,
            host,
            port,
            max_tokens if isinstance(max_tokens, int) else None,
            ctx,
        )
        if settings.capture_content:
            call.record_content(sc.GEN_AI_INPUT_MESSAGES, input_messages_json(request))
    except Exception:
        internal_error("anthropic: opening span")
    return call


def _admit(call: LLMCall, request: dict[str, Any]) -> dict[str, Any]:
    """The budget guard's pre-send hook: the request to send (model maybe downgraded), or raises."""
    return call.admit(request, request.get("messages"), request.get("system"), _max_tokens(request))


async def _admit_async(call: LLMCall, request: dict[str, Any]) -> dict[str, Any]:
    return await call.admit_async(
        request, request.get("messages"), request.get("system"), _max_tokens(request)
    )


def _cache_slot(call: LLMCall, request: dict[str, Any]) -> CacheSlot | None:
    """The call's response-cache slot (the guard's cache is on, the call may be cached), or None.
    Only `create` / `parse` take part; the `stream()` helper always goes to the provider."""
    guard = call.settings.guard
    if guard is None or guard.response_cache is None:
        return None
    return open_slot(call, "messages", request)


def _max_tokens(request: Mapping[str, Any]) -> int | None:
    value = request.get("max_tokens")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


#: (URL, host, port) of the last base URL read: URL objects are immutable and a process usually has
#: one client, so the URL's parsing properties are read once, not on every call.
_last_server: tuple[Any, str | None, int | None] = (None, None, None)


def _server(resource: Any) -> tuple[str | None, int | None]:
    global _last_server
    client = getattr(resource, "_client", None)
    url = getattr(client, "_base_url", None)  # what the `base_url` property returns
    if url is None:
        url = getattr(client, "base_url", None)
    last_url, host, port = _last_server
    if url is not last_url:
        raw_host, raw_port = getattr(url, "host", None), getattr(url, "port", None)
        host = str(raw_host) if raw_host else None
        port = int(raw_port) if isinstance(raw_port, int) else None
        _last_server = (url, host, port)
    return host, port


def _finish_message(call: LLMCall, message: Any, request: Mapping[str, Any]) -> None:
    tokens = usage_tokens(getattr(message, "usage", None))
    estimated = tokens is None
    if tokens is None:  # a response without usage (a proxy that strips it)
        tokens = TokenCounts(input=estimate_input(call, request))
    stop_reason = getattr(message, "stop_reason", None)
    if call.settings.capture_content:
        try:  # content is optional; the usage above must not be lost to it
            call.record_content(sc.GEN_AI_OUTPUT_MESSAGES, output_messages_json(_text(message), stop_reason))
        except Exception:
            internal_error("anthropic output content")
    call.finish(
        tokens,
        response_model=getattr(message, "model", None),
        response_id=getattr(message, "id", None),
        finish_reasons=[stop_reason] if isinstance(stop_reason, str) else (),
        estimated=estimated,
    )


def _text(message: Any) -> str:
    blocks = getattr(message, "content", None) or []
    return "".join(getattr(b, "text", "") for b in blocks if getattr(b, "type", None) == "text")


def _on_result(call: LLMCall, result: Any, request: Mapping[str, Any]) -> Any:
    """What the application gets back: always the SDK's own object (a stream with its events
    observed). If our bookkeeping fails, the span still ends and the SDK's object returns as is."""
    observed: Any = None
    try:
        observed = _observe(call, result, request)
    except Exception:
        internal_error("anthropic: reading the response")
    if observed is None:
        call.finish(None)
        return result
    return observed


@functools.cache
def _stream_classes() -> tuple[type[Any], type[Any]]:
    """The SDK's stream classes, imported once rather than by an import statement on every call."""
    from anthropic import AsyncStream, Stream

    return Stream, AsyncStream


def _wrapped_stream(result: Any, classes: tuple[type[Any], ...]) -> Any:
    """The SDK stream inside another instrumentation's wrapper (`__wrapped__`, a few levels), or None."""
    for _ in range(4):
        result = getattr(result, "__wrapped__", None)
        if result is None or isinstance(result, classes):
            return result
    return None


def _observe(call: LLMCall, result: Any, request: Mapping[str, Any]) -> Any:
    if raw_response_mode(request) is not None:  # `.with_raw_response` / `.with_streaming_response`
        return _RawResponse(call, request).attach(result)
    stream_class, async_stream_class = _stream_classes()
    if isinstance(result, stream_class):
        return observe_sync_stream(result, StreamTracker(call, request))
    if isinstance(result, async_stream_class):
        return observe_async_stream(result, StreamTracker(call, request))
    inner = (
        _wrapped_stream(result, (stream_class, async_stream_class)) if request.get("stream") is True else None
    )
    if inner is not None:
        # another instrumentation's stream wrapper (OpenLIT's) around the SDK's stream: observe the
        # SDK's stream in place, hand back their wrapper, which reads its events through ours
        observe = observe_sync_stream if isinstance(inner, stream_class) else observe_async_stream
        observe(inner, StreamTracker(call, request))
        return result
    if getattr(result, "usage", None) is None:
        logger.debug("otel-tokens: anthropic returned %s without usage; estimating", type(result).__name__)
    _finish_message(call, result, request)
    return result


class _RawResponse(RawResponseCall):
    """A Messages call made through `.with_raw_response` or `.with_streaming_response`."""

    def __init__(self, call: LLMCall, request: Mapping[str, Any]) -> None:
        super().__init__(call, stream=request.get("stream") is True)
        self.request = request

    def finish_parsed(self, parsed: Any) -> None:
        _finish_message(self.call, parsed, self.request)

    def observe_stream(self, stream: Any) -> ObservedStream | None:
        stream_class, async_stream_class = _stream_classes()
        tracker = StreamTracker(self.call, self.request)
        if isinstance(stream, stream_class):
            return observe_sync_stream(stream, tracker), tracker.closed
        if isinstance(stream, async_stream_class):
            return observe_async_stream(stream, tracker), tracker.closed
        return None

    def finish_estimated(self) -> None:
        self.call.finish(TokenCounts(input=estimate_input(self.call, self.request)), estimated=True)


# --- the wrappers -------------------------------------------------------------------------------
def _sync_call(settings: CallSettings) -> Wrapper:
    def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        ctx = context.get_current()
        nested = _INSIDE_CALL_KEY in ctx and inside_llm_call(ctx)  # the key: only inside our calls
        call = None if nested else _open_call(settings, instance, kwargs, ctx)
        if call is None:
            return wrapped(*args, **kwargs)
        slot = None
        if settings.guard is not None:
            slot = _cache_slot(call, kwargs)
            if slot is not None and (cached := slot.replay(instance._client, is_async=False)) is not MISS:
                return cached
            admitted = _admit(call, kwargs)
            slot, kwargs = (slot if admitted is kwargs else None), admitted  # a rewritten call: not stored
        result = call.invoke(wrapped, args, kwargs)
        if slot is not None:
            result = slot.keep(result)
        return _on_result(call, result, kwargs)

    return wrapper


def _async_call(settings: CallSettings) -> Wrapper:
    async def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        ctx = context.get_current()
        nested = _INSIDE_CALL_KEY in ctx and inside_llm_call(ctx)  # the key: only inside our calls
        call = None if nested else _open_call(settings, instance, kwargs, ctx)
        if call is None:
            return await wrapped(*args, **kwargs)
        slot = None
        if settings.guard is not None:
            slot = _cache_slot(call, kwargs)
            if slot is not None and (cached := slot.replay(instance._client, is_async=True)) is not MISS:
                return cached
            admitted = await _admit_async(call, kwargs)
            slot, kwargs = (slot if admitted is kwargs else None), admitted
        result = await call.invoke_async(wrapped, args, kwargs)
        if slot is not None:
            result = slot.keep(result)
        return _on_result(call, result, kwargs)

    return wrapper


def _tracker_opener(
    settings: CallSettings, resource: Any, kwargs: dict[str, Any], rebuild: Callable[..., Any]
) -> OpenTracker:
    """The stream helper sends its request only when entered; the span opens then, not here. The
    budget guard is asked then too; if it downgrades the model, `rebuild(**request)` makes the
    helper's manager for the cheaper model."""
    request = {**kwargs, "stream": True}

    def open_tracker() -> StreamTracker | None:
        call = _open_call(settings, resource, request)
        if call is None:
            return None
        admitted = _admit(call, request) if settings.guard is not None else request
        return _tracker(call, request, admitted, kwargs, rebuild)

    return open_tracker


def _async_tracker_opener(
    settings: CallSettings, resource: Any, kwargs: dict[str, Any], rebuild: Callable[..., Any]
) -> AsyncOpenTracker:
    """`_tracker_opener` for `AsyncMessages.stream()`: a deferred call waits without blocking."""
    request = {**kwargs, "stream": True}

    async def open_tracker() -> StreamTracker | None:
        call = _open_call(settings, resource, request)
        if call is None:
            return None
        admitted = await _admit_async(call, request) if settings.guard is not None else request
        return _tracker(call, request, admitted, kwargs, rebuild)

    return open_tracker


def _tracker(
    call: LLMCall,
    request: dict[str, Any],
    admitted: dict[str, Any],
    kwargs: dict[str, Any],
    rebuild: Callable[..., Any],
) -> StreamTracker:
    tracker = StreamTracker(call, admitted)
    if admitted is not request:  # downgraded or compressed: the helper must send what was admitted
        rewritten = {"model": admitted["model"], "messages": admitted.get("messages")}
        tracker.replacement_manager = rebuild(**{**kwargs, **rewritten})
    return tracker


def _sync_stream(settings: CallSettings) -> Wrapper:
    def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        manager = wrapped(*args, **kwargs)
        rebuild = functools.partial(wrapped, *args)
        return SyncStreamManagerProxy(manager, _tracker_opener(settings, instance, kwargs, rebuild))

    return wrapper


def _async_stream(settings: CallSettings) -> Wrapper:
    def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        manager = wrapped(*args, **kwargs)
        rebuild = functools.partial(wrapped, *args)
        return AsyncStreamManagerProxy(manager, _async_tracker_opener(settings, instance, kwargs, rebuild))

    return wrapper

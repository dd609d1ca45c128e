"""Instrumentation of the `openai` SDK: Chat Completions, Responses and Embeddings, sync and async.

Only the resource methods that send a request are patched (`create`, and `parse`, which posts on its
own). The `.stream()` helpers call `create(stream=True)` on the same resource, so they are covered
by the `create` patch; `inside_llm_call()` keeps any nested patched call from counting twice. The
helpers close the HTTP response directly when their context manager exits, so their `close` is
patched too, to end the span of a stream abandoned inside a `with` block. Calls made through
`.with_raw_response` / `.with_streaming_response` return the SDK's response wrapper, accounted for
by `_raw_response` from what the SDK or the application reads of its body.

`openai` is imported here only; nothing else in otel_tokens needs it installed.
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import wrapt
from opentelemetry import context
from opentelemetry.context import Context
from opentelemetry.instrumentation.utils import unwrap

from otel_tokens.instrumentation._cache_replay import MISS, CacheSlot, open_slot
from otel_tokens.instrumentation._call import (
    _INSIDE_CALL_KEY,
    CallSettings,
    LLMCall,
    inside_llm_call,
    internal_error,
)
from otel_tokens.instrumentation._openai_extract import (
    Result,
    chat_result,
    embeddings_result,
    input_messages_json,
    output_messages_json,
    responses_result,
)
from otel_tokens.instrumentation._openai_streams import (
    AsyncStreamProxy,
    ChatStreamState,
    ResponsesStreamState,
    StreamState,
    SyncStreamProxy,
    estimate_or_mark,
    notify_closed,
)
from otel_tokens.instrumentation._raw_response import ObservedStream, RawResponseCall, raw_response_mode
from otel_tokens.record import TokenCounts
from otel_tokens.semconv import GEN_AI_INPUT_MESSAGES, GEN_AI_OUTPUT_MESSAGES

PROVIDER = "openai"

Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]


@dataclass(frozen=True, slots=True)
class _Endpoint:
    """How one API's request and response read, independent of sync/async."""

    operation: str  # gen_ai.operation.name
    prompt_arg: str  # the request argument holding the prompt
    max_tokens_args: tuple[str, ...]
    result: Callable[[Any], Result]
    stream_state: type[StreamState] | None  # None: the API does not stream
    captures_content: bool = True
    name: str = ""  # the API, as the response cache names it


_CHAT = _Endpoint(
    "chat",
    "messages",
    ("max_completion_tokens", "max_tokens"),
    chat_result,
    ChatStreamState,
    name="chat.completions",
)
_RESPONSES = _Endpoint(
    "chat", "input", ("max_output_tokens",), responses_result, ResponsesStreamState, name="responses"
)
_EMBEDDINGS = _Endpoint(
    "embeddings", "input", (), embeddings_result, None, captures_content=False, name="embeddings"
)

_CHAT_MODULE = "openai.resources.chat.completions.completions"
_RESPONSES_MODULE = "openai.resources.responses.responses"
#: (module, "Class.method", endpoint) — methods missing from an SDK version are skipped.
_CALL_PATCHES: tuple[tuple[str, str, _Endpoint], ...] = (
    (_CHAT_MODULE, "Completions.create", _CHAT),
    (_CHAT_MODULE, "AsyncCompletions.create", _CHAT),
    (_CHAT_MODULE, "Completions.parse", _CHAT),
    (_CHAT_MODULE, "AsyncCompletions.parse", _CHAT),
    (_RESPONSES_MODULE, "Responses.create", _RESPONSES),
    (_RESPONSES_MODULE, "AsyncResponses.create", _RESPONSES),
    (_RESPONSES_MODULE, "Responses.parse", _RESPONSES),
    (_RESPONSES_MODULE, "AsyncResponses.parse", _RESPONSES),
    ("openai.resources.embeddings", "Embeddings.create", _EMBEDDINGS),
    ("openai.resources.embeddings", "AsyncEmbeddings.create", _EMBEDDINGS),
)
#: The `.stream()` helpers' stream classes, whose `close()` bypasses the raw stream's.
_HELPER_CLOSE_PATCHES: tuple[tuple[str, str], ...] = (
    ("openai.lib.streaming.chat._completions", "ChatCompletionStream.close"),
    ("openai.lib.streaming.chat._completions", "AsyncChatCompletionStream.close"),
    ("openai.lib.streaming.responses._responses", "ResponseStream.close"),
    ("openai.lib.streaming.responses._responses", "AsyncResponseStream.close"),
)

_patched: list[tuple[type[Any], str]] = []
#: What patches use while instrumented (None: not instrumented); modules given a post-import hook.
_settings: CallSettings | None = None
_hooked: set[str] = set()
_patch_lock = threading.RLock()
Finisher = Callable[[_Endpoint, LLMCall, dict[str, Any], Any], None]
#: The SDK's whole-response classes ("module:Class") and how each is finished: a call returning
#: exactly one of these (not a stream, not a raw-response wrapper) is finished straight away,
#: without `_on_result`'s checks. Filled in by `instrument`.
_WHOLE_RESPONSES: tuple[tuple[str, str], ...] = (
    ("openai.types.chat:ChatCompletion", "_finish_chat_completion"),
    ("openai.types.responses:Response", "_finish_from_response"),
    ("openai.types:CreateEmbeddingResponse", "_finish_from_response"),
)
_whole_responses: dict[type[Any], Finisher] = {}


def instrument(settings: CallSettings) -> None:
    """Patch every supported method this SDK version has. Re-instrumenting replaces the patches.

    openai imports its resource modules lazily (`client.responses` loads the Responses API the
    first time it is touched), and importing them all here cost an app that only chats ~50 ms of
    start-up: a module already loaded is patched now, any other the moment the app loads it."""
    global _whole_responses, _settings
    uninstrument()
    finishers = {name: globals()[finisher] for name, finisher in _WHOLE_RESPONSES}
    _whole_responses = {cls: finishers[name] for name in finishers if (cls := _class(name)) is not None}
    _settings = settings
    modules = [name for name, _, _ in _CALL_PATCHES] + [name for name, _ in _HELPER_CLOSE_PATCHES]
    for module_name in dict.fromkeys(modules):
        if module_name in sys.modules:
            _patch_module(sys.modules[module_name])
        elif module_name not in _hooked:  # hooks cannot be removed: one per module, reading `_settings`
            _hooked.add(module_name)
            wrapt.register_post_import_hook(_patch_module, module_name)


def _patch_module(module: Any) -> None:
    """Patch what the patch tables name in `module`, with the settings in force (none: not
    instrumented any more, so nothing)."""
    settings = _settings
    if settings is None:
        return
    with _patch_lock:
        for module_name, path, endpoint in _CALL_PATCHES:
            if module_name == module.__name__ and (owner := _owner(module, path)) is not None:
                # By name: `create` is decorated (`required_args`), hiding that the async one is a coroutine.
                is_async = path.startswith("Async")
                method = path.rsplit(".", 1)[1]
                _patch(owner, method, (_async_call if is_async else _sync_call)(endpoint, settings))
        for module_name, path in _HELPER_CLOSE_PATCHES:
            if module_name == module.__name__ and (owner := _owner(module, path)) is not None:
                _patch(
                    owner, "close", _async_helper_close if path.startswith("Async") else _sync_helper_close
                )


def uninstrument() -> None:
    global _settings
    with _patch_lock:
        _settings = None
        while _patched:
            owner, method = _patched.pop()
            unwrap(owner, method)


def _owner(module: Any, path: str) -> type[Any] | None:
    """The class in `module` owning `path` ("Class.method"), or None when this SDK version lacks either."""
    class_name, method = path.split(".")
    owner = getattr(module, class_name, None)
    return owner if isinstance(owner, type) and callable(getattr(owner, method, None)) else None


def _class(name: str) -> type[Any] | None:
    module_name, class_name = name.split(":")
    try:
        found = getattr(importlib.import_module(module_name), class_name, None)
    except ImportError:
        return None
    return found if isinstance(found, type) else None


def _patch(owner: type[Any], method: str, wrapper: Wrapper) -> None:
    wrapt.wrap_function_wrapper(owner, method, wrapper)
    _patched.append((owner, method))


# --- wrappers -----------------------------------------------------------------------------------
def _sync_call(endpoint: _Endpoint, settings: CallSettings) -> Wrapper:
    def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        ctx = context.get_current()
        if _INSIDE_CALL_KEY in ctx and inside_llm_call(ctx):  # the key is absent outside our calls
            return wrapped(*args, **kwargs)
        prompt = kwargs.get(endpoint.prompt_arg)
        if type(prompt) is not list and isinstance(prompt, Iterator):  # `_materialise_prompt`
            kwargs = _materialise_prompt(endpoint, kwargs)
        call = _open_call(endpoint, settings, instance, kwargs, ctx)
        if call is None:
            return wrapped(*args, **kwargs)
        slot = None
        guard = settings.guard
        if guard is not None:  # `_cache_slot` and the guard's inputs, inline: this runs per guarded call
            if guard.response_cache is not None:
                slot = open_slot(call, endpoint.name, kwargs)
                if slot is not None and (cached := slot.replay(instance._client, is_async=False)) is not MISS:
                    return cached
            prompt_arg = endpoint.prompt_arg
            admitted = call.admit(
                kwargs, kwargs.get(prompt_arg), kwargs.get("instructions"), call.max_tokens, prompt_arg
            )
            if admitted is not kwargs:  # a rewritten call: not stored
                slot, kwargs = None, admitted
        token = call.enter()  # `call.invoke`, inline: no frame of ours under the SDK's call
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            call.failed(token, exc)
            raise
        context.detach(token)
        if slot is not None:
            result = slot.keep(result)
        finish_whole = _whole_responses.get(type(result))
        if finish_whole is not None:  # the common case: no stream, no raw response
            finish_whole(endpoint, call, kwargs, result)
            return result
        return _on_result(endpoint, call, kwargs, result, is_async=False)

    return wrapper


def _async_call(endpoint: _Endpoint, settings: CallSettings) -> Wrapper:
    async def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        ctx = context.get_current()
        if _INSIDE_CALL_KEY in ctx and inside_llm_call(ctx):
            return await wrapped(*args, **kwargs)
        kwargs = _materialise_prompt(endpoint, kwargs)
        call = _open_call(endpoint, settings, instance, kwargs, ctx)
        if call is None:
            return await wrapped(*args, **kwargs)
        slot = None
        if settings.guard is not None:
            slot = _cache_slot(endpoint, call, kwargs)
            if slot is not None and (cached := slot.replay(instance._client, is_async=True)) is not MISS:
                return cached
            prompt_arg = endpoint.prompt_arg  # the output ceiling: the span's own read (`call.max_tokens`)
            admitted = await call.admit_async(
                kwargs, kwargs.get(prompt_arg), kwargs.get("instructions"), call.max_tokens, prompt_arg
            )
            slot, kwargs = (slot if admitted is kwargs else None), admitted
        result = await call.invoke_async(wrapped, args, kwargs)
        if slot is not None:
            result = slot.keep(result)
        finish_whole = _whole_responses.get(type(result))
        if finish_whole is not None:  # the common case: no stream, no raw response
            finish_whole(endpoint, call, kwargs, result)
            return result
        return _on_result(endpoint, call, kwargs, result, is_async=True)

    return wrapper


def _sync_helper_close(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    try:
        return wrapped(*args, **kwargs)
    finally:
        notify_closed(getattr(instance, "_raw_stream", None))


async def _async_helper_close(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    try:
        return await wrapped(*args, **kwargs)
    finally:
        notify_closed(getattr(instance, "_raw_stream", None))


# --- call lifecycle -------------------------------------------------------------------------------
def _cache_slot(endpoint: _Endpoint, call: LLMCall, kwargs: dict[str, Any]) -> CacheSlot | None:
    """The call's response-cache slot (the guard's cache is on, the call may be cached), or None."""
    guard = call.settings.guard
    if guard is None or guard.response_cache is None:
        return None
    return open_slot(call, endpoint.name, kwargs)


def _materialise_prompt(endpoint: _Endpoint, kwargs: dict[str, Any]) -> dict[str, Any]:
    """`messages` may be any iterable; a one-shot iterator would be consumed by the SDK before we
    could count it, so hand the SDK an equal list instead."""
    prompt = kwargs.get(endpoint.prompt_arg)
    if type(prompt) is not list and isinstance(prompt, Iterator):  # skips the ABC check for a list
        return {**kwargs, endpoint.prompt_arg: list(prompt)}
    return kwargs


def _open_call(
    endpoint: _Endpoint,
    settings: CallSettings,
    instance: Any,
    kwargs: dict[str, Any],
    ctx: Context | None = None,
) -> LLMCall | None:
    try:
        # `_server`'s cache hit and `_max_tokens`, inline: this runs per call
        last_url, address, port = _last_server
        try:
            url = instance._client._base_url
        except AttributeError:
            url = None
        if url is not last_url or url is None:
            address, port = _server(instance)
        max_tokens = None
        for name in endpoint.max_tokens_args:
            value = kwargs.get(name)
            if type(value) is int:
                max_tokens = value
                break
        model = kwargs.get("model")
        call = LLMCall(  # by position: see `LLMCall.__init__`
            settings,
            PROVIDER,
            endpoint.operation,
            model if isinstance(model, str) else "",
            kwargs.get("stream") is True,  # `_is_stream_request`, inline
            address,
            port,
            max_tokens,
            ctx,
        )
    except Exception:
        internal_error("openai call start")
        return None
    if endpoint.captures_content and settings.capture_content:
        try:
            prompt = kwargs.get(endpoint.prompt_arg)
            call.record_content(
                GEN_AI_INPUT_MESSAGES, input_messages_json(prompt, kwargs.get("instructions"))
            )
        except Exception:
            internal_error("openai input content")
    return call


#: (URL, host, port) of the last base URL read: URL objects are immutable, and a process usually
#: has one client, so the SDK's URL parsing properties are read once, not on every call.
_last_server: tuple[Any, str | None, int | None] = (None, None, None)


def _server(instance: Any) -> tuple[str | None, int | None]:
    global _last_server
    try:
        # `_base_url` is what the `base_url` property returns; in openai 3.x the property costs ~1 µs.
        url = instance._client._base_url
    except AttributeError:
        url = getattr(getattr(instance, "_client", None), "base_url", None)
    last_url, host, port = _last_server
    if url is not last_url:
        host, port = getattr(url, "host", None), getattr(url, "port", None)
        host, port = (host if isinstance(host, str) else None), (port if isinstance(port, int) else None)
        _last_server = (url, host, port)
    return host, port


def _max_tokens(endpoint: _Endpoint, kwargs: dict[str, Any]) -> int | None:
    """The first output ceiling the request sets as a plain int (not a bool, not the SDK's
    `NOT_GIVEN`)."""
    for name in endpoint.max_tokens_args:
        value = kwargs.get(name)
        if type(value) is int:
            return value
    return None


def _is_stream_request(kwargs: dict[str, Any]) -> bool:
    return kwargs.get("stream") is True


def _on_result(
    endpoint: _Endpoint, call: LLMCall, kwargs: dict[str, Any], result: Any, *, is_async: bool
) -> Any:
    """Hand the caller the SDK's result: streams wrapped so the span ends with them, a raw-response
    wrapper watched until its body is read, anything else unchanged after the span is finished.
    Sync or async is the client's, not guessed from the result: another instrumentation's stream
    proxy (OpenLLMetry's) has both `__next__` and `__anext__`."""
    if raw_response_mode(kwargs) is not None:  # `.with_raw_response` / `.with_streaming_response`
        try:
            return _RawResponse(endpoint, call, kwargs).attach(result)
        except Exception:
            internal_error("openai raw response")
            call.finish(None)
            return result
    if _is_stream_request(kwargs) and endpoint.stream_state is not None:
        state = endpoint.stream_state(call, kwargs.get(endpoint.prompt_arg), kwargs.get("instructions"))
        proxy_type = AsyncStreamProxy if is_async else SyncStreamProxy
        return proxy_type(result, state)
    _finish_from_response(endpoint, call, kwargs, result)
    return result


class _RawResponse(RawResponseCall):
    """A call made through `.with_raw_response` or `.with_streaming_response`."""

    def __init__(self, endpoint: _Endpoint, call: LLMCall, kwargs: dict[str, Any]) -> None:
        super().__init__(call, stream=_is_stream_request(kwargs) and endpoint.stream_state is not None)
        self.endpoint = endpoint
        self.kwargs = kwargs

    def finish_parsed(self, parsed: Any) -> None:
        _finish_from_response(self.endpoint, self.call, self.kwargs, parsed)

    def observe_stream(self, stream: Any) -> ObservedStream | None:
        state_type = self.endpoint.stream_state
        if hasattr(stream, "__anext__"):
            proxy_type: type[SyncStreamProxy | AsyncStreamProxy] = AsyncStreamProxy
        elif hasattr(stream, "__next__"):
            proxy_type = SyncStreamProxy
        else:
            return None  # `parse(to=...)` into something that is not a stream
        assert state_type is not None  # `stream` is only set for endpoints that stream
        kwargs = self.kwargs
        state = state_type(self.call, kwargs.get(self.endpoint.prompt_arg), kwargs.get("instructions"))
        return proxy_type(stream, state), state.closed

    def finish_estimated(self) -> None:
        _finish_estimated(self.endpoint, self.call, self.kwargs)


def _finish_from_response(endpoint: _Endpoint, call: LLMCall, kwargs: dict[str, Any], response: Any) -> None:
    """Finish from a whole response. Each step after reading the usage (estimation, content) fails
    alone, so our error in one of them never costs the call's reported tokens."""
    try:
        result = endpoint.result(response)
    except Exception:
        internal_error("openai response accounting")
        call.finish(None)  # the span must still end
        return
    call.service_tier = result.service_tier
    tokens, estimated = result.tokens, False
    if tokens is None:
        model = result.response_model or call.request_model
        prompt = kwargs.get(endpoint.prompt_arg)
        tokens = estimate_or_mark(call, prompt, kwargs.get("instructions"), result.output_text, model)
        estimated = True
    if endpoint.captures_content and call.settings.capture_content:
        try:
            output = output_messages_json(result.output_text, result.finish_reasons)
            call.record_content(GEN_AI_OUTPUT_MESSAGES, output)
        except Exception:
            internal_error("openai output content")
    call.finish(
        tokens,
        response_model=result.response_model,
        response_id=result.response_id,
        finish_reasons=result.finish_reasons,
        estimated=estimated,
    )


def _finish_chat_completion(
    endpoint: _Endpoint, call: LLMCall, kwargs: dict[str, Any], completion: Any
) -> None:
    """`_finish_from_response` for the SDK's own `ChatCompletion` in the common case (usage
    reported, one choice, content capture off): its fields read as attributes (a read costs a
    fraction of a `getattr(obj, name, None)` call) and handed to `finish` without building a
    `Result`. Anything else, or any field missing or odd, takes the general, duck-typed path."""
    try:
        # The fields from the instance dict, where pydantic (v1 and v2) keeps them: an attribute read
        # on an SDK model goes through pydantic's `__getattr__` hook (~650 instructions each, 13
        # here), a dict subscript does not. A field missing there takes the general path.
        fields = completion.__dict__
        usage, choices = fields["usage"], fields["choices"]
        if usage is None or len(choices) != 1 or call.settings.capture_content:
            _finish_from_response(endpoint, call, kwargs, completion)
            return
        reason = choices[0].finish_reason
        counts = usage.__dict__
        prompt, output = counts["prompt_tokens"], counts["completion_tokens"]
        prompt_details, output_details = counts["prompt_tokens_details"], counts["completion_tokens_details"]
        cached = prompt_details.cached_tokens if prompt_details is not None else 0
        reasoning = output_details.reasoning_tokens if output_details is not None else 0
        model, response_id, tier = fields["model"], fields["id"], fields["service_tier"]
    except Exception:  # e.g. a field a proxy or an older SDK leaves out
        _finish_from_response(endpoint, call, kwargs, completion)
        return
    tokens = TokenCounts(
        prompt if isinstance(prompt, int) else 0,
        output if isinstance(output, int) else 0,
        cached if isinstance(cached, int) else 0,
        0,
        reasoning if isinstance(reasoning, int) else 0,
    )
    # as `service_tier()` bounds it: only ever looked up among the known tiers
    call.service_tier = tier if isinstance(tier, str) and 0 < len(tier) <= 64 else None
    call.finish(  # by position: see `LLMCall.finish`
        tokens,
        model if isinstance(model, str) else None,
        response_id if isinstance(response_id, str) else None,
        [reason] if isinstance(reason, str) else (),
    )


def _finish_estimated(endpoint: _Endpoint, call: LLMCall, kwargs: dict[str, Any]) -> None:
    prompt = kwargs.get(endpoint.prompt_arg)
    tokens = estimate_or_mark(call, prompt, kwargs.get("instructions"), "", call.request_model)
    call.finish(tokens, estimated=True)

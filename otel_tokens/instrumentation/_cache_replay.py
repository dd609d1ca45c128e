"""The response cache at the SDK edge: answer a call from a stored response, or store this one.

A cache hit hands the application the SDK's own type — the response model for a JSON call, and for
`stream=True` the SDK's own `Stream` / `AsyncStream`, fed the stored events as server-sent events
through an in-memory HTTP response, so the SDK parses them exactly as it parses the provider's.
The span of a hit says `otel_tokens.cache.hit`, reports 0 tokens used (none were billed) and
carries a `saved` event with the tokens the original call used.

A miss is sent as usual; the response (or every event of a stream read to its end) is kept and
stored when the call finishes ok, with the usage it had. Only plain `create` calls take part:
`.with_raw_response` / `.with_streaming_response` and `parse()` (its `response_format` is a class,
which has no canonical form) go to the provider every time. Every failure here is ours: logged
once, and the call goes to the provider.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from otel_tokens import semconv as sc
from otel_tokens.instrumentation._call import LLMCall, internal_error
from otel_tokens.instrumentation._raw_response import raw_response_mode
from otel_tokens.record import TokenCounts, UsageRecord

if TYPE_CHECKING:
    from otel_tokens.guard.cache import ResponseCache

__all__ = ["MISS", "CacheSlot", "open_slot"]

MISS: Any = object()
_FORMAT = 1
#: (provider, endpoint) → (module, name) of the type the SDK casts each stream event to.
_STREAM_EVENT_TYPES = {
    ("openai", "chat.completions"): ("openai.types.chat", "ChatCompletionChunk"),
    ("openai", "responses"): ("openai.types.responses", "ResponseStreamEvent"),
    ("anthropic", "messages"): ("anthropic.types", "RawMessageStreamEvent"),
}
_SDK_PACKAGES = ("openai", "anthropic")


def open_slot(call: LLMCall, endpoint: str, kwargs: dict[str, Any]) -> CacheSlot | None:
    """The call's place in the response cache, or None when the cache is off for it."""
    guard = call.settings.guard
    if guard is None or guard.response_cache is None or raw_response_mode(kwargs) is not None:
        return None
    try:
        found = guard.cache_key(call.guard_request(None, None, None), endpoint, kwargs)
    except Exception:
        internal_error("response cache key")
        return None
    if found is None:
        return None
    key, budget = found
    return CacheSlot(guard.response_cache, call, endpoint, key, budget, kwargs.get("stream") is True)


class CacheSlot:
    """One cacheable call: look it up, and on a miss keep its response for `commit`."""

    def __init__(
        self, cache: ResponseCache, call: LLMCall, endpoint: str, key: str, budget: str | None, stream: bool
    ) -> None:
        self.cache = cache
        self.call = call
        self.endpoint = endpoint
        self.key = key
        self.budget = budget
        self.stream = stream
        self._entry: dict[str, Any] | None = None  # the response to store, once complete

    # --- a hit ------------------------------------------------------------------------------------
    def replay(self, client: Any, is_async: bool) -> Any:
        """The stored response as the SDK's own object (the span ended), or MISS."""
        try:
            raw = self.cache.get(self.key)
            if raw is None:
                return MISS
            entry = json.loads(raw)
            if entry.get("v") != _FORMAT:
                return MISS
            if entry["kind"] == "sse":
                result = self._stream(entry, client, is_async)
            else:
                result = _construct(entry["type"], entry["body"])
        except Exception:
            internal_error("response cache replay")
            return MISS
        self._finish_hit(entry)
        return result

    def _stream(self, entry: dict[str, Any], client: Any, is_async: bool) -> Any:
        sdk = importlib.import_module(self.call.provider)
        module, name = _STREAM_EVENT_TYPES[(self.call.provider, self.endpoint)]
        cast_to = getattr(importlib.import_module(module), name)
        stream_type = sdk.AsyncStream if is_async else sdk.Stream
        return stream_type(cast_to=cast_to, response=self._http_response(sdk, entry["body"]), client=client)

    def _http_response(self, sdk: Any, events: list[dict[str, Any]]) -> Any:
        """An in-memory HTTP response with `events` as the provider's SSE body."""
        base = importlib.import_module(f"{sdk.__name__}._base_client")
        http = getattr(base, "httpx2", None) or base.httpx  # the SDK's own HTTP library
        lines = []
        for event in events:
            data = json.dumps(event, separators=(",", ":"))
            # Anthropic's stream dispatches on the SSE event name; OpenAI's reads `data` only.
            lines.append(
                f"event: {event['type']}\ndata: {data}\n\n"
                if self.call.provider == "anthropic"
                else f"data: {data}\n\n"
            )
        if self.call.provider == "openai":
            lines.append("data: [DONE]\n\n")
        request = http.Request("POST", f"https://cache.invalid/{self.endpoint}")
        headers = {"content-type": "text/event-stream"}
        return http.Response(200, headers=headers, content="".join(lines).encode(), request=request)

    def _finish_hit(self, entry: dict[str, Any]) -> None:
        call = self.call
        saved = TokenCounts(*entry.get("tokens", ()))
        call.span.set_attribute(sc.OTEL_TOKENS_CACHE_HIT, True)
        call.add_saved_event(sc.SAVED_CACHED, saved.input + saved.output, self.budget)
        call.finish(TokenCounts(), response_model=entry.get("model"), response_id=entry.get("id"))

    # --- a miss -----------------------------------------------------------------------------------
    def keep(self, result: Any) -> Any:
        """Watch the provider's response so it can be stored when the call finishes ok."""
        try:
            if self.stream:
                self._keep_stream(result)
            elif type(result).__module__.split(".")[0] in _SDK_PACKAGES:
                self._entry = {"kind": "json", "type": _type_name(result), "body": _dump(result)}
            self.call.cache_slot = self
        except Exception:
            internal_error("response cache keep")
        return result

    def _keep_stream(self, stream: Any) -> None:
        events: list[dict[str, Any]] = []
        iterator = stream._iterator

        def completed() -> None:
            self._entry = {"kind": "sse", "body": events}

        if hasattr(iterator, "__anext__"):
            stream._iterator = _recorded_async(iterator, events, completed)
        else:
            stream._iterator = _recorded(iterator, events, completed)

    def commit(self, record: UsageRecord | None) -> None:
        """Store the kept response (called from `LLMCall.finish`): only a complete, ok call."""
        entry, self._entry = self._entry, None
        if entry is None or record is None or record.status != "ok":
            return
        t = record.tokens
        entry.update(
            v=_FORMAT, model=record.response_model,
            tokens=[t.input, t.output, t.cache_read, t.cache_write, t.reasoning, t.cache_write_1h],
        )  # fmt: skip
        try:
            self.cache.put(self.key, json.dumps(entry, separators=(",", ":")).encode())
        except Exception:
            internal_error("response cache store")


def _recorded(events: Iterator[Any], into: list[dict[str, Any]], completed: Any) -> Iterator[Any]:
    for event in events:
        into.append(_dump(event))
        yield event
    completed()  # only a stream read to its end is stored


async def _recorded_async(
    events: AsyncIterator[Any], into: list[dict[str, Any]], completed: Any
) -> AsyncIterator[Any]:
    async for event in events:
        into.append(_dump(event))
        yield event
    completed()


def _dump(model: Any) -> Any:
    """What the provider sent, as JSON (fields it did not send stay out)."""
    return model.model_dump(mode="json", exclude_unset=True, by_alias=True)


def _type_name(value: Any) -> str:
    return f"{type(value).__module__}:{type(value).__qualname__}"


def _construct(name: str, body: Any) -> Any:
    """The SDK response type stored as `module:qualname` (only the SDKs' own modules), built from
    `body` the way the SDK builds it from the provider's JSON (`construct_type`: no validation, so
    a field the SDK does not know or miss is kept as the provider sent it)."""
    module, _, qualname = name.partition(":")
    package = module.split(".")[0]
    if package not in _SDK_PACKAGES or "." in qualname:
        raise ValueError(f"not an SDK response type: {name!r}")
    response_type = getattr(importlib.import_module(module), qualname)
    construct_type = getattr(importlib.import_module(f"{package}._models"), "construct_type", None)
    if construct_type is None:
        return response_type.construct(**body)
    return construct_type(type_=response_type, value=body)

"""Stream proxies: the span of a streamed OpenAI call ends when the stream does, however it ends.

The SDK hands the caller a `Stream` / `AsyncStream`; we hand back a `wrapt.ObjectProxy` around it, so
`isinstance`, attribute access (`.response`), context-manager use and `close()` behave exactly as
without us, while every chunk passes through a `StreamState` that keeps what usage accounting needs.

A stream can end four ways, and each ends the span exactly once:
- read to the end: reported usage when the provider sent it, else a tokenizer estimate; if the
  terminal event never came (the connection was cut and looked like an end of body) the span
  is an error, because the call did not complete;
- raised mid-way (connection broken, timeout): error status, the consumed part estimated;
- closed early by the caller (`close()`, leaving a `with` block, the SDK helper's close): ok status,
  the consumed part estimated;
- garbage-collected unread: as closed early.

Per chunk the work is a few attribute reads and, for text deltas, one list append (no context
manager, no allocation otherwise). The text is kept even when the request asked for usage
(`include_usage`): usage only comes on the last chunk, and a stream broken or closed before it is
estimated from the text consumed. It is joined only when it is needed: for that estimate, or for
the output message under content capture.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any

import wrapt

from otel_tokens.instrumentation._call import LLMCall, internal_error
from otel_tokens.instrumentation._openai_extract import (
    chat_tokens,
    estimate_tokens,
    output_messages_json,
    responses_result,
    service_tier,
)
from otel_tokens.record import TokenCounts
from otel_tokens.semconv import ENRICHMENT_ESTIMATION, GEN_AI_OUTPUT_MESSAGES

#: error.type of a stream whose body ended before the provider's terminal event.
INCOMPLETE_STREAM = "incomplete_stream"


def estimate_or_mark(
    call: LLMCall, prompt: Any, instructions: Any, output_text: str, model: str
) -> TokenCounts:
    """`estimate_tokens`, or zero counts with the record marked "estimation failed" when the
    tokenizer raised: the call is still recorded (status, model, attribution), never dropped."""
    try:
        return estimate_tokens(prompt, instructions, output_text, model)
    except Exception:
        call.enrichment_failed(ENRICHMENT_ESTIMATION, "openai token estimation")
        return TokenCounts()


if TYPE_CHECKING:
    _ProxyBase = wrapt.ObjectProxy[Any]
else:
    _ProxyBase = wrapt.ObjectProxy


class StreamState:
    """What one stream has delivered so far, and the one place its span is finished."""

    def __init__(self, call: LLMCall, prompt: Any, instructions: Any = None) -> None:
        self.call = call
        self.prompt = prompt
        self.instructions = instructions
        self.text: list[str] = []
        self.tokens: TokenCounts | None = None
        self.response_model: str | None = None
        self.response_id: str | None = None
        self.finish_reasons: list[str] = []
        self.service_tier: str | None = None
        self.complete = False
        self._done = False

    def observe(self, item: Any) -> None:
        try:
            self._observe(item)
        except Exception:
            internal_error("openai stream item")

    def _observe(self, item: Any) -> None:
        raise NotImplementedError

    def end_of_stream(self) -> None:
        self._finish(error_type=None if self.complete else INCOMPLETE_STREAM)

    def failed(self, error: BaseException) -> None:
        self._finish(error=error)

    def closed(self) -> None:
        self._finish()

    def _finish(self, error: BaseException | None = None, error_type: str | None = None) -> None:
        if self._done:
            return
        self._done = True
        tokens, estimated = self.tokens, False
        try:
            self.call.service_tier = self.service_tier
            if tokens is None:
                tokens, estimated = self._estimate(), True
        except Exception:
            internal_error("openai stream estimate")
        try:
            if self.call.settings.capture_content:
                text = "".join(self.text)
                self.call.record_content(
                    GEN_AI_OUTPUT_MESSAGES, output_messages_json(text, self.finish_reasons)
                )
        except Exception:
            internal_error("openai stream accounting")
        finally:
            self.call.finish(
                tokens,
                response_model=self.response_model,
                response_id=self.response_id,
                finish_reasons=self.finish_reasons,
                estimated=estimated,
                error=error,
                error_type=error_type,
            )

    def _estimate(self) -> TokenCounts:
        model = self.response_model or self.call.request_model
        return estimate_or_mark(self.call, self.prompt, self.instructions, "".join(self.text), model)


class ChatStreamState(StreamState):
    """Chat Completions chunks: text in `choices[].delta.content`, usage on the last chunk only when
    the request asked for it with `stream_options={"include_usage": True}`."""

    def _observe(self, chunk: Any) -> None:
        # The last non-empty model and id win (Azure's first chunk has neither).
        model = getattr(chunk, "model", None)
        if model:
            self.response_model = model
        response_id = getattr(chunk, "id", None)
        if response_id:
            self.response_id = response_id
        if self.service_tier is None:  # every chunk repeats it: read until one has it
            self.service_tier = service_tier(chunk)
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            self.tokens = chat_tokens(usage)
        for choice in getattr(chunk, "choices", None) or ():
            content = getattr(getattr(choice, "delta", None), "content", None)
            if isinstance(content, str):
                self.text.append(content)
            reason = getattr(choice, "finish_reason", None)
            if isinstance(reason, str):
                self.finish_reasons.append(reason)
                self.complete = True


_TERMINAL_RESPONSE_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


class ResponsesStreamState(StreamState):
    """Responses API typed events: text in `response.output_text.delta`, usage on the terminal
    `response.completed` / `response.incomplete` / `response.failed` event."""

    def _observe(self, event: Any) -> None:
        kind = getattr(event, "type", None)
        if kind == "response.output_text.delta":
            delta = getattr(event, "delta", None)
            if isinstance(delta, str):
                self.text.append(delta)
        elif kind in ("response.created", "response.in_progress") or kind in _TERMINAL_RESPONSE_EVENTS:
            result = responses_result(getattr(event, "response", None))
            self.response_model = result.response_model or self.response_model
            self.response_id = result.response_id or self.response_id
            if kind in _TERMINAL_RESPONSE_EVENTS:
                self.tokens = result.tokens
                self.service_tier = result.service_tier
                self.finish_reasons = result.finish_reasons
                self.complete = True


def notify_closed(stream: object) -> None:
    """The SDK's `.stream()` helpers close the HTTP response directly, bypassing our proxy's
    `close()`; their close is patched to tell the proxy here."""
    if isinstance(stream, (SyncStreamProxy, AsyncStreamProxy)):
        stream._self_state.closed()


class SyncStreamProxy(_ProxyBase):
    """A `Stream` that reports to its `StreamState`; everything else is the SDK's object."""

    def __init__(self, stream: Any, state: StreamState) -> None:
        super().__init__(stream)
        self._self_state = state

    def __iter__(self) -> SyncStreamProxy:
        return self

    def __next__(self) -> Any:
        state = self._self_state
        try:
            item = self.__wrapped__.__next__()
        except StopIteration:
            state.end_of_stream()
            raise
        except BaseException as exc:
            state.failed(exc)
            raise
        try:  # `state.observe(item)`, inlined: this runs once per chunk
            state._observe(item)
        except Exception:
            internal_error("openai stream item")
        return item

    def __enter__(self) -> SyncStreamProxy:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Any:
        try:
            return self.__wrapped__.__exit__(exc_type, exc, tb)
        finally:
            self._self_state.closed()

    def close(self) -> None:
        try:
            self.__wrapped__.close()
        finally:
            self._self_state.closed()

    def __del__(self) -> None:
        state = getattr(self, "_self_state", None)
        if state is not None:
            state.closed()


class AsyncStreamProxy(_ProxyBase):
    """An `AsyncStream` that reports to its `StreamState`; everything else is the SDK's object."""

    def __init__(self, stream: Any, state: StreamState) -> None:
        super().__init__(stream)
        self._self_state = state

    def __aiter__(self) -> AsyncStreamProxy:
        return self

    async def __anext__(self) -> Any:
        state = self._self_state
        try:
            item = await self.__wrapped__.__anext__()
        except StopAsyncIteration:
            state.end_of_stream()
            raise
        except BaseException as exc:
            state.failed(exc)
            raise
        try:  # `state.observe(item)`, inlined: this runs once per chunk
            state._observe(item)
        except Exception:
            internal_error("openai stream item")
        return item

    async def __aenter__(self) -> AsyncStreamProxy:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Any:
        try:
            return await self.__wrapped__.__aexit__(exc_type, exc, tb)
        finally:
            self._self_state.closed()

    async def close(self) -> None:
        try:
            await self.__wrapped__.close()
        finally:
            self._self_state.closed()

    def __del__(self) -> None:
        state = getattr(self, "_self_state", None)
        if state is not None:
            state.closed()

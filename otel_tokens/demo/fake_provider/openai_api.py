"""The fake provider's OpenAI wire format: Chat Completions, Responses and Embeddings, JSON and SSE.

Usage is a pure function of the request, so a test can predict it and compare span totals with the
ledger exactly:

- input tokens: one per 4 characters of request text (rounded up) plus 3 per message or input item;
- output: a fixed reply, one token per streamed piece; models whose name starts with "o" (the
  reasoning families) also report `REASONING_TOKENS` reasoning tokens, included in the output count
  as OpenAI does;
- a request carrying `prompt_cache_key` reports half its input tokens as cached (included in the
  input count, again as OpenAI does);
- the response's `service_tier` is the requested one (`flex`, `priority`, ...), `default` for
  none or `auto`, as the real API answers.
"""

from __future__ import annotations

import base64
import itertools
import math
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from otel_tokens.demo.fake_provider.server import FakeProvider, FakeRequest, FakeResponse, ReportedUsage
from otel_tokens.record import TokenCounts

#: The reply, streamed piece by piece; each piece counts as one output token.
REPLY_PIECES: tuple[str, ...] = ("Hello", " from", " the", " fake", " OpenAI", " provider", ".")
REPLY_TEXT = "".join(REPLY_PIECES)
REASONING_TOKENS = 16
EMBEDDING_DIMENSIONS = 8
#: Requested model → the dated snapshot the API answers with (others are echoed unchanged).
RESPONSE_MODELS: dict[str, str] = {
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4o": "gpt-4o-2024-08-06",
}
_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class _Usage:
    """One call's usage in OpenAI's own terms (input and output include cached and reasoning)."""

    input: int
    output: int
    cached: int = 0
    reasoning: int = 0

    def tokens(self) -> TokenCounts:
        return TokenCounts(
            input=self.input, output=self.output, cache_read=self.cached, reasoning=self.reasoning
        )


def register(fake: FakeProvider) -> None:
    fake.route("POST", "/v1/chat/completions", _chat)
    fake.route("POST", "/v1/responses", _responses)
    fake.route("POST", "/v1/embeddings", _embeddings)
    fake.error_body_for("/v1/", _error_body)


def _error_body(status: int) -> dict[str, Any]:
    kinds = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_exceeded"}
    return {
        "error": {
            "message": f"injected HTTP {status}",
            "type": kinds.get(status, "server_error"),
            "param": None,
            "code": kinds.get(status, "server_error"),
        }
    }


# --- deterministic usage ----------------------------------------------------------------------
def _text_of(value: Any) -> str:
    """All text in a message list / input item list / content part list, in order."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(_text_of(v) for v in value)
    if isinstance(value, dict):
        return "".join(_text_of(value[k]) for k in ("content", "text", "input_text") if k in value)
    return ""


def _count_items(value: Any) -> int:
    return len(value) if isinstance(value, list) else 1


def _usage_for(body: dict[str, Any], prompt: Any, extra_text: str = "") -> _Usage:
    text = _text_of(prompt) + extra_text
    input_tokens = math.ceil(len(text) / 4) + 3 * _count_items(prompt)
    reasoning = REASONING_TOKENS if str(body.get("model", "")).startswith("o") else 0
    cached = input_tokens // 2 if body.get("prompt_cache_key") else 0
    return _Usage(
        input=input_tokens, output=len(REPLY_PIECES) + reasoning, cached=cached, reasoning=reasoning
    )


def _response_model(body: dict[str, Any]) -> str:
    model = str(body.get("model", ""))
    return RESPONSE_MODELS.get(model, model)


def _service_tier(body: dict[str, Any]) -> str:
    tier = body.get("service_tier")
    return tier if isinstance(tier, str) and tier not in ("", "auto") else "default"


def _record(fake: FakeProvider, request: FakeRequest, usage: _Usage, sent: bool) -> None:
    model = str(request.body.get("model", ""))
    fake.record(ReportedUsage("openai", model, usage.tokens(), sent=sent, path=request.path))


# --- chat completions -------------------------------------------------------------------------
def _chat(request: FakeRequest, fake: FakeProvider) -> FakeResponse:
    body = request.body
    usage = _usage_for(body, body.get("messages", []))
    if not body.get("stream"):
        _record(fake, request, usage, sent=True)
        return FakeResponse(body=_chat_completion(body, usage))
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    _record(fake, request, usage, sent=include_usage)
    return FakeResponse(events=_chat_chunks(body, usage, include_usage))


def _chat_usage(usage: _Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input,
        "completion_tokens": usage.output,
        "total_tokens": usage.input + usage.output,
        "prompt_tokens_details": {"cached_tokens": usage.cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": usage.reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _chat_base(body: dict[str, Any], obj: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-fake{next(_ids)}",
        "object": obj,
        "created": int(time.time()),
        "model": _response_model(body),
        "system_fingerprint": "fp_fake",
        "service_tier": _service_tier(body),
    }


def _chat_completion(body: dict[str, Any], usage: _Usage) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": REPLY_TEXT, "refusal": None, "annotations": []}
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
    return {**_chat_base(body, "chat.completion"), "choices": [choice], "usage": _chat_usage(usage)}


def _chat_chunks(body: dict[str, Any], usage: _Usage, include_usage: bool) -> Iterator[tuple[None, Any]]:
    base = _chat_base(body, "chat.completion.chunk")
    extra = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> tuple[None, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return None, {**base, "choices": [choice], **extra}

    yield chunk({"role": "assistant", "content": "", "refusal": None})
    for piece in REPLY_PIECES:
        yield chunk({"content": piece})
    yield chunk({}, "stop")
    if include_usage:
        yield None, {**base, "choices": [], "usage": _chat_usage(usage)}
    yield None, "[DONE]"


# --- responses --------------------------------------------------------------------------------
def _responses(request: FakeRequest, fake: FakeProvider) -> FakeResponse:
    body = request.body
    usage = _usage_for(body, body.get("input", ""), str(body.get("instructions") or ""))
    # The Responses API always reports usage, streamed (in `response.completed`) or not.
    _record(fake, request, usage, sent=True)
    if body.get("stream"):
        return FakeResponse(events=_response_events(body, usage))
    return FakeResponse(body=_response_object(body, usage, f"resp_fake{next(_ids)}", completed=True))


def _output_message(item_id: str, completed: bool) -> dict[str, Any]:
    content = [{"type": "output_text", "text": REPLY_TEXT, "annotations": [], "logprobs": []}]
    return {
        "type": "message",
        "id": item_id,
        "status": "completed" if completed else "in_progress",
        "role": "assistant",
        "content": content if completed else [],
    }


def _response_object(body: dict[str, Any], usage: _Usage, resp_id: str, completed: bool) -> dict[str, Any]:
    return {
        "id": resp_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed" if completed else "in_progress",
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": _response_model(body),
        "output": [_output_message(f"msg_{resp_id}", True)] if completed else [],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": _responses_usage(usage) if completed else None,
        "user": None,
        "metadata": {},
        "service_tier": _service_tier(body),
    }


def _responses_usage(usage: _Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input,
        "input_tokens_details": {"cached_tokens": usage.cached},
        "output_tokens": usage.output,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning},
        "total_tokens": usage.input + usage.output,
    }


def _response_events(body: dict[str, Any], usage: _Usage) -> Iterator[tuple[str, Any]]:
    resp_id = f"resp_fake{next(_ids)}"
    item_id = f"msg_{resp_id}"
    seq = itertools.count()
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    part = {"type": "output_text", "annotations": [], "logprobs": []}

    def event(kind: str, **fields: Any) -> tuple[str, Any]:
        return kind, {"type": kind, "sequence_number": next(seq), **fields}

    yield event("response.created", response=_response_object(body, usage, resp_id, completed=False))
    yield event("response.in_progress", response=_response_object(body, usage, resp_id, completed=False))
    yield event("response.output_item.added", output_index=0, item=_output_message(item_id, False))
    yield event("response.content_part.added", **where, part={**part, "text": ""})
    for piece in REPLY_PIECES:
        yield event("response.output_text.delta", **where, delta=piece, logprobs=[])
    yield event("response.output_text.done", **where, text=REPLY_TEXT, logprobs=[])
    yield event("response.content_part.done", **where, part={**part, "text": REPLY_TEXT})
    yield event("response.output_item.done", output_index=0, item=_output_message(item_id, True))
    yield event("response.completed", response=_response_object(body, usage, resp_id, completed=True))


# --- embeddings -------------------------------------------------------------------------------
def _embeddings(request: FakeRequest, fake: FakeProvider) -> FakeResponse:
    body = request.body
    inputs = body.get("input", "")
    items = inputs if isinstance(inputs, list) and not all(isinstance(i, int) for i in inputs) else [inputs]
    prompt_tokens = sum(len(i) if isinstance(i, list) else math.ceil(len(str(i)) / 4) for i in items)
    usage = _Usage(input=prompt_tokens, output=0)
    _record(fake, request, usage, sent=True)
    as_base64 = body.get("encoding_format") == "base64"
    data = [
        {"object": "embedding", "index": n, "embedding": _vector(n, as_base64)} for n in range(len(items))
    ]
    return FakeResponse(
        body={
            "object": "list",
            "data": data,
            "model": str(body.get("model", "")),
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }
    )


def _vector(seed: int, as_base64: bool) -> list[float] | str:
    values = [(seed + 1) / (d + 1) for d in range(EMBEDDING_DIMENSIONS)]
    if as_base64:
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
    return values

"""The Anthropic Messages API wire format of the fake provider: `POST /v1/messages`, JSON and SSE.

Usage is a deterministic function of the request, so a test can predict it, and prompt caching is
simulated the way Anthropic bills it: the text up to the last block marked `cache_control` is the
cached prefix; the first request with a given prefix writes it (`cache_creation_input_tokens`), later
ones read it (`cache_read_input_tokens`). Anthropic's `input_tokens` excludes both, and so does ours.
A marker's `"ttl": "1h"` makes the blocks it closes 1-hour writes: `usage.cache_creation` splits the
writes into `ephemeral_5m_input_tokens` and `ephemeral_1h_input_tokens`, as the real API does.
The cache lives per `FakeProvider` instance, so tests never see each other's prefixes.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from otel_tokens.demo.fake_provider.server import FakeProvider, FakeRequest, FakeResponse, ReportedUsage
from otel_tokens.record import TokenCounts

PATH = "/v1/messages"
_CHARS_PER_TOKEN = 4  # the fake's "tokenizer": one token per 4 characters, at least 1
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


@dataclass(frozen=True, slots=True)
class _Usage:
    """Usage in Anthropic's own meaning: `input_tokens` excludes cache reads and writes."""

    input_tokens: int
    output_tokens: int
    cache_read: int = 0
    cache_write: int = 0
    cache_write_1h: int = 0  # the part of cache_write written with the 1-hour TTL

    def wire(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_input_tokens": self.cache_read,
            "cache_creation_input_tokens": self.cache_write,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.cache_write - self.cache_write_1h,
                "ephemeral_1h_input_tokens": self.cache_write_1h,
            },
        }

    def semconv(self) -> TokenCounts:
        return TokenCounts.from_anthropic(
            self.input_tokens, self.output_tokens, self.cache_read, self.cache_write, self.cache_write_1h
        )


def register(fake: FakeProvider) -> None:
    """Add the Messages API to `fake`, with a prompt cache and message ids of its own."""
    api = _MessagesApi()
    fake.route("POST", PATH, api.handle)
    fake.error_body_for(PATH, error_body)


def error_body(status: int) -> dict[str, Any]:
    """Anthropic's error envelope; the SDK maps the status to its exception class."""
    kind = _ERROR_TYPES.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": f"fake provider: injected HTTP {status}"}}


def tokens_for(text: str) -> int:
    """The fake's token count of `text` (tests use it to predict usage)."""
    return max(1, len(text) // _CHARS_PER_TOKEN) if text else 0


class _MessagesApi:
    """Per-FakeProvider state: which cached prefixes were already written, and message ids."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cached_prefixes: set[str] = set()
        self._ids = itertools.count(1)

    def handle(self, request: FakeRequest, fake: FakeProvider) -> FakeResponse:
        body = request.body
        missing = [k for k in ("model", "max_tokens", "messages") if k not in body]
        if missing:
            return FakeResponse(status=400, body=_invalid(f"missing required field(s): {missing}"))
        model = str(body["model"])
        words = _reply_words(body)
        stop_reason = "max_tokens" if len(words) > int(body["max_tokens"]) else "end_turn"
        words = words[: int(body["max_tokens"])]
        usage = self._usage(body, len(words))
        fake.record(
            ReportedUsage(provider="anthropic", model=model, tokens=usage.semconv(), path=request.path)
        )
        with self._lock:
            message_id = f"msg_fake{next(self._ids):06d}"
        headers = {"request-id": f"req_{message_id}"}
        if body.get("stream"):
            events = _stream_events(message_id, model, words, usage, stop_reason)
            return FakeResponse(events=events, headers=headers)
        message = _message(message_id, model, " ".join(words), usage, stop_reason)
        return FakeResponse(body=message, headers=headers)

    def _usage(self, body: dict[str, Any], output_tokens: int) -> _Usage:
        blocks = _blocks(body)
        total = sum(tokens_for(text) for text, _ in blocks)
        cut = max((i for i, (_, ttl) in enumerate(blocks) if ttl), default=-1)
        if cut < 0:
            return _Usage(input_tokens=total, output_tokens=output_tokens)
        prefix_text = "\x00".join(text for text, _ in blocks[: cut + 1])
        prefix = sum(tokens_for(text) for text, _ in blocks[: cut + 1])
        one_hour = _one_hour_tokens(blocks[: cut + 1])
        key = hashlib.sha256(f"{body['model']}\x00{prefix_text}".encode()).hexdigest()
        with self._lock:
            seen = key in self._cached_prefixes
            self._cached_prefixes.add(key)
        if seen:
            return _Usage(total - prefix, output_tokens, cache_read=prefix)
        return _Usage(total - prefix, output_tokens, cache_write=prefix, cache_write_1h=one_hour)


def _one_hour_tokens(blocks: list[tuple[str, str | None]]) -> int:
    """Tokens of the blocks whose closing marker (the next one at or after them) has `ttl: 1h`."""
    one_hour, pending = 0, 0
    for text, ttl in blocks:
        pending += tokens_for(text)
        if ttl:
            one_hour += pending if ttl == "1h" else 0
            pending = 0
    return one_hour


def _blocks(body: dict[str, Any]) -> list[tuple[str, str | None]]:
    """Every text of the prompt in cache order (system, then messages), each with the TTL of the
    `cache_control` marker that ends a cached prefix there ("5m" or "1h"), else None."""
    out: list[tuple[str, str | None]] = []
    system = body.get("system")
    if isinstance(system, str):
        out.append((system, None))
    elif isinstance(system, list):
        out.extend(_content_blocks(system))
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            out.append((content, None))
        elif isinstance(content, list):
            out.extend(_content_blocks(content))
    return out


def _content_blocks(blocks: list[Any]) -> Iterator[tuple[str, str | None]]:
    for block in blocks:
        if isinstance(block, dict):
            marker = block.get("cache_control")
            ttl = (str(marker.get("ttl") or "5m") if isinstance(marker, dict) else "5m") if marker else None
            yield str(block.get("text", "")), ttl


def _reply_words(body: dict[str, Any]) -> list[str]:
    """A deterministic reply: one word (one output token) per word of the last message, plus two."""
    last = next(reversed(_blocks(body)), ("", None))[0]
    return ["Fake", "reply:", *last.split()][:64]


def _invalid(message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": "invalid_request_error", "message": message}}


def _message(message_id: str, model: str, text: str, usage: _Usage, stop_reason: str) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage.wire(),
    }


def _stream_events(
    message_id: str, model: str, words: list[str], usage: _Usage, stop_reason: str
) -> list[tuple[str | None, Any]]:
    """The SSE sequence of the real API: `message_start` carries input and cache usage (output 1, a
    placeholder); `message_delta` carries the cumulative `output_tokens`."""
    start = _message(message_id, model, "", usage, stop_reason)
    start.update(content=[], stop_reason=None)
    start["usage"] = {**usage.wire(), "output_tokens": 1}
    events: list[tuple[str | None, Any]] = [
        ("message_start", {"type": "message_start", "message": start}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        ("ping", {"type": "ping"}),
    ]
    for n, word in enumerate(words):
        delta = {"type": "text_delta", "text": word if n == 0 else " " + word}
        events.append(("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}))
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": usage.output_tokens},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return events

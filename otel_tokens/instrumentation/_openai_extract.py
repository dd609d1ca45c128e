"""Pure translations from OpenAI SDK objects (and request arguments) to what an `LLMCall` records.

Nothing here touches a span or imports `openai`: every function reads attributes duck-typed, so the
same code serves the current and the previous major SDK version and objects a test builds by hand.
OpenAI's own counts already have the semconv meaning (`prompt_tokens` / `input_tokens` include
cached tokens, `completion_tokens` / `output_tokens` include reasoning), so no re-basing is needed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from otel_tokens.record import TokenCounts


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def _detail(usage: Any, details: str, name: str) -> int:
    return _int(getattr(getattr(usage, details, None), name, None))


def chat_tokens(usage: Any) -> TokenCounts | None:
    """Chat Completions `usage` (also the final chunk of a stream with `include_usage`)."""
    if usage is None:
        return None
    return TokenCounts(
        input=_int(getattr(usage, "prompt_tokens", None)),
        output=_int(getattr(usage, "completion_tokens", None)),
        cache_read=_detail(usage, "prompt_tokens_details", "cached_tokens"),
        reasoning=_detail(usage, "completion_tokens_details", "reasoning_tokens"),
    )


def responses_tokens(usage: Any) -> TokenCounts | None:
    """Responses API `usage` (on the response object and on `response.completed` events)."""
    if usage is None:
        return None
    return TokenCounts(
        input=_int(getattr(usage, "input_tokens", None)),
        output=_int(getattr(usage, "output_tokens", None)),
        cache_read=_detail(usage, "input_tokens_details", "cached_tokens"),
        reasoning=_detail(usage, "output_tokens_details", "reasoning_tokens"),
    )


def embeddings_tokens(usage: Any) -> TokenCounts | None:
    if usage is None:
        return None
    return TokenCounts(input=_int(getattr(usage, "prompt_tokens", None)))


@dataclass(slots=True)
class Result:
    """What a finished (non-streamed) response says about the call."""

    tokens: TokenCounts | None
    response_model: str | None
    response_id: str | None
    finish_reasons: list[str]
    output_text: str
    #: The tier the call was served in (`default`, `flex`, `priority`, ...); it sets the price.
    service_tier: str | None = None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def service_tier(response: Any) -> str | None:
    """The response's `service_tier` (a chat completion, a chunk, a Responses `response`). A tier
    string is only ever looked up among the known ones, so an odd value cannot grow anything;
    overlong ones are dropped."""
    tier = getattr(response, "service_tier", None)
    return tier if isinstance(tier, str) and 0 < len(tier) <= 64 else None


def chat_result(completion: Any) -> Result:
    """A whole chat completion's result; every field may be missing (a hand-built or foreign object).
    The SDK's own `ChatCompletion` with usage takes a faster path (`openai._finish_chat_completion`)."""
    choices = getattr(completion, "choices", None) or []
    reasons: list[str] = []
    for choice in choices:  # a loop, not a comprehension: one choice is the norm
        reason = getattr(choice, "finish_reason", None)
        if isinstance(reason, str):
            reasons.append(reason)
    message = getattr(choices[0], "message", None) if choices else None
    content = getattr(message, "content", None)
    return Result(
        chat_tokens(getattr(completion, "usage", None)),
        _str_or_none(getattr(completion, "model", None)),
        _str_or_none(getattr(completion, "id", None)),
        reasons,
        content if isinstance(content, str) else "",
        service_tier(completion),
    )


def responses_result(response: Any) -> Result:
    reason = getattr(getattr(response, "incomplete_details", None), "reason", None)
    return Result(
        tokens=responses_tokens(getattr(response, "usage", None)),
        response_model=_str_or_none(getattr(response, "model", None)),
        response_id=_str_or_none(getattr(response, "id", None)),
        finish_reasons=[reason] if isinstance(reason, str) else [],
        output_text=_str_or_none(getattr(response, "output_text", None)) or "",
        service_tier=service_tier(response),
    )


def embeddings_result(response: Any) -> Result:
    return Result(
        tokens=embeddings_tokens(getattr(response, "usage", None)),
        response_model=_str_or_none(getattr(response, "model", None)),
        response_id=None,
        finish_reasons=[],
        output_text="",
    )


# --- opt-in content capture (semconv `gen_ai.input.messages` / `gen_ai.output.messages`) ----------
def _text_part(text: str) -> dict[str, str]:
    return {"type": "text", "content": text}


def _message(item: Any) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        return {"role": "user", "parts": [_text_part(str(item))]}
    content = item.get("content")
    if isinstance(content, str):
        parts: list[Any] = [_text_part(content)]
    elif isinstance(content, list):
        parts = [_text_part(p["text"]) if isinstance(p, Mapping) and "text" in p else p for p in content]
    else:
        parts = []
    return {"role": str(item.get("role", "user")), "parts": parts}


def input_messages_json(prompt: Any, instructions: Any = None) -> str:
    """The request's messages (chat) or input (Responses API) in the semconv message shape."""
    messages = (
        [{"role": "system", "parts": [_text_part(instructions)]}] if isinstance(instructions, str) else []
    )
    if isinstance(prompt, str):
        messages.append({"role": "user", "parts": [_text_part(prompt)]})
    elif isinstance(prompt, (list, tuple)):
        messages.extend(_message(m) for m in prompt)
    return json.dumps(messages, default=str)


def output_messages_json(text: str, finish_reasons: list[str]) -> str:
    message: dict[str, Any] = {"role": "assistant", "parts": [_text_part(text)]}
    if finish_reasons:
        message["finish_reason"] = finish_reasons[0]
    return json.dumps([message])


def estimate_tokens(prompt: Any, instructions: Any, output_text: str, model: str) -> TokenCounts:
    """Tokenizer counts for a call whose usage never arrived (a stream without `include_usage`, or
    one abandoned before its last chunk): the request's prompt and the text actually received.
    Raises on a tokenizer error, so the caller can mark the record "estimation failed"."""
    from otel_tokens.tokencount import strict_count_message_tokens, strict_count_text_tokens

    system = instructions if isinstance(instructions, str) else None
    return TokenCounts(
        input=strict_count_message_tokens(prompt, model, system=system),
        output=strict_count_text_tokens(output_text, model) if output_text else 0,
    )

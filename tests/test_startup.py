"""Start-up cost: `instrument()` patches an SDK when the application imports it, never by importing it.

Run in fresh interpreters, since which modules are loaded is exactly what is under test.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap


def _run(code: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_instrument_in_an_openai_only_app_does_not_import_anthropic():
    seen = _run(
        """
        import json, sys
        import openai
        import otel_tokens
        otel_tokens.instrument()
        import wrapt
        from openai.resources.chat.completions.completions import Completions
        print(json.dumps({
            "anthropic": "anthropic" in sys.modules,
            "genai_prices": "genai_prices" in sys.modules,
            "tiktoken": "tiktoken" in sys.modules,
            "openai_patched": isinstance(Completions.__dict__["create"], wrapt.FunctionWrapper),
        }))
        """
    )
    assert seen == {"anthropic": False, "genai_prices": False, "tiktoken": False, "openai_patched": True}


def test_an_sdk_imported_after_instrument_is_patched_on_import_and_unpatched_by_uninstrument():
    seen = _run(
        """
        import json
        import wrapt
        import otel_tokens

        def wrappers(cls):  # how many wrapt layers sit on Messages.create
            n, fn = 0, cls.__dict__["create"]
            while isinstance(fn, wrapt.FunctionWrapper):
                n, fn = n + 1, fn.__wrapped__
            return n

        otel_tokens.instrument()
        from anthropic.resources.messages.messages import Messages
        patched = wrappers(Messages)
        otel_tokens.uninstrument()
        unpatched = wrappers(Messages)
        otel_tokens.instrument()  # the hook is registered once: re-instrumenting patches once
        print(json.dumps([patched, unpatched, wrappers(Messages)]))
        """
    )
    assert seen == [1, 0, 1]


def test_openai_resources_are_patched_when_the_app_first_touches_them_not_at_instrument():
    """openai loads `client.responses` lazily; instrument() must not load it (the Responses API and
    its stream types cost an app that only chats ~50 ms), yet a responses call is still a span."""
    seen = _run(
        """
        import json, sys
        import openai, wrapt
        import otel_tokens
        otel_tokens.instrument()
        loaded_at_instrument = "openai.resources.responses.responses" in sys.modules
        client = openai.OpenAI(api_key="k")
        client.responses  # the app touches the Responses API: openai imports it now
        from openai.resources.responses.responses import Responses
        from openai.lib.streaming.responses._responses import ResponseStream
        patched = [isinstance(cls.__dict__[m], wrapt.FunctionWrapper)
                   for cls, m in ((Responses, "create"), (ResponseStream, "close"))]
        otel_tokens.uninstrument()
        unpatched = isinstance(Responses.__dict__["create"], wrapt.FunctionWrapper)
        otel_tokens.instrument()  # already loaded now: patched at once, exactly once
        layers, fn = 0, Responses.__dict__["create"]
        while isinstance(fn, wrapt.FunctionWrapper):
            layers, fn = layers + 1, fn.__wrapped__
        print(json.dumps([loaded_at_instrument, patched, unpatched, layers]))
        """
    )
    assert seen == [False, [True, True], False, 1]

"""A plain agent with no otel-tokens code in it: run it under `opentelemetry-instrument` and every
LLM call is counted (attributed to agent "unknown" — add one `otel_tokens.attribute(...)` scope to
name it).

    OPENAI_BASE_URL=... OPENAI_API_KEY=... opentelemetry-instrument python examples/agent.py
"""

from __future__ import annotations

import openai


def main() -> None:
    client = openai.OpenAI(max_retries=0)
    for question in ("What is a token?", "Why do agents loop?"):
        reply = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": question}]
        )
        print(reply.choices[0].message.content)


if __name__ == "__main__":
    main()

"""Everything that lets otel-tokens run with no API key, kept apart from the runtime pipeline.

- `fake_provider/` — a local stand-in for the OpenAI and Anthropic HTTP APIs; the demo, the
  `otel-tokens fake-provider` command and the tests all point real SDKs at it.
- `workload.py` — the demo's agents, plain SDK code.
- `runtime.py` — what the demo stands up around them (fake provider, collector, exporter, summary).
- `run.py` — `otel-tokens demo` itself.

Nothing in the pipeline (instrumentation, extraction, aggregation, budgets, collector) imports this
package; importing it pulls in no provider SDK.
"""

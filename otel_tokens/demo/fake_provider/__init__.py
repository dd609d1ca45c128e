"""A local, keyless stand-in for the OpenAI and Anthropic HTTP APIs (JSON and SSE streaming).

The demo runs agents against it and the tests drive the real SDKs against it. It keeps a ledger of
exactly what usage it reported (`FakeProvider.reported`), which is what every end-to-end test
compares the Prometheus totals with.
"""

from otel_tokens.demo.fake_provider.server import (
    FakeProvider,
    FakeRequest,
    FakeResponse,
    Fault,
    ReportedUsage,
)

__all__ = ["FakeProvider", "FakeRequest", "FakeResponse", "Fault", "ReportedUsage"]

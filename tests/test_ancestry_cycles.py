"""A sender's parent links that loop (a span naming itself, or its own descendant, as its parent)
must not hang ingest: the ancestor walk stops, the calls are counted once with what was found.

Before the walk was bounded, one such usage span kept the collector's ingest thread walking the
loop forever while holding the resolver lock, so every later export hung too.
"""

from __future__ import annotations

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from otel_tokens.accelerator import scanner
from otel_tokens.aggregate import MetricsConfig
from otel_tokens.pipeline import Pipeline
from otel_tokens.record import UsageRecord
from tests.test_batch_paths import span_of

TRACE = 0xABC


@pytest.mark.timeout(60)
@pytest.mark.parametrize("compiled", [False, True], ids=["pure", "compiled"])
def test_parent_links_that_loop_are_counted_once_without_hanging(compiled: bool) -> None:
    if compiled and scanner() is None:
        pytest.skip("the compiled walk is not built")
    pipeline = Pipeline(MetricsConfig(), compiled=compiled)
    counted: list[UsageRecord] = []
    pipeline.add_listener(counted.append)
    spans = [
        span_of((TRACE, 1, 1, "foreign", None, 0, 1)),  # its own parent
        span_of((TRACE, 2, 3, "foreign", None, 0, 2)),  # 2 -> 3 -> 2 ...
        span_of((TRACE, 3, 2, "invoke_workflow", None, 0, 3)),
        span_of((TRACE, 4, 4, "ours", None, 0, 3)),  # ours, its own parent
    ]
    pipeline.ingest_otlp_bytes(encode_spans(spans).SerializeToString())
    pipeline.ingest_spans(spans)  # the same spans again (a resend, the in-process path): duplicates
    pipeline.flush(float("inf"))
    assert sorted((r.span_id, r.tokens.input) for r in counted) == [(1, 1), (2, 2), (4, 3)]
    assert [r.attribution.workflow for r in sorted(counted, key=lambda r: r.span_id)] == [None, "flow", None]

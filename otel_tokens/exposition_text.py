"""/metrics text without re-rendering what did not change: rendered families and the encoders.

prometheus_client renders every sample of every scrape from `Sample` tuples (a dict of labels
sorted per sample, each value through `floatToGoString`): ~400 ms for a page of 10k token series.
The usage families are the bulk of our page and most of their series do not change between two
scrapes, so `TokenMetricsCollector` yields them as `RenderedFamily` objects carrying their sample
lines already rendered (kept per series by `SeriesLines`, re-rendered only when the series
changed), and the encoders here write those lines as they are. Every other family (task histograms,
self-metrics, other collectors in the registry) goes through prometheus_client's own encoder.

The sample lines of a counter or classic histogram are the same in the Prometheus text format and
in OpenMetrics (only the HELP/TYPE headers and the final `# EOF` differ), so one rendering serves
both. A `RenderedFamily` still has `samples` (built on first access, the prometheus_client way),
so `generate_latest`, `get_sample_value` and any other reader see exactly what they saw before;
the tests compare both renderings byte for byte.

`choose_encoder` is prometheus_client's with the fast encoders in place of its default ones; an
Accept header asking for another escaping scheme gets prometheus_client's encoder unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

from prometheus_client import exposition as _text
from prometheus_client.core import Metric
from prometheus_client.openmetrics import exposition as _openmetrics
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

__all__ = ["RenderedFamily", "SeriesLines", "choose_encoder", "generate_latest", "generate_openmetrics"]

_go_float = cast(Callable[[float], str], floatToGoString)  # untyped upstream
_openmetrics_generate = cast(Callable[[Any], bytes], _openmetrics.generate_latest)  # untyped upstream


def escape_label_value(value: str) -> str:
    """Backslash, newline and double quote escaped, as both exposition formats want them."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class RenderedFamily(Metric):
    """A metric family whose sample lines are rendered already (`body`); `samples` are built only
    when someone reads them (`build_samples`), so the fast encoders never pay for them."""

    def __init__(
        self, name: str, documentation: str, typ: str, body: str, build_samples: Callable[[], list[Sample]]
    ) -> None:
        super().__init__(name, documentation, typ)
        self.body = body
        self._build_samples: Callable[[], list[Sample]] | None = build_samples
        self._samples_built: list[Sample] | None = None

    @property  # type: ignore[override]
    def samples(self) -> list[Sample]:
        if self._samples_built is None:
            build = getattr(self, "_build_samples", None)
            self._samples_built = build() if build is not None else []
        return self._samples_built

    @samples.setter
    def samples(self, value: list[Sample]) -> None:  # Metric.__init__ assigns [] here
        self._samples_built = list(value) if value else None


class SeriesLines:
    """The rendered lines of one family for one series, label part by label part.

    `labels` are (name, value) pairs of the series; a family with one extra label per sample
    (`token_type`, `status`, `le`) renders it in its sorted place, as prometheus_client does."""

    __slots__ = ("_inner", "_post", "_pre")

    def __init__(self, labels: Sequence[tuple[str, str]], extra: str | None = None) -> None:
        pairs = sorted(labels)
        parts = [f'{name}="{escape_label_value(value)}"' for name, value in pairs]
        if extra is None:
            self._pre, self._post, self._inner = ",".join(parts), "", None
            return
        at = sum(1 for name, _ in pairs if name < extra)
        self._pre = "".join(p + "," for p in parts[:at]) + f'{extra}="'
        self._post = '"' + "".join("," + p for p in parts[at:])
        self._inner = extra

    def line(self, name: str, value: float) -> str:
        """A sample without the extra label."""
        labels = f"{{{self._pre}}}" if self._pre else ""
        return f"{name}{labels} {_go_float(value)}\n"

    def extra_line(self, name: str, extra_value: str, value: float) -> str:
        """A sample with the extra label set to `extra_value` (a bound or a fixed word: no escaping
        needed beyond what `escape_label_value` does)."""
        return f"{name}{{{self._pre}{escape_label_value(extra_value)}{self._post}}} {_go_float(value)}\n"


# --- the encoders --------------------------------------------------------------------------------


class _Some:
    """A few collected families as a registry, for prometheus_client's encoders."""

    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics


def _render(
    registry: Collector, header: Callable[[RenderedFamily], str], fallback: Callable[[Any], bytes]
) -> str:
    out: list[str] = []
    others: list[Metric] = []
    for metric in registry.collect():
        if isinstance(metric, RenderedFamily):
            if others:
                out.append(fallback(_Some(others)).decode("utf-8"))
                others = []
            out.append(header(metric))
            out.append(metric.body)
        else:
            others.append(metric)
    if others:
        out.append(fallback(_Some(others)).decode("utf-8"))
    return "".join(out)


def _text_header(metric: RenderedFamily) -> str:
    name = metric.name + "_total" if metric.type == "counter" else metric.name
    doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {name} {doc}\n# TYPE {name} {metric.type}\n"


def _openmetrics_header(metric: RenderedFamily) -> str:
    doc = escape_label_value(metric.documentation)
    return f"# HELP {metric.name} {doc}\n# TYPE {metric.name} {metric.type}\n"


def _openmetrics_fallback(registry: Any) -> bytes:
    body: bytes = _openmetrics_generate(registry)
    return body[: -len(b"# EOF\n")] if body.endswith(b"# EOF\n") else body


def generate_latest(registry: Collector) -> bytes:
    """prometheus_client's `generate_latest` (text format 0.0.4), rendered families written as they are."""
    return _render(registry, _text_header, cast(Callable[[Any], bytes], _text.generate_latest)).encode()


def generate_openmetrics(registry: Collector) -> bytes:
    """prometheus_client's OpenMetrics 1.0.0 `generate_latest`, rendered families written as they are."""
    return (_render(registry, _openmetrics_header, _openmetrics_fallback) + "# EOF\n").encode()


def choose_encoder(accept_header: str) -> tuple[Callable[[Collector], bytes], str]:
    """prometheus_client's `choose_encoder`, with the fast encoders for its two default answers."""
    encoder, content_type = _text.choose_encoder(accept_header)
    if encoder is _text.generate_latest:
        return generate_latest, content_type
    if _is_default_openmetrics(encoder):
        return generate_openmetrics, content_type
    return encoder, content_type


def _is_default_openmetrics(encoder: object) -> bool:
    return (
        isinstance(encoder, functools.partial)
        and encoder.func is _openmetrics.generate_latest
        and not encoder.args
        and encoder.keywords == {"escaping": _openmetrics.UNDERSCORES, "version": "1.0.0"}
    )

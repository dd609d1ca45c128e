"""Go-template text for alert annotations, built in one place so escaping happens in one place.

Prometheus expands annotations as Go templates at notification time. Static text from the budget
file (a description, a budget name) must not start an action by accident, query strings need a
quoting that survives PromQL's own quotes, and figures must read as people read them: money as
`$0.002` or `$1,234.57` (never `$1.7m`, which `humanize` prints for 0.0017), token counts as
`61,000`. Prometheus' template language has no arithmetic and no thousands separator, so money and
token formatting is a small ladder of `printf` formats by magnitude plus a regex that inserts
commas — the same digits `otel_tokens.humanize.format_usd` prints for static text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from otel_tokens.budgets.promql import num

__all__ = [
    "VALUE",
    "action",
    "comment",
    "define",
    "label",
    "literal",
    "percent",
    "query_value",
    "ratio_of",
    "raw",
    "tokens",
    "usd",
    "with_",
]

_PLACEHOLDER = re.compile(r"%\[(\d+)\]q")
#: The alert expression's value for the series that fired.
VALUE = "$value"
#: How many times the thousands-separator regex runs: each pass adds one comma (enough below 10^18).
_COMMA_PASSES = 5
_COMMAS = " | reReplaceAll `^(\\d+)(\\d{3})` `${1},${2}`" * _COMMA_PASSES
#: (lower bound, printf format) for money below a dollar: two significant digits, written in full.
_SMALL_USD = (
    (0.1, "%.2f"),
    (0.01, "%.3f"),
    (0.001, "%.4f"),
    (0.0001, "%.5f"),
    (0.00001, "%.6f"),
    (0.000001, "%.7f"),
    (0.0000001, "%.8f"),
    (0.00000001, "%.9f"),
    (0.000000001, "%.10f"),
)


def literal(text: str) -> str:
    """Static text that shows as written: `{{` would open an action, so it is printed by one."""
    return text.replace("{{", '{{ "{{" }}')


def action(pipeline: str) -> str:
    return "{{ " + pipeline + " }}"


def with_(pipeline: str, body: str, otherwise: str | None = None) -> str:
    """`body` with `.` set to the pipeline's value, only when it is non-empty (else `otherwise`)."""
    alt = "" if otherwise is None else "{{ else }}" + otherwise
    return f"{{{{ with {pipeline} }}}}{body}{alt}{{{{ end }}}}"


def define(name: str, body: str) -> str:
    """A named template (`{{ template "name" . }}`), trimmed of the newlines around its body."""
    return f'{{{{ define "{name}" -}}}}\n{body}\n{{{{- end }}}}\n'


def comment(text: str) -> str:
    """A template comment (prints nothing), e.g. the generated-file notice."""
    return "{{/* " + _without(text, "*/", "a template comment") + " */}}"


def label(name: str) -> str:
    """The firing series' label `name` (as a template expression)."""
    if not name.isidentifier():
        raise ValueError(f"label name {name!r} cannot be written as $labels.{name}")
    return f"$labels.{name}"


def raw(text: str) -> str:
    """A Go raw string literal: no escapes, so PromQL's double quotes pass through unchanged."""
    return "`" + _without(text, "`", "a Go raw string") + "`"


def _without(text: str, forbidden: str, where: str) -> str:
    if forbidden in text:
        raise ValueError(f"{where} cannot contain {forbidden!r}: {text!r}")
    return text


def usd(var: str) -> str:
    """Money held in template variable `var`: `$0`, `$0.0017`, `$0.42`, `$1,234.57`."""
    parts = [action(f"if eq {var} 0.0"), "$0", action(f"else if ge {var} 1.0"), "$"]
    parts.append(action(f'printf "%.2f" {var}{_COMMAS}'))
    for bound, fmt in _SMALL_USD:
        parts += [action(f"else if ge {var} {bound:.10f}"), "$", action(f'printf "{fmt}" {var}')]
    parts += [action("else"), "$", action(f'printf "%.2g" {var}'), action("end")]
    return "".join(parts)


def tokens(var: str) -> str:
    """A token count held in `var`: whole tokens with thousands separators (`1,234,567`)."""
    return action(f'printf "%.0f" {var}{_COMMAS}')


def percent(var: str) -> str:
    """A ratio held in `var` as a percentage (`2.5%`, `305%`); below 0.1% `humanizePercentage`
    would switch to SI prefixes (`500µ%`), so tiny shares read `<0.1%`."""
    return (
        f"{{{{ if and (gt {var} 0.0) (lt {var} 0.001) }}}}<0.1%"
        f"{{{{ else }}}}{{{{ {var} | humanizePercentage }}}}{{{{ end }}}}"
    )


def query_value(expr: str, formatter: Callable[[str], str] = percent, *, labels: Sequence[str] = ()) -> str:
    """The first value `expr` returns at notification time, formatted; nothing when it is empty.

    With `labels`, `expr` holds `%[n]q` placeholders (`promql.same_as_alert`) for the n-th of
    them: `printf` fills in the firing series' values, quoted as PromQL (Go) strings.
    """
    body = formatter("$v")
    expr = expr.replace("\n", " ")  # one line in the annotation; PromQL strings hold no raw newline
    if labels:
        positions = {int(n) for n in _PLACEHOLDER.findall(expr)}
        if positions != set(range(1, len(labels) + 1)) or expr.count("%") != len(_PLACEHOLDER.findall(expr)):
            raise ValueError(f"placeholders %[1]q..%[{len(labels)}]q, and no other %, expected in {expr!r}")
        args = " ".join(label(name) for name in labels)
        source = f"printf {raw(expr)} {args} | query"
    else:
        source = f"query {raw(expr)}"
    return f"{{{{ with {source} }}}}{{{{ $v := . | first | value }}}}{body}{{{{ end }}}}"


def ratio_of(var: str, divisor: float) -> str:
    """`var / divisor` as a percentage. Templates have no arithmetic, so Prometheus evaluates the
    division as a scalar query (`query` turns a scalar result into one sample)."""
    return (
        f'{{{{ with printf "%.17g / {num(divisor)}" {var} | query }}}}{{{{ $r := . | first | value }}}}'
        + percent("$r")
        + "{{ end }}"
    )

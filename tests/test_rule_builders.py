"""The typed PromQL, rule-file and Go-template builders the renderers are made of.

What they promise is checked where it matters, by Prometheus itself (test_prometheus_rules.py runs
every alert through `promtool test rules`); here, the edges a renderer cannot see from its output:
quoting of hostile label values, escaping of static text, and refusing what cannot be written.
"""

from __future__ import annotations

import pytest
import yaml

from otel_tokens.budgets import gotemplate as t
from otel_tokens.budgets.promql import eq, num, regex, same_as_alert, selector, sum_by
from otel_tokens.budgets.rulefmt import AlertingRule, RecordingRule, RuleFile, RuleGroup, dump_yaml


def test_label_values_are_quoted_as_promql_strings():
    assert selector("m", eq("agent", 'a"b\\c'), regex("task", "x|y")) == 'm{agent="a\\"b\\\\c", task=~"x|y"}'
    assert selector("m") == "m"
    assert sum_by((), "m") == "sum(m)" and sum_by(("a", "b"), "m") == "sum by (a, b) (m)"
    assert num(2 * 3600 / 86400) == "0.08333333333" and num(3.0) == "3"


def test_static_text_cannot_open_a_template_action():
    assert t.literal("costs {{ $value }}") == 'costs {{ "{{" }} $value }}'
    with pytest.raises(ValueError, match="cannot contain"):
        t.raw("a`b")
    with pytest.raises(ValueError, match="label name"):
        t.label("not-an-identifier")


def test_annotation_queries_about_the_firing_series_use_numbered_placeholders():
    expr = selector("m", same_as_alert("agent", 1), same_as_alert("task", 2))
    text = t.query_value(f"{expr} / {expr}", labels=("agent", "task"))
    assert (
        "printf `m{agent=%[1]q, task=%[2]q} / m{agent=%[1]q, task=%[2]q}` $labels.agent $labels.task" in text
    )
    with pytest.raises(ValueError, match="placeholders"):
        t.query_value(expr, labels=("agent",))  # %[2]q has no label to fill it
    with pytest.raises(ValueError, match="placeholders"):
        t.query_value(f"{expr} % 2", labels=("agent", "task"))  # printf would eat a bare %


def test_rule_file_has_prometheus_keys_in_prometheus_order():
    group = RuleGroup(
        "g",
        [
            RecordingRule("r:m:sum", "sum(m)"),
            AlertingRule("A", "m > 1", "5m", {"severity": "P1"}, {"summary": "s"}),
        ],
        interval="1m",
    )
    data = yaml.safe_load(dump_yaml(RuleFile([group]).to_dict()))
    assert data == {
        "groups": [
            {
                "name": "g",
                "interval": "1m",
                "rules": [
                    {"record": "r:m:sum", "expr": "sum(m)"},
                    {
                        "alert": "A",
                        "expr": "m > 1",
                        "for": "5m",
                        "labels": {"severity": "P1"},
                        "annotations": {"summary": "s"},
                    },
                ],
            }
        ]
    }
    assert list(group.alerts()) == ["A"]
    assert "expr: |-\n" in dump_yaml(RecordingRule("r", "a\n/\nb").to_dict())  # multi-line PromQL as a block

"""Small PromQL helpers: the metric names an expression references, Grafana variable substitution."""

from __future__ import annotations

import re
from collections.abc import Mapping

_METRIC = re.compile(r"\b(finetune_[a-zA-Z0-9_]+)\b")
_VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def metric_names(expr: str) -> set[str]:
    """Names of the finetune_* series an expression selects (label names never start with finetune_)."""
    return set(_METRIC.findall(expr))


def variables(expr: str) -> set[str]:
    """Grafana variables ($x, ${x}, ${x:fmt}) an expression uses."""
    return {a or b for a, b in _VAR.findall(expr)}


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replace Grafana variables by `values`; a variable without a value raises KeyError."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return values[name]

    return _VAR.sub(repl, expr)


def test_values(namespace: str = ".*", finetunejob: str = ".*", window: str = "5m") -> dict[str, str]:
    """Values that make every dashboard query runnable against Prometheus' HTTP API.

    `window` stands in for Grafana's $__rate_interval / $__interval / $__range (choose one that spans the
    data: a rate over a window without two samples is empty).
    """
    return {
        "namespace": namespace,
        "finetunejob": finetunejob,
        "__rate_interval": window,
        "__interval": window,
        "__range": window,
    }

"""names.py: the time format the status carries."""

from __future__ import annotations

from finetune_operator.names import parse_time

from tests.unit.operator.decision_helpers import (
    NOW,
    T,
)


def test_time_helpers_roundtrip() -> None:
    assert parse_time(T(NOW)) == NOW
    assert parse_time("garbage") is None and parse_time(None) is None
    assert parse_time("2026-01-01T12:00:00") == NOW

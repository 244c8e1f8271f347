"""A killed test run leaves its NoExecute taint on the node (its teardown never ran), and the next run's
pods are then evicted: the harness drops the taints it made that no live test can still hold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from kubernetes import client

from tests.harness.disruptions import OUT_OF_SERVICE_KEY, SPOT_TAINT_KEY, stale_test_taints

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def taint(key: str, minutes_ago: float | None, effect: str = "NoExecute") -> client.V1Taint:
    added = None if minutes_ago is None else NOW - timedelta(minutes=minutes_ago)
    return client.V1Taint(key=key, value="true", effect=effect, time_added=added)


def test_only_the_harness_taints_older_than_a_test_can_run_are_stale() -> None:
    taints = [
        taint(SPOT_TAINT_KEY, 30),  # a killed run's
        taint(OUT_OF_SERVICE_KEY, 17),  # a killed run's
        taint(SPOT_TAINT_KEY, 2),  # a test running now holds it
        taint("node.kubernetes.io/unreachable", 60),  # the node controller's, not the harness's
        taint("fto.dev/kueue-flavor", 60, effect="NoSchedule"),
        taint(SPOT_TAINT_KEY, None),  # no time: cannot tell, kept
    ]
    assert stale_test_taints(taints, NOW, older_than=16 * 60) == [SPOT_TAINT_KEY, OUT_OF_SERVICE_KEY]
    assert stale_test_taints(taints, NOW, older_than=60 * 60) == []

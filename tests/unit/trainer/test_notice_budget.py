"""The micro-batch stop policy after SIGTERM (preemption.stop_at_micro_batch) and the deadline clock."""

from __future__ import annotations

import time

import pytest
from finetune_trainer.preemption import (
    ESTIMATED_SAVE_FIXED_SECONDS,
    NOTICE_MARGIN_SECONDS,
    Preemption,
    estimated_save_seconds,
    stop_at_micro_batch,
)


def test_finishes_the_step_when_the_rest_of_it_and_the_save_fit() -> None:
    budget = stop_at_micro_batch(
        micro_batches_left=3, seconds_per_micro_batch=2.0, save_seconds=1.0, seconds_left=10.0
    )
    assert budget.needed_seconds == pytest.approx(3 * 2.0 + 1.0 + NOTICE_MARGIN_SECONDS)
    assert not budget.stop_now


def test_stops_at_the_micro_batch_when_the_step_would_outlast_the_notice() -> None:
    # GKE spot: ~15 s of notice, 8-way accumulation at 2.5 s a micro-batch, one done after the signal.
    budget = stop_at_micro_batch(
        micro_batches_left=7, seconds_per_micro_batch=2.5, save_seconds=3.0, seconds_left=13.0
    )
    assert budget.stop_now


def test_the_save_and_the_margin_count_even_for_the_last_micro_batch() -> None:
    short = stop_at_micro_batch(1, 1.0, 2.0, seconds_left=2.0 + NOTICE_MARGIN_SECONDS)
    assert short.needed_seconds == pytest.approx(3.0 + NOTICE_MARGIN_SECONDS)
    assert short.stop_now  # 1 s short
    assert not stop_at_micro_batch(1, 1.0, 2.0, seconds_left=3.0 + NOTICE_MARGIN_SECONDS).stop_now


def test_no_time_left_always_stops() -> None:
    assert stop_at_micro_batch(1, 0.0, 0.0, seconds_left=-0.5).stop_now


def test_save_estimate_grows_with_the_checkpoint_size() -> None:
    assert estimated_save_seconds(None) == ESTIMATED_SAVE_FIXED_SECONDS
    assert (
        estimated_save_seconds(1_000_000_000)
        > estimated_save_seconds(10_000_000)
        > ESTIMATED_SAVE_FIXED_SECONDS
    )


def test_seconds_until_deadline_counts_from_the_signal() -> None:
    preemption = Preemption()
    assert preemption.seconds_until_deadline() is None  # no deadline, no signal
    preemption.deadline_seconds = 10.0
    assert preemption.seconds_until_deadline() is None  # no signal yet
    preemption.request()
    time.sleep(0.05)
    left = preemption.seconds_until_deadline()
    assert left is not None and 9.0 < left <= 9.95

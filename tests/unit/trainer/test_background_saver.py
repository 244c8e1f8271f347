"""BackgroundSaver: one save at a time; a failure in the thread is raised in the caller's thread."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from finetune_trainer.background import BackgroundSaver
from finetune_trainer.volume import VolumeFull


def test_wait_blocks_until_the_save_in_flight_is_done() -> None:
    saver = BackgroundSaver()
    release = threading.Event()
    done: list[int] = []

    def job() -> None:
        release.wait(5)
        done.append(1)

    saver.submit(3, job)
    assert saver.in_flight and saver.step == 3
    saver.poll()  # not failed, still running: returns at once
    release.set()
    saver.wait()
    assert done == [1] and not saver.in_flight


def test_a_failure_is_raised_at_the_next_wait_once() -> None:
    saver = BackgroundSaver()
    error = VolumeFull("checkpoint-4", Path("/out"), 10, 20, "No space left on device")

    def job() -> None:
        raise error

    saver.submit(4, job)
    with pytest.raises(VolumeFull) as raised:
        saver.wait()
    assert raised.value is error
    saver.wait()  # raised once, not again


def test_poll_raises_a_failure_without_waiting_and_submit_waits_for_the_previous_save() -> None:
    saver = BackgroundSaver()
    finished = threading.Event()

    def failing() -> None:
        finished.set()
        raise RuntimeError("disk gone")

    saver.submit(1, failing)
    finished.wait(5)
    saver._thread.join(5)  # type: ignore[union-attr]
    with pytest.raises(RuntimeError, match="disk gone"):
        saver.poll()

    order: list[str] = []
    gate = threading.Event()

    def first() -> None:
        gate.wait(5)
        order.append("first")

    saver.submit(2, first)
    threading.Timer(0.05, gate.set).start()
    saver.submit(3, lambda: order.append("second"))  # waits for the first one
    saver.wait()
    assert order == ["first", "second"]


def test_drain_swallows_the_error_of_a_save_in_flight(capsys: pytest.CaptureFixture[str]) -> None:
    saver = BackgroundSaver()

    def job() -> None:
        raise OSError("EIO")

    saver.submit(7, job)
    saver.drain()  # the caller is already failing: logged, not raised
    assert '"event":"background_save_failed"' in capsys.readouterr().err

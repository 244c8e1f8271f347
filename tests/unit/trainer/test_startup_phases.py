"""The start-up phase timer (issue 13): marks charge the time since the previous one, repeated phases add up,
the summary comes once and covers the time since the process started."""

from __future__ import annotations

import io
import json
import time

import pytest
from finetune_trainer import logs


@pytest.fixture
def lines(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    stream = io.StringIO()
    monkeypatch.setattr(logs, "_stream", stream)
    return stream


def events(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_process_age_is_read_from_proc() -> None:
    age = logs._seconds_since_process_start()
    assert age is not None and 0 < age < 3600  # this test process has existed for a while already


def test_phases_add_up_and_the_summary_is_logged_once(lines: io.StringIO) -> None:
    phases = logs.StartupPhases()
    assert phases.process_start < time.monotonic() - 0.01  # the timer starts at process start, not now
    phases.mark("python")
    time.sleep(0.02)
    phases.mark("trainer_build")
    time.sleep(0.01)
    phases.mark("tokenization")
    time.sleep(0.02)
    phases.mark("trainer_build")
    phases.finish("train_setup", step=0)
    phases.mark("late")  # after the first step: not start-up any more
    phases.finish("train_setup")
    logged = events(lines)
    assert [e["phase"] for e in logged if e["event"] == "startup_phase"] == [
        "python",
        "trainer_build",
        "tokenization",
        "trainer_build",
        "train_setup",
    ]
    summaries = [e for e in logged if e["event"] == "startup"]
    assert len(summaries) == 1
    summary = summaries[0]
    assert summary["step"] == 0
    assert set(summary["phases"]) == {"python", "trainer_build", "tokenization", "train_setup"}
    assert summary["phases"]["trainer_build"] >= 0.04 - 0.005  # two marks added up
    assert abs(sum(summary["phases"].values()) - summary["seconds"]) < 0.01

"""bench/scale's stand-in trainer keeps the trainer's exit contract: SIGTERM → a checkpoint and exit 75 at
once, max_steps → final/ and exit 0, a restart continues from its checkpoint. Run as a process, outside a
cluster (no status reports)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from finetune_api.contract import EXIT_PREEMPTED, EXIT_SUCCEEDED

STANDIN = Path(__file__).resolve().parents[3] / "bench" / "scale" / "standin" / "trainer.py"


def start(tmp_path: Path, max_steps: int, step_seconds: float) -> subprocess.Popen[str]:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"training": {"max_steps": max_steps, "save_steps": 2}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env["FTO_STANDIN_STEP_SECONDS"] = str(step_seconds)
    return subprocess.Popen(
        # the operator's arguments, unknown ones included (builders.trainer_args)
        [
            *(sys.executable, str(STANDIN), "--config", str(config), "--output-dir", str(tmp_path / "run")),
            *("--run-id", "uid-1", "--resume", "auto", "--attempt", "2"),
            *("--termination-message-path", str(tmp_path / "termination")),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def next_event(process: subprocess.Popen[str]) -> dict:
    """The stand-in's next log line (JSON), read through the pipe's own buffer."""
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.wait(timeout=30)
        raise AssertionError(
            f"the stand-in ended (exit {process.returncode}): {process.stderr.read()[-2000:]}"
        )
    return json.loads(line)


def finish(process: subprocess.Popen[str], timeout: float) -> list[dict]:
    """Wait for the stand-in's exit; its remaining log lines. (communicate() would read the pipe past what
    readline() already buffered, losing lines.)"""
    assert process.stdout is not None and process.stderr is not None
    process.wait(timeout=timeout)  # its few lines fit in the pipe
    out, err = process.stdout.read(), process.stderr.read()
    assert out.strip(), f"no output (exit {process.returncode}): {err[-2000:]}"
    return [json.loads(line) for line in out.splitlines()]


def termination(tmp_path: Path) -> dict:
    text = (tmp_path / "termination").read_text()
    assert text, "an empty termination message"
    return json.loads(text)


def test_sigterm_saves_and_exits_75_and_a_restart_resumes(tmp_path: Path) -> None:
    process = start(tmp_path, max_steps=0, step_seconds=0.05)
    assert next_event(process)["event"] == "standin_start"
    while next_event(process)["event"] != "checkpoint_committed":  # some steps, one checkpoint at least
        pass
    process.send_signal(signal.SIGTERM)
    out = finish(process, timeout=60)
    assert process.returncode == EXIT_PREEMPTED, out
    message = termination(tmp_path)
    step = message["step"]
    assert step >= 2
    assert message["reason"] == "Preempted"
    assert message["checkpoint_step"] == step and message["save_in_time"] is True
    # the bench's timing fields: when it took the signal (unix time), how long until the message
    assert message["standin_signal_at"] >= time.time() - 60 and message["standin_seconds"] >= 0
    assert json.loads((tmp_path / "run" / "standin-checkpoint.json").read_text())["step"] == step
    assert out[-1]["exit_code"] == EXIT_PREEMPTED

    again = start(tmp_path, max_steps=step + 2, step_seconds=0.01)
    out = finish(again, timeout=60)
    assert again.returncode == EXIT_SUCCEEDED, out
    assert out[0]["step"] == step  # resumed from its checkpoint
    assert termination(tmp_path) == {
        "reason": "Completed",
        "step": step + 2,
        "final": str(tmp_path / "run" / "final"),
    }
    assert (tmp_path / "run" / "final" / "STANDIN").exists()


def test_sigterm_before_the_first_step_exits_at_once(tmp_path: Path) -> None:
    process = start(tmp_path, max_steps=10, step_seconds=30)
    assert next_event(process)["event"] == "standin_start"
    process.send_signal(signal.SIGTERM)
    # at once: a stand-in that finished its 30 s step first would miss this wait
    finish(process, timeout=20)
    assert process.returncode == EXIT_PREEMPTED
    message = termination(tmp_path)
    assert message["step"] == 0 and message["message"] == "SIGTERM before the first step"


def test_its_reports_are_trainer_status_fields(tmp_path: Path) -> None:
    from finetune_api.status import FineTuneJobStatus, TrainerStatus

    from bench.scale.standin.trainer import Run

    run = Run({"training": {"max_steps": 10, "save_steps": 5}}, tmp_path, step_seconds=2.0)
    run.step = 5
    patch = TrainerStatus.patch(**run.progress(), **run.save())  # KeyError for a field not the trainer's
    status = FineTuneJobStatus.model_validate(patch)
    assert (status.step, status.progress, status.last_checkpoint_step) == (5, "5/10", 5)
    assert status.steps_per_second == 0.5 and status.estimated_remaining_seconds == 10
    assert Run({}, tmp_path, 1.0).step == 5  # the next attempt continues from the checkpoint

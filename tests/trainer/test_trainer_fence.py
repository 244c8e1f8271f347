"""Fencing on a shared output directory: two trainers (attempts) on one DIR. Real processes, real files.

Attempt 1 trains slowly; attempt 2 starts on the same directory (what a replacement pod does on a
ReadWriteMany volume while the old pod's partitioned node keeps running). Attempt 1 must stop before it
commits, retains or deletes anything, exit 73, and leave attempt 2 to finish with the adapter an undisturbed
run produces.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from trainer_harness import MAX_STEPS, Reference, assert_same_adapter, base_env, start

pytestmark = pytest.mark.slow

SLOW = base_env(FTO_TEST_STEP_SLEEP_SECONDS="0.4")  # attempt 1 is still training when attempt 2 starts


def events(proc, name: str) -> list[dict]:  # type: ignore[no-untyped-def]
    return [e for e in proc.events() if e.get("event") == name]


def tree(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_a_newer_attempt_fences_the_older_trainer(reference: Reference, work: Path) -> None:
    out = work / "out"
    first = start(reference.config, out, "--attempt", "1", env=SLOW, tag="attempt1")
    first.wait_event(lambda e: e.get("event") == "checkpoint_committed" and e["step"] >= 10)
    assert json.loads((out / "ATTEMPT.json").read_text())["attempt"] == 1
    second = start(reference.config, out, "--attempt", "2", tag="attempt2")

    assert first.wait() == 73, first.tail()
    term = first.termination()
    assert term["reason"] == "Superseded" and "now belongs to attempt 2" in term["message"], term
    (line,) = events(first, "superseded")
    assert line["attempt"] == 1 and line["newer"]["attempt"] == 2
    assert "before writing checkpoint-" in line["message"], line

    assert second.wait() == 0, second.tail()
    assert json.loads((out / "ATTEMPT.json").read_text())["attempt"] == 2
    (chosen,) = events(second, "resume_from")
    # Attempt 2 claimed DIR before it chose where to resume: attempt 1 committed nothing after that.
    committed_by_first = [e["step"] for e in events(first, "checkpoint_committed")]
    assert chosen["checkpoint"] == f"checkpoint-{max(committed_by_first)}", (chosen, committed_by_first)
    assert not events(first, "removed_stale_checkpoints")
    assert_same_adapter(reference.output_dir, out)
    losses = second.losses()
    assert losses == {s: reference.losses[s] for s in range(max(committed_by_first) + 1, MAX_STEPS + 1)}


def test_a_superseded_trainer_commits_nothing_on_sigterm(reference: Reference, work: Path) -> None:
    """The emergency save of a superseded trainer (its node came back, the kubelet sends SIGTERM) is fenced
    too: exit 73, not 75, and nothing in DIR changes."""
    out = work / "out"
    first = start(reference.config, out, "--attempt", "1", env=SLOW, tag="attempt1")
    first.wait_step(6)  # between saves (every 5 steps)
    newer = {"attempt": 2, "pod": "job-2", "time": "2026-11-30T00:00:00.000Z"}
    (out / "ATTEMPT.json").write_text(json.dumps(newer))  # what attempt 2's claim writes
    before = tree(out)
    first.signal(signal.SIGTERM)
    assert first.wait() == 73, first.tail()
    assert first.termination()["reason"] == "Superseded"
    assert events(first, "preemption_stop"), "the SIGTERM was seen"
    assert not [e for e in events(first, "checkpoint_committed") if e["step"] > 5]
    assert tree(out) == before, "a superseded trainer changes nothing, even on SIGTERM"
    assert json.loads((out / "ATTEMPT.json").read_text()) == newer

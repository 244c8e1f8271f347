"""Resume exactness against an uninterrupted reference run: SIGKILL anywhere (mid-save too), torn checkpoints,
SIGTERM at a random step. Real processes, real signals, the tiny model."""

from __future__ import annotations

import json
import random
import shutil
import signal
from pathlib import Path

import pytest
import yaml
from trainer_harness import (
    MAX_STEPS,
    SAVE_STEPS,
    Reference,
    assert_same_adapter,
    base_env,
    run,
    start,
)

pytestmark = pytest.mark.slow

SLOW_STEPS = base_env(FTO_TEST_STEP_SLEEP_SECONDS="0.08")  # so a signal lands at the step we aim at


def synchronous(config: Path, work: Path) -> Path:
    """`config` with background saves off: the synchronous variant of a save-specific race."""
    data = yaml.safe_load(config.read_text())
    data["background_save"] = False
    path = work / "config-synchronous.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def committed(out: Path) -> list[int]:
    return sorted(
        int(p.name.split("-")[1]) for p in out.glob("checkpoint-*") if (p / "COMMITTED.json").is_file()
    )


STARTUP_PHASES = {"python", "config", "imports", "dataset_load", "tokenizer", "model_load", "tokenization"}


def assert_startup_logged(events: list[dict], resumed_at: int | None) -> None:
    """One `startup` line when the first step begins, before any step is logged: every phase (issue 13) with
    its seconds, adding up to the total from process start; its `startup_phase` lines say the same."""
    summaries = [i for i, e in enumerate(events) if e.get("event") == "startup"]
    assert len(summaries) == 1, [e for e in events if e.get("event") == "startup"]
    summary = events[summaries[0]]
    first_log = next(i for i, e in enumerate(events) if e.get("event") == "train_log")
    assert summaries[0] < first_log and summary["step"] == (resumed_at or 0), summary
    phases = summary["phases"]
    last = "resume_restore" if resumed_at else "train_setup"
    assert STARTUP_PHASES | {last, "trainer_build", "resume_restore"} == set(phases), phases
    assert all(seconds >= 0 for seconds in phases.values()), phases
    assert phases["python"] > 0.01 and phases["imports"] > 0.1, phases  # counted from process start
    assert abs(sum(phases.values()) - summary["seconds"]) < 0.02, summary
    lines = [e for e in events[: summaries[0]] if e.get("event") == "startup_phase"]
    assert abs(sum(e["seconds"] for e in lines) - summary["seconds"]) < 0.02, lines


def resume_and_check(ref: Reference, out: Path, expect_from: int | None, tag: str = "resume") -> None:
    proc = run(ref.config, out, "--resume", "auto", tag=tag)
    assert proc.popen.returncode == 0, proc.tail()
    events = proc.events()
    assert_startup_logged(events, expect_from)
    chosen = [e for e in events if e.get("event") == "resume_from"]
    if expect_from is None:
        assert not chosen
    else:
        assert chosen and chosen[0]["checkpoint"] == f"checkpoint-{expect_from}", proc.tail()
    assert_same_adapter(ref.output_dir, out)
    losses = proc.losses()
    start_step = (expect_from or 0) + 1
    assert sorted(losses) == list(range(start_step, MAX_STEPS + 1))
    assert {s: ref.losses[s] for s in losses} == losses, "losses after the resume point differ"
    assert proc.termination()["reason"] == "Completed"


def test_reference_run(reference: Reference) -> None:
    term = reference.proc.termination()
    assert term["reason"] == "Completed" and term["step"] == MAX_STEPS
    assert sorted(reference.losses) == list(range(1, MAX_STEPS + 1))
    assert committed(reference.output_dir) == [MAX_STEPS - SAVE_STEPS, MAX_STEPS]  # save_total_limit 2
    files = {p.name for p in (reference.output_dir / f"checkpoint-{MAX_STEPS}").iterdir()}
    assert files == {
        "COMMITTED.json",
        "adapter_config.json",
        "adapter_model.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pth",
        "trainer_state.json",
        "training_args.bin",
    }, "checkpoints must not carry tokenizer files or a README"
    assert not (reference.output_dir / "README.md").exists(), "trl's model card (at every save) is off"
    marker = json.loads((reference.output_dir / f"checkpoint-{MAX_STEPS}" / "COMMITTED.json").read_text())
    assert marker["step"] == MAX_STEPS and marker["bytes"] == sum(marker["files"].values())
    assert (reference.output_dir / "final" / "adapter_model.safetensors").is_file()
    commits = [e for e in reference.proc.events() if e.get("event") == "checkpoint_committed"]
    assert [c["step"] for c in commits] == list(range(SAVE_STEPS, MAX_STEPS + 1, SAVE_STEPS))
    assert all(c["save_seconds"] > 0 and c["bytes"] > 0 and c["time"].endswith("Z") for c in commits)
    assert_startup_logged(reference.proc.events(), None)


@pytest.mark.parametrize("kill_after", [3, 17])
def test_sigkill_then_resume_is_exact(reference: Reference, work: Path, kill_after: int) -> None:
    out = work / "out"
    proc = start(reference.config, out, env=SLOW_STEPS, tag="killed")
    proc.wait_step(kill_after)
    proc.signal(signal.SIGKILL)
    proc.wait()
    newest = max(committed(out), default=None)
    resume_and_check(reference, out, newest)


@pytest.mark.parametrize("saving", ["background", "synchronous"])
def test_sigkill_mid_save_leaves_uncommitted_checkpoint_that_resume_skips(
    reference: Reference, work: Path, saving: str
) -> None:
    """background: killed while the writer thread is mid-write (training went on meanwhile)."""
    out = work / "out"
    env = base_env(FTO_TEST_SAVE_SLEEP_SECONDS="60", FTO_TEST_SAVE_SLEEP_AT_STEP=str(2 * SAVE_STEPS))
    config = reference.config if saving == "background" else synchronous(reference.config, work)
    proc = start(config, out, env=env, tag="killed")
    proc.wait_event(lambda e: e.get("event") == "fault_injection_save_sleep")
    proc.signal(signal.SIGKILL)
    proc.wait()
    torn = out / f"checkpoint-{2 * SAVE_STEPS}"
    assert torn.is_dir() and (torn / "optimizer.pt").exists()
    assert not (torn / "COMMITTED.json").exists() and not (torn / "trainer_state.json").exists()
    assert committed(out) == [SAVE_STEPS]
    resume_and_check(reference, out, SAVE_STEPS)
    log = (out.parent / "out.resume.log").read_text()
    assert '"event":"checkpoint_skipped","checkpoint":"checkpoint-10","reason":"not committed' in log
    assert '"event":"removed_stale_checkpoints","checkpoints":["checkpoint-10"]' in log


@pytest.mark.parametrize(
    ("damage", "file"),
    [("missing", "rng_state.pth"), ("truncated", "optimizer.pt"), ("missing", "scheduler.pt")],
)
def test_torn_newest_checkpoint_falls_back_and_stays_exact(
    reference: Reference, work: Path, damage: str, file: str
) -> None:
    """HF itself would resume from these silently wrong (missing rng/scheduler) or crash (truncated)."""
    out = work / "out"
    shutil.copytree(reference.output_dir, out)
    shutil.rmtree(out / "final")
    target = out / f"checkpoint-{MAX_STEPS}" / file
    if damage == "missing":
        target.unlink()
    else:
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])
    proc = run(reference.config, out, tag="torn")
    skipped = [e for e in proc.events() if e.get("event") == "checkpoint_skipped"]
    assert skipped and skipped[0]["checkpoint"] == f"checkpoint-{MAX_STEPS}" and file in skipped[0]["reason"]
    assert proc.popen.returncode == 0, proc.tail()
    assert_same_adapter(reference.output_dir, out)
    losses = proc.losses()
    assert losses == {s: reference.losses[s] for s in range(MAX_STEPS - SAVE_STEPS + 1, MAX_STEPS + 1)}


def test_sigterm_at_random_step_commits_exits_75_and_resumes_exactly(
    reference: Reference, work: Path
) -> None:
    seed = random.randrange(1_000_000)
    at = random.Random(seed).randint(2, MAX_STEPS - 3)
    print(f"SIGTERM after step {at} (seed {seed})")
    out = work / "out"
    proc = start(reference.config, out, env=SLOW_STEPS, tag="term")
    proc.wait_step(at)
    proc.signal(signal.SIGTERM)
    code = proc.wait()
    assert code == 75, proc.tail()
    term = proc.termination()
    assert term["reason"] == "Preempted"
    assert term["step"] in (at, at + 1), (term, at)
    assert term["checkpoint"] == f"checkpoint-{term['step']}" and term["checkpoint_step"] == term["step"]
    assert term["save_seconds"] >= 0
    assert max(committed(out)) == term["step"]
    stop = [e for e in proc.events() if e.get("event") == "preemption_stop"]
    assert stop and stop[0]["signal"] == "SIGTERM"
    resume_and_check(reference, out, term["step"])


def test_sigterm_during_a_save_finishes_and_commits_it(reference: Reference, work: Path) -> None:
    out = work / "out"
    env = base_env(FTO_TEST_SAVE_SLEEP_SECONDS="2", FTO_TEST_SAVE_SLEEP_AT_STEP=str(SAVE_STEPS))
    proc = start(synchronous(reference.config, work), out, env=env, tag="term")
    proc.wait_event(lambda e: e.get("event") == "fault_injection_save_sleep")
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 75, proc.tail()
    term = proc.termination()
    assert term["step"] == SAVE_STEPS and term["checkpoint"] == f"checkpoint-{SAVE_STEPS}"
    assert term["save_seconds"] >= 1.5  # the save (with its 2 s injected sleep) was finished, not abandoned
    assert committed(out) == [SAVE_STEPS]


def test_sigterm_during_a_background_save_finishes_it_then_saves_where_training_stopped(
    reference: Reference, work: Path
) -> None:
    """Training went on while checkpoint-5 was being written: the stop waits for that save (finished, not
    abandoned), then commits the step training stopped at; resume from it is exact."""
    out = work / "out"
    env = base_env(FTO_TEST_SAVE_SLEEP_SECONDS="2", FTO_TEST_SAVE_SLEEP_AT_STEP=str(SAVE_STEPS))
    proc = start(reference.config, out, env=env, tag="term")
    proc.wait_event(lambda e: e.get("event") == "fault_injection_save_sleep")
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 75, proc.tail()
    term = proc.termination()
    assert term["step"] >= SAVE_STEPS, term
    assert term["checkpoint"] == f"checkpoint-{term['step']}" and term["checkpoint_step"] == term["step"]
    commits = {e["step"]: e for e in proc.events() if e.get("event") == "checkpoint_committed"}
    assert commits[SAVE_STEPS]["background"] is True
    assert commits[SAVE_STEPS]["save_seconds"] >= 1.5  # finished with its 2 s injected sleep, not abandoned
    assert term["step"] in commits and max(committed(out)) == term["step"]
    assert SAVE_STEPS in committed(out) or term["step"] > 2 * SAVE_STEPS  # unless retention removed it
    resume_and_check(reference, out, term["step"])


def test_completed_output_dir_is_idempotent(reference: Reference) -> None:
    """A restarted pod after success (e.g. killed right after writing final/) exits 0 at once."""
    proc = run(reference.config, reference.output_dir, tag="again")
    assert proc.popen.returncode == 0
    assert proc.termination()["reason"] == "Completed"
    assert any(e.get("event") == "already_complete" for e in proc.events())

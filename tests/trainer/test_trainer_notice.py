"""A save inside the notice (issue 13): with gradient accumulation, a SIGTERM whose deadline leaves no time to
finish the optimizer step stops at the next micro-batch and commits the last completed step, and resume from
it is exact; with time enough, the trainer still finishes the step. Real processes, real signals."""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from trainer_harness import Proc, assert_same_adapter, base_env, run, start, write_config

pytestmark = pytest.mark.slow

STEPS = 4
ACCUMULATION = 4  # micro-batches of 4 examples: 16 a step, 64 micro-batches an epoch (256 examples)
MICRO_BATCH_SLEEP = "1.0"  # an optimizer step takes ~4 s: longer than the short deadline below
SHORT_DEADLINE = 2.5


def accumulation_config(path: Path, tiny: Path, deadline: float, examples: int | None = None) -> Path:
    write_config(path, tiny, max_steps=STEPS, save_steps=100, gradient_accumulation_steps=ACCUMULATION)
    config = yaml.safe_load(path.read_text())
    assert config["lora"]["lora_dropout"] > 0  # dropout draws from the RNG at every micro-batch
    config["save_deadline_seconds"] = deadline
    if examples is not None:  # a smaller dataset: epochs of examples / 16 steps
        data = path.parent / "data.jsonl"
        lines = Path(config["dataset"]["path"]).read_text().splitlines()[:examples]
        data.write_text("\n".join(lines) + "\n")
        config["dataset"]["path"] = str(data)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass
class AccumulationReference:
    config: Path
    output_dir: Path
    proc: Proc
    losses: dict[int, float]


@pytest.fixture(scope="module")
def accumulation_reference(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> AccumulationReference:
    work = tmp_path_factory.mktemp("accumulation")
    config = accumulation_config(work / "config.yaml", tiny, SHORT_DEADLINE)
    proc = run(config, work / "out")
    assert proc.popen.returncode == 0, proc.tail()
    return AccumulationReference(config, work / "out", proc, proc.losses())


def sigterm_in_step_two(config: Path, out: Path, sleep: str, after_step: int = 1) -> Proc:
    proc = start(config, out, env=base_env(FTO_TEST_MICRO_BATCH_SLEEP_SECONDS=sleep), tag="term")
    proc.wait_step(after_step)  # logged: the next step's micro-batches run now
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 75, proc.tail()
    return proc


def test_sigterm_mid_accumulation_commits_the_last_step_and_resumes_exactly(
    accumulation_reference: AccumulationReference, work: Path
) -> None:
    ref = accumulation_reference
    out = work / "out"
    proc = sigterm_in_step_two(ref.config, out, MICRO_BATCH_SLEEP)
    term = proc.termination()
    assert (term["reason"], term["step"], term["checkpoint"]) == ("Preempted", 1, "checkpoint-1"), term
    assert term["save_in_time"] is True and term["save_deadline_seconds"] == SHORT_DEADLINE, term
    stop = next(e for e in proc.events() if e.get("event") == "preemption_stop")
    assert stop["at"] == "micro_batch" and stop["step"] == 1, stop
    assert stop["needed_seconds"] > stop["seconds_left"], stop
    assert 0 < stop["micro_batches_left"] < ACCUMULATION, stop
    assert not any(e.get("event") == "save_deadline_exceeded" for e in proc.events()), proc.tail()
    checkpoint = out / "checkpoint-1"
    assert (checkpoint / "COMMITTED.json").is_file()
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    reference_epoch = next(e for e in ref.proc.events() if e.get("event") == "train_log" and e["step"] == 1)
    assert state["global_step"] == 1 and state["epoch"] == pytest.approx(reference_epoch["epoch"]), state
    # The unfinished step's micro-batch losses leak neither into the saved log nor into the run's summary.
    assert [e["loss"] for e in state["log_history"] if "loss" in e] == [ref.losses[1]], state["log_history"]
    summary = next(e for e in proc.events() if e.get("event") == "train_summary")
    assert summary["train_loss"] == pytest.approx(ref.losses[1]), summary

    resumed = run(ref.config, out, "--resume", "auto", tag="resume")
    assert resumed.popen.returncode == 0, resumed.tail()
    chosen = [e for e in resumed.events() if e.get("event") == "resume_from"]
    assert chosen and chosen[0]["checkpoint"] == "checkpoint-1", resumed.tail()
    assert resumed.losses() == {s: ref.losses[s] for s in range(2, STEPS + 1)}
    assert_same_adapter(ref.output_dir, out)


def test_sigterm_with_time_enough_finishes_the_step(tiny: Path, work: Path) -> None:
    config = accumulation_config(work / "config.yaml", tiny, deadline=60.0)
    out = work / "out"
    proc = sigterm_in_step_two(config, out, "0.5")
    events = proc.events()
    waited = next(e for e in events if e.get("event") == "preemption_finish_step")
    assert waited["step"] == 2 and waited["needed_seconds"] <= waited["seconds_left"], waited
    stop = next(e for e in events if e.get("event") == "preemption_stop")
    assert stop["at"] == "step_end" and stop["step"] == 2, stop
    term = proc.termination()
    assert (term["step"], term["checkpoint"]) == (2, "checkpoint-2"), term


def test_emergency_save_past_the_deadline_says_so(tiny: Path, work: Path) -> None:
    """The watchdog gives up on a save that outlasts the deadline: exit 75, save_in_time false, the newest
    checkpoint committed before (none here) named for resume."""
    config = accumulation_config(work / "config.yaml", tiny, deadline=2.0)
    out = work / "out"
    env = base_env(FTO_TEST_MICRO_BATCH_SLEEP_SECONDS="0.3", FTO_TEST_SAVE_SLEEP_SECONDS="30")
    proc = start(config, out, env=env, tag="term")
    proc.wait_step(1)
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 75, proc.tail()
    term = proc.termination()
    assert term["reason"] == "Preempted" and term["save_in_time"] is False, term
    assert term["save_deadline_seconds"] == 2.0 and "checkpoint" not in term, term
    assert any(e.get("event") == "save_deadline_exceeded" for e in proc.events()), proc.tail()
    assert not list(out.glob("checkpoint-*/COMMITTED.json"))


def test_sigterm_in_the_first_step_of_an_epoch_resumes_exactly(tiny: Path, work: Path) -> None:
    """32 examples: 2 steps an epoch. SIGTERM during step 3 (epoch 2's first) → checkpoint-2; resume starts
    epoch 2 afresh and reloads the RNG state before the epoch's data iterator, where it was snapshotted."""
    (work / "ref").mkdir()
    ref_config = accumulation_config(work / "ref" / "config.yaml", tiny, SHORT_DEADLINE, examples=32)
    reference = run(ref_config, work / "ref" / "out")
    assert reference.popen.returncode == 0, reference.tail()
    assert [e for e in reference.events() if e.get("event") == "train_log"][1]["epoch"] == 1.0
    config = accumulation_config(work / "config.yaml", tiny, SHORT_DEADLINE, examples=32)
    out = work / "out"
    proc = sigterm_in_step_two(config, out, MICRO_BATCH_SLEEP, after_step=2)
    stop = next(e for e in proc.events() if e.get("event") == "preemption_stop")
    assert (stop["at"], stop["step"], proc.termination()["checkpoint"]) == ("micro_batch", 2, "checkpoint-2")
    resumed = run(config, out, "--resume", "auto", tag="resume")
    assert resumed.popen.returncode == 0, resumed.tail()
    assert resumed.losses() == {s: loss for s, loss in reference.losses().items() if s > 2}
    assert_same_adapter(work / "ref" / "out", out)


def test_two_ranks_stop_at_the_same_micro_batch_and_resume_exactly(tiny: Path, work: Path) -> None:
    """`--nproc-per-node 2` (gloo): every rank takes part in the micro-batch check, so both stop at the same
    micro-batch; each rank's checkpoint RNG file is its own step-boundary state."""
    (work / "ref").mkdir()
    ref_config = accumulation_config(work / "ref" / "config.yaml", tiny, SHORT_DEADLINE)
    reference = run(ref_config, work / "ref" / "out", "--nproc-per-node", "2", tag="ref")
    assert reference.popen.returncode == 0, reference.tail()
    config = accumulation_config(work / "config.yaml", tiny, SHORT_DEADLINE)
    out = work / "out"
    env = base_env(FTO_TEST_MICRO_BATCH_SLEEP_SECONDS=MICRO_BATCH_SLEEP)
    proc = start(config, out, "--nproc-per-node", "2", env=env, tag="term")
    proc.wait_step(1)
    proc.signal(signal.SIGTERM)  # to the launcher; it forwards to both ranks
    assert proc.wait() == 75, proc.tail()
    stops = [e for e in proc.events() if e.get("event") == "preemption_stop"]
    assert sorted(e["rank"] for e in stops) == [0, 1], stops
    assert {(e["at"], e["step"]) for e in stops} == {("micro_batch", 1)}, stops
    assert proc.termination()["checkpoint"] == "checkpoint-1"
    resumed = run(config, out, "--nproc-per-node", "2", tag="resume")
    assert resumed.popen.returncode == 0, resumed.tail()
    assert resumed.losses() == {s: loss for s, loss in reference.losses().items() if s > 1}
    assert_same_adapter(work / "ref" / "out", out)

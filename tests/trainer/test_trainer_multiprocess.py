"""Two ranks on CPU (gloo) under `finetune-trainer --nproc-per-node 2`: SIGTERM to PID 1 stops both ranks at
the same step, rank 0 commits a checkpoint with both ranks' RNG state, and resume reproduces the
uninterrupted two-rank run bit for bit."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from trainer_harness import assert_same_adapter, base_env, run, start, write_config

pytestmark = pytest.mark.slow

STEPS = 16


def test_two_ranks_sigterm_commit_and_exact_resume(tiny: Path, work: Path) -> None:
    config = write_config(work / "config.yaml", tiny, max_steps=STEPS, save_steps=4)
    ref = run(config, work / "ref", "--nproc-per-node", "2", tag="ref")
    assert ref.popen.returncode == 0, ref.tail()
    # backgroundSave defaults to true, but with several ranks every save is synchronous (documented)
    loaded = [e for e in ref.events() if e.get("event") == "loaded"]
    assert len(loaded) == 2 and not any(e["background_save"] for e in loaded), loaded
    commits = [e for e in ref.events() if e.get("event") == "checkpoint_committed"]
    assert commits and not any(e["background"] for e in commits)

    out = work / "out"
    proc = start(
        config, out, "--nproc-per-node", "2", env=base_env(FTO_TEST_STEP_SLEEP_SECONDS="0.1"), tag="term"
    )
    proc.wait_step(6)
    proc.signal(signal.SIGTERM)  # to the launcher (PID 1 in a pod); it forwards to both ranks
    assert proc.wait() == 75, proc.tail()
    term = proc.termination()
    assert term["reason"] == "Preempted" and term["checkpoint"] == f"checkpoint-{term['step']}"
    stops = [e for e in proc.events() if e.get("event") == "exit"]
    assert sorted(e["rank"] for e in stops) == [0, 1]
    assert {e["step"] for e in stops} == {term["step"]}, "both ranks must stop at the same step"
    ckpt = out / term["checkpoint"]
    assert (ckpt / "COMMITTED.json").is_file()
    assert (ckpt / "rng_state_0.pth").is_file() and (ckpt / "rng_state_1.pth").is_file()

    resumed = run(config, out, "--nproc-per-node", "2", tag="resume")
    assert resumed.popen.returncode == 0, resumed.tail()
    assert_same_adapter(work / "ref", out)
    ref_losses = ref.losses()
    losses = resumed.losses()
    assert losses and all(losses[s] == ref_losses[s] for s in losses)

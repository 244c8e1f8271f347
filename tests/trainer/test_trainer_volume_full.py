"""A full checkpoint volume (issue 10, item 4), on a real small filesystem (tmpfs) with the trainer in a real
process: a save that does not fit exits 74 (VolumeFull) saying how much is free and what the checkpoint needs,
earlier committed checkpoints stay intact (and resume works once the volume is bigger), and retention makes
room before a save when space is short.

Sizes on tmpfs (4 KiB pages): a tiny-model checkpoint takes ≈100 KiB, final/ ≈180 KiB (the tokenizer). A
260 KiB volume holds two checkpoints, not three, and never two checkpoints plus final/.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from finetune_trainer import checkpoints as ckpt
from trainer_harness import base_env, run, write_config

VOLUME = "260k"


@pytest.fixture
def small_volume(work: Path) -> Iterator[Path]:
    mount = work / "vol"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={VOLUME}", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def committed_steps(out: Path) -> list[int]:
    return sorted(record.step for record in ckpt.committed_checkpoints(out))


@pytest.mark.slow
def test_a_save_that_does_not_fit_exits_74_and_keeps_earlier_checkpoints(
    tiny: Path, work: Path, small_volume: Path
) -> None:
    config = write_config(work / "config.yaml", tiny, max_steps=8, save_steps=2, save_total_limit=10)
    proc = run(config, small_volume, tag="full")
    assert proc.popen.returncode == 74, proc.tail()
    term = proc.termination()
    assert term["reason"] == "VolumeFull", term
    assert "checkpoint volume full" in term["message"] and "checkpoint-6" in term["message"]
    assert "lower training.save_total_limit" in term["message"], term["message"]
    assert 0 <= term["free_bytes"] < term["needed_bytes"], term  # what was free vs the last checkpoint's size
    assert term["checkpoint"] == "checkpoint-4"
    logged = [e for e in proc.events() if e.get("event") == "volume_full"]
    assert logged and logged[0]["free_bytes"] == term["free_bytes"]
    assert "unexpected pos" not in term["message"].split("(")[0]  # the cause comes first, torch's text after

    # Earlier committed checkpoints are intact (every file matches its marker); the torn one is gone.
    choice = ckpt.find_resume_checkpoint(small_volume)
    assert not choice.skipped and committed_steps(small_volume) == [2, 4]
    assert not (small_volume / "checkpoint-6").exists()

    # Grow the volume (what expanding the claim does) and resume: it goes on from checkpoint-4.
    subprocess.run(["mount", "-o", "remount,size=2m", str(small_volume)], check=True)
    resumed = run(config, small_volume, tag="grown")
    assert resumed.popen.returncode == 0, resumed.tail()
    assert next(e for e in resumed.events() if e.get("event") == "resume_from")["step"] == 4
    assert (small_volume / "final" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_retention_makes_room_before_a_save_and_final_not_fitting_exits_74(
    tiny: Path, work: Path, small_volume: Path
) -> None:
    config = write_config(work / "config.yaml", tiny, max_steps=8, save_steps=2, save_total_limit=2)
    proc = run(config, small_volume, tag="retain")
    # Saves at 6 and 8 only fit because retention deleted the oldest checkpoint first (2 + 1 do not fit).
    made_room = [e for e in proc.events() if e.get("event") == "retention_before_save"]
    assert [e["deleted"] for e in made_room] == [["checkpoint-2"], ["checkpoint-4"]], proc.tail()
    assert [e["step"] for e in proc.events() if e.get("event") == "checkpoint_committed"] == [2, 4, 6, 8]
    # final/ (≈180 KiB) does not fit beside the two retained checkpoints: 74, nothing committed lost.
    assert proc.popen.returncode == 74, proc.tail()
    term = proc.termination()
    assert term["reason"] == "VolumeFull" and "final" in term["message"], term
    assert committed_steps(small_volume) == [6, 8]
    assert not ckpt.find_resume_checkpoint(small_volume).skipped
    assert not ckpt.final_complete(small_volume)


@pytest.mark.slow
def test_a_volume_too_small_for_cache_plus_kept_checkpoints_is_warned_about(
    tiny: Path, work: Path, small_volume: Path
) -> None:
    """HF_HOME on the checkpoint volume, as in the pod, on 700 KiB: keeping 10
    checkpoints of ≈100 KiB plus the cache cannot fit, though this 2-step run does: a warning (the log line
    behind status.volumeWarning and the VolumeTooSmall Event), and training goes on."""
    subprocess.run(["mount", "-o", "remount,size=700k", str(small_volume)], check=True)
    config = write_config(work / "config.yaml", tiny, max_steps=2, save_steps=1, save_total_limit=10)
    hf_home = small_volume / ".cache" / "hf"
    proc = run(config, small_volume, env=base_env(HF_HOME=str(hf_home)), tag="warn")
    assert proc.popen.returncode == 0, proc.tail()
    checks = [e for e in proc.events() if e.get("event") == "volume_space"]
    assert checks, proc.tail()
    first = checks[0]
    assert first["warning"].startswith("checkpoint volume too small: it holds 700.0 KiB"), first
    assert first["capacity_bytes"] == 700 * 1024 and first["kept"] == 10
    assert first["cache_bytes"] > 0  # datasets' processed copy of the training file, under HF_HOME
    assert first["needed_bytes"] == first["cache_bytes"] + 11 * first["checkpoint_bytes"]
    # after the first commit the real checkpoint size replaces the estimate
    committed = [e for e in proc.events() if e.get("event") == "checkpoint_committed"]
    assert committed and any(c["checkpoint_bytes"] == committed[0]["bytes"] for c in checks), checks
    assert all(c["warning"] for c in checks)

"""No kill and no damaged byte may change the result (issue 10, items 1-3): real processes, real SIGKILL,
real checkpoint files damaged in place. Every resumed run must end with a final adapter equal, tensor for
tensor, to an undisturbed run of the same config, or stop with exit 65 and say why.

Reference runs (one per lr schedule and end position) are shared through `refs` and start in parallel with
the run under test. The tiny dataset has 256 examples; at batch 8 an epoch is 32 steps, so `mid_epoch` ends
at step 24 and `epoch_end` at step 32 (num_train_epochs 1). A checkpoint every 4 steps, all kept.
"""

from __future__ import annotations

import json
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from finetune_trainer import checkpoints as ckpt
from trainer_harness import Proc, assert_same_adapter, base_env, run, start, write_config

pytestmark = pytest.mark.slow

SCHEDULES = ("constant", "linear", "cosine")
POSITIONS = {  # name -> (training overrides, the last step)
    "mid_epoch": ({"max_steps": 24}, 24),
    "epoch_end": ({"max_steps": -1, "num_train_epochs": 1}, 32),
}
SAVE_EVERY = 4


@dataclass
class Ref:
    config: Path
    output_dir: Path
    last_step: int
    proc: Proc

    def losses(self) -> dict[int, float]:
        return self.proc.losses()


class Refs:
    """Undisturbed runs, started on first use (in the background) and shared by the whole session."""

    def __init__(self, tiny: Path, root: Path):
        self.tiny = tiny
        self.root = root
        self._runs: dict[tuple[str, str], Ref] = {}

    def config(self, schedule: str, position: str, path: Path, **extra: Any) -> Path:
        overrides, _last = POSITIONS[position]
        config = write_config(
            path,
            self.tiny,
            save_steps=SAVE_EVERY,
            save_total_limit=1000,  # keep every checkpoint (null means the default, 2, as in the apiserver)
            per_device_train_batch_size=8,
            lr_scheduler_type=schedule,
            **overrides,
        )
        if extra:
            data = yaml.safe_load(config.read_text())
            data.update(extra)
            config.write_text(yaml.safe_dump(data, sort_keys=False))
        return config

    def start(self, schedule: str, position: str) -> None:
        key = (schedule, position)
        if key not in self._runs:
            work = self.root / f"{schedule}-{position}"
            work.mkdir()
            config = self.config(schedule, position, work / "config.yaml")
            proc = start(config, work / "out", tag="reference")
            self._runs[key] = Ref(config, work / "out", POSITIONS[position][1], proc)

    def get(self, schedule: str, position: str) -> Ref:
        self.start(schedule, position)
        ref = self._runs[(schedule, position)]
        assert ref.proc.wait() == 0, ref.proc.tail()
        return ref


@pytest.fixture(scope="session")
def refs(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Refs]:
    pool = Refs(tiny, tmp_path_factory.mktemp("refs"))
    yield pool
    for ref in pool._runs.values():
        if ref.proc.popen.poll() is None:
            ref.proc.popen.kill()


def committed(out: Path) -> list[int]:
    return sorted(s for s, p in ckpt.list_checkpoints(out) if (p / "COMMITTED.json").is_file())


def tree(path: Path) -> dict[str, bytes]:
    """Every file under `path` with its bytes (evidence must survive byte for byte)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def copy_without_final(ref: Ref, out: Path) -> Path:
    shutil.copytree(ref.output_dir, out)
    shutil.rmtree(out / "final")
    return out


def events(proc: Proc, name: str) -> list[dict[str, Any]]:
    return [e for e in proc.events() if e.get("event") == name]


def zero_fill(path: Path) -> None:
    path.write_bytes(b"\0" * path.stat().st_size)


def flip_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def final_step(out: Path) -> int:
    return int(json.loads((out / "final" / "COMMITTED.json").read_text())["step"])


# ------------------------------------------------------------------------- item 1: no extra optimizer step


@pytest.mark.parametrize("position", list(POSITIONS))
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_kill_between_last_commit_and_final_resumes_without_an_extra_step(
    refs: Refs, work: Path, schedule: str, position: str
) -> None:
    refs.start(schedule, position)  # runs alongside the run under test
    last = POSITIONS[position][1]
    config = refs.config(schedule, position, work / "config.yaml")
    out = work / "out"
    killed = start(config, out, env=base_env(FTO_TEST_FINAL_SLEEP_SECONDS="60"), tag="killed")
    killed.wait_event(lambda e: e.get("event") == "fault_injection_final_sleep")
    killed.signal(signal.SIGKILL)
    killed.wait()
    assert committed(out)[-1] == last and not (out / "final").exists()

    resumed = run(config, out, tag="resume")
    assert resumed.popen.returncode == 0, resumed.tail()
    assert [e["checkpoint"] for e in events(resumed, "resume_from")] == [f"checkpoint-{last}"]
    assert not events(resumed, "checkpoint_committed"), "no step may be trained after the last one"
    assert not [e for e in events(resumed, "train_log") if "loss" in e], resumed.tail()
    assert committed(out)[-1] == last and final_step(out) == last
    assert resumed.termination()["step"] == last
    ref = refs.get(schedule, position)
    assert_same_adapter(ref.output_dir, out)


# ------------------------------------------------------------- item 2: damage that keeps a file's size


@pytest.mark.parametrize(
    ("schedule", "damage"),
    [("constant", zero_fill), ("linear", flip_bit)],
    ids=["zero-filled", "bit-flipped"],
)
def test_same_size_damage_to_each_file_kind_falls_back_to_the_older_intact_checkpoint(
    refs: Refs, work: Path, schedule: str, damage: Any
) -> None:
    ref = refs.get(schedule, "mid_epoch")
    out = copy_without_final(ref, work / "out")
    # One damaged file per checkpoint, newest first; checkpoint-4 stays intact.
    damaged = {
        24: "adapter_model.safetensors",
        20: "optimizer.pt",
        16: "scheduler.pt",
        12: "rng_state.pth",
        8: "trainer_state.json",
    }
    for step, name in damaged.items():
        damage(out / f"checkpoint-{step}" / name)
    evidence = {step: tree(out / f"checkpoint-{step}") for step in damaged}

    proc = run(ref.config, out, tag="damaged")
    assert proc.popen.returncode == 0, proc.tail()
    skipped = {e["checkpoint"]: e for e in events(proc, "checkpoint_skipped")}
    for step, name in damaged.items():
        event = skipped[f"checkpoint-{step}"]
        assert event["damaged"] and event["reason"].startswith(f"{name}: CRC-32 "), event
    assert [e["checkpoint"] for e in events(proc, "resume_from")] == ["checkpoint-4"]
    assert_same_adapter(ref.output_dir, out)
    assert proc.losses() == {s: v for s, v in ref.losses().items() if s > 4}
    # Set aside, never deleted: every damaged byte is still there, out of the way of resume and retention.
    for step, files in evidence.items():
        kept = tree(out / "damaged" / f"checkpoint-{step}")
        note = json.loads(kept.pop("SET_ASIDE.json"))
        assert kept == files and note["reason"].startswith(f"{damaged[step]}: CRC-32 ")
    moved = {e["checkpoint"] for e in events(proc, "checkpoint_set_aside")}
    assert moved == {f"checkpoint-{s}" for s in damaged}


def test_checkpoints_that_pass_their_checks_but_cannot_be_restored_are_set_aside_in_process(
    refs: Refs, work: Path
) -> None:
    """checkpoint-24: optimizer.pt is a valid torch file with the right checksum, but not an optimizer state
    (the Trainer fails inside train(): the model is rebuilt and the next one tried, in the same process).
    checkpoint-20: a version-1 (sizes only) marker over a zero-filled rng_state.pth (the restore probe)."""
    ref = refs.get("cosine", "mid_epoch")
    out = copy_without_final(ref, work / "out")
    newest = out / "checkpoint-24"
    shutil.copyfile(newest / "scheduler.pt", newest / "optimizer.pt")
    (newest / "COMMITTED.json").unlink()
    ckpt.commit_checkpoint(newest)  # a marker that vouches for the wrong bytes
    older = out / "checkpoint-20"
    marker = json.loads((older / "COMMITTED.json").read_text())
    marker = {k: v for k, v in marker.items() if k not in ("checksum", "checksums")} | {"version": 1}
    (older / "COMMITTED.json").write_text(json.dumps(marker))
    zero_fill(older / "rng_state.pth")

    proc = run(ref.config, out, tag="unrestorable")
    assert proc.popen.returncode == 0, proc.tail()
    chosen = [(e["checkpoint"], e["marker_version"]) for e in events(proc, "resume_from")]
    assert chosen == [("checkpoint-24", 2), ("checkpoint-20", 1), ("checkpoint-16", 2)]
    failed = {e["checkpoint"]: e["reason"] for e in events(proc, "checkpoint_restore_failed")}
    assert failed.keys() == {"checkpoint-24", "checkpoint-20"}
    assert "optimizer.pt / scheduler.pt: cannot be restored" in failed["checkpoint-24"]
    assert failed["checkpoint-20"].startswith("restore probe: rng_state.pth: cannot be restored")
    assert len(events(proc, "loaded")) == 2, "the model is built once more after the failed restore only"
    assert_same_adapter(ref.output_dir, out)
    assert proc.losses() == {s: v for s, v in ref.losses().items() if s > 16}
    assert sorted(p.name for p in (out / "damaged").iterdir()) == ["checkpoint-20", "checkpoint-24"]


# ---------------------------------------------------------------- item 3: every checkpoint damaged


def damage_all(out: Path) -> str:
    """Zero-fill optimizer.pt everywhere and add a torn save above the newest (its name is returned)."""
    found = ckpt.list_checkpoints(out)
    for _step, path in found:
        zero_fill(path / "optimizer.pt")
    torn = out / f"checkpoint-{found[0][0] + SAVE_EVERY}"  # a save that never finished: normal, not damage
    torn.mkdir()
    (torn / "optimizer.pt").write_bytes(b"partial")
    return torn.name


def test_no_intact_checkpoint_exits_65_naming_each_and_touches_nothing(refs: Refs, work: Path) -> None:
    ref = refs.get("linear", "mid_epoch")
    out = copy_without_final(ref, work / "out")
    torn = damage_all(out)
    before = tree(out)
    proc = run(ref.config, out, tag="none-intact")
    assert proc.popen.returncode == 65, proc.tail()
    term = proc.termination()
    assert term["reason"] == "NoIntactCheckpoint" and "checkpoint" not in term
    message = term["message"]
    for step in range(SAVE_EVERY, 25, SAVE_EVERY):
        assert f"checkpoint-{step}: optimizer.pt: CRC-32 " in message, message
    assert f"{torn}: not committed" in message
    assert "Nothing was deleted or moved" in message and "onNoIntactCheckpoint: restart" in message
    assert any(line.startswith("no intact checkpoint: ") for line in proc.log_path.read_text().splitlines())
    assert tree(out) == before, "evidence must stay exactly as it was"
    assert events(proc, "loaded"), "decided once the config proved loadable: a config error (78) comes first"
    # Starting over by hand needs more than --resume never: it refuses damaged committed ones too.
    never = run(ref.config, out, "--resume", "never", tag="never")
    assert never.popen.returncode == 78 and "checkpoint-24" in never.termination()["message"]
    assert tree(out) == before


def test_resume_path_to_a_damaged_checkpoint_exits_65_and_moves_nothing(refs: Refs, work: Path) -> None:
    ref = refs.get("linear", "mid_epoch")
    out = copy_without_final(ref, work / "out")
    flip_bit(out / "checkpoint-20" / "adapter_model.safetensors")
    before = tree(out)
    proc = run(ref.config, out, "--resume", str(out / "checkpoint-20"), tag="path")
    assert proc.popen.returncode == 65, proc.tail()
    message = proc.termination()["message"]
    assert "adapter_model.safetensors: CRC-32 " in message and "nothing was moved" in message
    assert tree(out) == before


def test_no_intact_checkpoint_with_restart_sets_them_aside_and_trains_from_scratch(
    refs: Refs, work: Path
) -> None:
    ref = refs.get("constant", "epoch_end")
    out = copy_without_final(ref, work / "out")
    torn = damage_all(out)
    evidence = {p.name: tree(p) for _s, p in ckpt.list_checkpoints(out) if (p / "COMMITTED.json").exists()}
    config = refs.config("constant", "epoch_end", work / "restart.yaml", on_no_intact_checkpoint="restart")
    proc = run(config, out, tag="restart")
    assert proc.popen.returncode == 0, proc.tail()
    assert not events(proc, "resume_from")
    assert sorted(p.name for p in (out / "damaged").iterdir()) == sorted(evidence)
    for name, files in evidence.items():
        kept = tree(out / "damaged" / name)
        kept.pop("SET_ASIDE.json")
        assert kept == files
    assert_same_adapter(ref.output_dir, out)
    assert proc.losses() == ref.losses()
    stale = events(proc, "removed_stale_checkpoints")
    assert stale and stale[0]["checkpoints"] == [torn]  # the torn save is deleted, as before


def test_reference_runs_are_what_the_tests_assume(refs: Refs) -> None:
    """Epoch boundary and mid-epoch as named; every checkpoint kept; the marker is version 2."""
    for position, (_overrides, last) in POSITIONS.items():
        ref = refs.get("constant", position)
        assert committed(ref.output_dir) == list(range(SAVE_EVERY, last + 1, SAVE_EVERY))
        epoch = next(e for e in events(ref.proc, "train_log") if e.get("step") == last)["epoch"]
        assert (epoch == 1.0) == (position == "epoch_end"), epoch
        marker = json.loads((ref.output_dir / f"checkpoint-{last}" / "COMMITTED.json").read_text())
        assert marker["version"] == 2 and marker["checksum"] == "crc32"
        assert final_step(ref.output_dir) == last

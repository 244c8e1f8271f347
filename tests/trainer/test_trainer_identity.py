"""Run identity in real trainer processes: a run directory belongs to one run, and continuing from another
run is explicit (--resume-from), read only, and exact where the spec is the same."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml
from trainer_harness import Proc, assert_same_adapter, run, write_config

pytestmark = pytest.mark.slow

STEPS = 10
SAVE = 5


def tree(root: Path) -> dict[str, str]:
    """Every file under root with a digest of its bytes (and so: nothing added, removed or changed)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def source(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run uid-a, undisturbed, every checkpoint kept: claim/runs/uid-a/{checkpoint-5,checkpoint-10,final}."""
    claim = tmp_path_factory.mktemp("claim")
    (claim / "runs").mkdir()  # the harness puts each run's log beside its directory
    config = write_config(claim / "a.yaml", tiny, max_steps=STEPS, save_steps=SAVE, save_total_limit=10)
    proc = run(config, claim / "runs" / "uid-a", "--run-id", "uid-a")
    assert proc.popen.returncode == 0, proc.tail()
    return claim


def refused(proc: Proc) -> str:
    assert proc.popen.returncode == 78, proc.tail()
    message = proc.termination()
    assert message["reason"] == "ConfigError"
    lines = [line for line in proc.log_path.read_text().splitlines() if line.startswith("config error:")]
    assert len(lines) == 1, proc.tail()
    return str(message["message"])


def test_another_runs_directory_is_refused_and_left_as_it_was(source: Path, tiny: Path) -> None:
    run_dir = source / "runs" / "uid-a"
    identity = json.loads((run_dir / "RUN.json").read_text())
    assert identity["run_id"] == "uid-a" and identity["started_from"] == "fresh"
    assert (
        identity["fingerprint"].startswith("sha256:") and identity["spec"]["training"]["max_steps"] == STEPS
    )
    for name in ("checkpoint-5", "checkpoint-10", "final"):
        marker = json.loads((run_dir / name / "COMMITTED.json").read_text())
        assert (marker["run_id"], marker["fingerprint"]) == ("uid-a", identity["fingerprint"])
    before = tree(run_dir)
    # a job re-created under the same name gets another uid: the old run is not its own
    changed = write_config(
        source / "b.yaml", tiny, max_steps=STEPS, save_steps=SAVE, save_total_limit=10, learning_rate=1e-3
    )
    text = refused(run(changed, run_dir, "--run-id", "uid-b", tag="other-run"))
    assert f"--output-dir {run_dir} belongs to another run: run uid-a, not uid-b" in text
    assert "training.learning_rate: 0.005 → 0.001" in text and "nothing was changed" in text
    # the same run id with another training spec (a config edited on a laptop)
    text = refused(run(changed, run_dir, "--run-id", "uid-a", tag="other-spec"))
    assert "started with a different training spec: training.learning_rate: 0.005 → 0.001" in text
    assert tree(run_dir) == before  # not a byte changed: no final reused, no checkpoint retained or moved


def test_resume_from_another_runs_checkpoint_is_exact_and_writes_only_its_own_directory(
    source: Path, tiny: Path
) -> None:
    before = tree(source / "runs" / "uid-a")
    config = write_config(source / "same.yaml", tiny, max_steps=STEPS, save_steps=SAVE, save_total_limit=10)
    own = source / "runs" / "uid-c"
    start = source / "runs" / "uid-a" / "checkpoint-5"
    proc = run(config, own, "--run-id", "uid-c", "--resume-from", str(start), tag="continue")
    assert proc.popen.returncode == 0, proc.tail()
    assert min(proc.losses()) == SAVE + 1  # continued after step 5, did not start over
    assert_same_adapter(own, source / "runs" / "uid-a")  # the same spec: exactly the undisturbed run
    assert tree(source / "runs" / "uid-a") == before  # read only
    identity = json.loads((own / "RUN.json").read_text())
    assert identity["run_id"] == "uid-c" and identity["started_from"] == str(start)
    assert sorted(p.name for p in own.iterdir()) == ["RUN.json", "checkpoint-10", "final"]
    assert json.loads((own / "checkpoint-10" / "COMMITTED.json").read_text())["run_id"] == "uid-c"
    # a second attempt of uid-c resumes its own directory (finished: completes at once), not the source
    again = run(config, own, "--run-id", "uid-c", "--resume-from", str(start), tag="again")
    assert again.popen.returncode == 0 and again.termination()["reason"] == "Completed"


def test_resume_from_a_run_directory_continues_its_newest_checkpoint_under_a_longer_schedule(
    source: Path, tiny: Path
) -> None:
    before = tree(source / "runs" / "uid-a")
    longer = write_config(
        source / "longer.yaml", tiny, max_steps=STEPS + 5, save_steps=SAVE, save_total_limit=10
    )
    own = source / "runs" / "uid-d"
    proc = run(
        longer, own, "--run-id", "uid-d", "--resume-from", str(source / "runs" / "uid-a"), tag="longer"
    )
    assert proc.popen.returncode == 0, proc.tail()
    chosen = next(e for e in proc.events() if str(e.get("reason", "")).startswith("--resume-from"))
    assert chosen["step"] == STEPS and chosen["differences"] == ["training.max_steps: 10 → 15"]
    assert sorted(proc.losses()) == list(range(STEPS + 1, STEPS + 6))
    assert json.loads((own / "final" / "COMMITTED.json").read_text())["step"] == STEPS + 5
    assert tree(source / "runs" / "uid-a") == before


def test_resume_from_a_run_with_another_lora_shape_is_refused(source: Path, tiny: Path) -> None:
    before = tree(source / "runs" / "uid-a")
    config = yaml.safe_load(
        write_config(source / "r4.yaml", tiny, max_steps=STEPS, save_steps=SAVE).read_text()
    )
    config["lora"]["r"] = 4
    (source / "r4.yaml").write_text(yaml.safe_dump(config))
    own = source / "runs" / "uid-e"
    proc = run(source / "r4.yaml", own, "--run-id", "uid-e", "--resume-from", str(source / "runs" / "uid-a"))
    text = refused(proc)
    assert "has another model or LoRA shape: lora.r: 8 → 4" in text and "run uid-a" in text
    assert not own.exists()
    assert tree(source / "runs" / "uid-a") == before

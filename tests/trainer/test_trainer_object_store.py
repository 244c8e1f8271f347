"""Object storage as the durable copy of checkpoints (issue 14), against a real S3 server (Versity Gateway,
tests/harness/object_store.py) on 127.0.0.1: upload after commit, resume from the store after the volume is
lost, a kill mid-upload, the store down mid-run. Real processes, real signals, the tiny model."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from trainer_harness import MAX_STEPS, Proc, Reference, assert_same_adapter, base_env, run, start

from tests.harness.object_store import ObjectStore

pytestmark = pytest.mark.slow

PREFIX = "runs/r1"


def store_config(ref: Reference, work: Path, store: ObjectStore) -> Path:
    data = yaml.safe_load(ref.config.read_text())
    data["object_store"] = store.config(PREFIX)
    path = work / "config-s3.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def env(store: ObjectStore, **extra: str) -> dict[str, str]:
    return base_env(**store.env(), NO_PROXY="127.0.0.1", **extra)


def named(proc: Proc, event: str) -> list[dict[str, Any]]:
    return [e for e in proc.events() if e.get("event") == event]


def resume_from_store(ref: Reference, config: Path, out: Path, store: ObjectStore, expect: int) -> Proc:
    """The volume is gone: a new, empty output directory resumes from the store's newest commit exactly."""
    shutil.rmtree(out)
    proc = run(config, out, "--resume", "auto", env=env(store), tag="after-loss")
    assert proc.popen.returncode == 0, proc.tail()
    downloaded = named(proc, "remote_checkpoint_downloaded")
    assert [e["checkpoint"] for e in downloaded] == [f"checkpoint-{expect}"], proc.tail()
    chosen = named(proc, "resume_from")
    assert chosen and chosen[0]["checkpoint"] == f"checkpoint-{expect}", proc.tail()
    # The new directory's RUN.json (and so status.startedFrom) names the store's copy it resumed from.
    started = json.loads((out / "RUN.json").read_text())["started_from"]
    assert started == f"s3://{store.bucket}/{PREFIX}/checkpoint-{expect}", started
    assert_same_adapter(ref.output_dir, out)
    losses = proc.losses()
    assert sorted(losses) == list(range(expect + 1, MAX_STEPS + 1))
    assert {s: ref.losses[s] for s in losses} == losses, "losses after the resume point differ"
    assert proc.termination()["durable_checkpoint"] == f"checkpoint-{MAX_STEPS}"
    assert store.committed_steps(PREFIX)[-1] == MAX_STEPS
    # the trained adapter outlives the volume too: final/ in the store, every file as on the volume
    assert proc.termination()["durable_final"] == "final"
    local = {
        str(p.relative_to(out / "final")): p.stat().st_size for p in (out / "final").rglob("*") if p.is_file()
    }
    remote = {k.removeprefix(f"{PREFIX}/final/"): v for k, v in store.objects(f"{PREFIX}/final/").items()}
    assert remote == local and "adapter_model.safetensors" in remote, (remote, local)
    return proc


def test_sigterm_uploads_within_the_deadline_and_a_lost_volume_resumes_from_the_store(
    reference: Reference, work: Path, object_store: ObjectStore
) -> None:
    config = store_config(reference, work, object_store)
    out = work / "out"
    proc = start(config, out, env=env(object_store, FTO_TEST_STEP_SLEEP_SECONDS="0.08"))
    proc.wait_event(lambda e: e.get("event") == "checkpoint_uploaded" and e["step"] >= 10)
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 75, proc.tail()
    term = proc.termination()
    stopped = term["checkpoint_step"]
    # The emergency checkpoint was committed locally and uploaded before the exit: it is the durable one.
    assert term["durable_checkpoint"] == term["checkpoint"] == f"checkpoint-{stopped}", term
    assert object_store.committed_steps(PREFIX)[-1] == stopped
    assert len(object_store.committed_steps(PREFIX)) <= 2  # remote retention (save_total_limit 2)
    uploaded = named(proc, "checkpoint_uploaded")
    assert all(e["bytes"] > 0 and e["seconds"] >= 0 for e in uploaded), uploaded
    # Every file of the marker is in the store with the committed size.
    marker = yaml.safe_load((out / f"checkpoint-{stopped}" / "COMMITTED.json").read_text())
    stored = object_store.objects(f"{PREFIX}/checkpoint-{stopped}/")
    for name, size in marker["files"].items():
        assert stored[f"{PREFIX}/checkpoint-{stopped}/{name}"] == size
    resume_from_store(reference, config, out, object_store, stopped)


def test_a_kill_mid_upload_leaves_nothing_that_is_used(
    reference: Reference, work: Path, object_store: ObjectStore
) -> None:
    config = store_config(reference, work, object_store)
    out = work / "out"
    # The trainer SIGKILLs itself after the first file of its second upload (FTO_TEST_UPLOAD_KILL_ON_UPLOAD).
    proc = run(config, out, env=env(object_store, FTO_TEST_UPLOAD_KILL_ON_UPLOAD="2"))
    assert proc.popen.returncode == -signal.SIGKILL, proc.tail()
    torn = named(proc, "fault_injection_upload_kill")[0]["checkpoint"]
    keys = object_store.objects(f"{PREFIX}/{torn}/")
    assert keys and f"{PREFIX}/{torn}/COMMITTED.json" not in keys, keys
    newest = object_store.committed_steps(PREFIX)[-1]
    assert int(torn.split("-")[1]) > newest
    resume_from_store(reference, config, out, object_store, newest)


def test_the_store_down_mid_run_delays_uploads_and_never_fails_training(
    reference: Reference, work: Path, object_store: ObjectStore
) -> None:
    config = store_config(reference, work, object_store)
    out = work / "out"
    proc = start(config, out, env=env(object_store, FTO_TEST_STEP_SLEEP_SECONDS="0.2"))
    proc.wait_event(lambda e: e.get("event") == "checkpoint_uploaded")
    object_store.stop()
    proc.wait_event(lambda e: e.get("event") == "checkpoint_upload_failed")
    down_at = max(proc.losses())
    time.sleep(2)
    steps_while_down = max(proc.losses()) - down_at
    object_store.start()
    assert proc.wait() == 0, proc.tail()
    assert steps_while_down > 0, "training waited for the store"
    assert proc.termination()["durable_checkpoint"] == f"checkpoint-{MAX_STEPS}"
    assert object_store.committed_steps(PREFIX)[-1] == MAX_STEPS
    assert_same_adapter(reference.output_dir, out)

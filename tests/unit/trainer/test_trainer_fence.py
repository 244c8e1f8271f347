"""The attempt fence (DIR/ATTEMPT.json) on real files, without training: claim, newer/equal/lower attempts.
The commit and final/ hooks it guards: test_trainer_checkpoints.py."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from finetune_api.contract import ATTEMPT_MARKER
from finetune_trainer.fence import AttemptFence, Superseded


def recorded(out: Path) -> dict:
    return json.loads((out / ATTEMPT_MARKER).read_text())


def test_claim_records_attempt_pod_and_time_atomically(tmp_path: Path) -> None:
    fence = AttemptFence(tmp_path, 3, pod="job-3")
    assert fence.claim()
    data = recorded(tmp_path)
    assert data["attempt"] == 3 and data["pod"] == "job-3" and data["time"].endswith("Z")
    assert sorted(p.name for p in tmp_path.iterdir()) == [ATTEMPT_MARKER], "no tmp file left behind"
    fence.check("anything")  # its own record: fine


def test_pod_name_defaults_to_the_pods_hostname(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAME", raising=False)
    monkeypatch.setenv("HOSTNAME", "job-7")
    AttemptFence(tmp_path, 7).claim()
    assert recorded(tmp_path)["pod"] == "job-7"


def test_a_newer_attempt_fences_the_older_one(tmp_path: Path) -> None:
    old = AttemptFence(tmp_path, 1, pod="job-1")
    old.claim()
    AttemptFence(tmp_path, 2, pod="job-2").claim()
    with pytest.raises(Superseded) as caught:
        old.check("committing checkpoint-10")
    text = str(caught.value)
    assert "attempt 2 (pod job-2" in text and "this is attempt 1" in text
    assert "before committing checkpoint-10" in text
    assert recorded(tmp_path)["attempt"] == 2, "the newer record is left as it is"
    # An older attempt that starts late cannot claim either, and does not overwrite the record.
    with pytest.raises(Superseded):
        AttemptFence(tmp_path, 1, pod="job-1-again").claim()
    assert recorded(tmp_path)["pod"] == "job-2"


def test_a_lower_recorded_attempt_is_replaced_an_equal_one_is_this_attempt(tmp_path: Path) -> None:
    AttemptFence(tmp_path, 4, pod="job-4").claim()
    AttemptFence(tmp_path, 5, pod="job-5").claim()
    assert recorded(tmp_path)["attempt"] == 5
    again = AttemptFence(tmp_path, 5, pod="job-5")  # the same attempt restarted in-process
    assert again.claim()
    again.check("retention")


def test_without_attempt_the_fence_is_off(tmp_path: Path) -> None:
    AttemptFence(tmp_path, 9, pod="job-9").claim()
    manual = AttemptFence(tmp_path, None)
    assert not manual.claim()
    manual.check("committing")  # a manual run is never fenced
    assert recorded(tmp_path)["attempt"] == 9


def test_claim_waits_for_the_directory_and_later_calls_only_check(tmp_path: Path) -> None:
    out = tmp_path / "out"
    fence = AttemptFence(out, 2, pod="job-2")
    assert not fence.claim() and not out.exists(), "a missing DIR is not created by the claim"
    out.mkdir()
    assert fence.claim()
    (out / ATTEMPT_MARKER).write_text(json.dumps({"attempt": 3, "pod": "job-3", "time": "t"}))
    with pytest.raises(Superseded):
        fence.claim()
    assert recorded(out)["attempt"] == 3


def test_an_unreadable_record_is_replaced_at_claim(tmp_path: Path) -> None:
    (tmp_path / ATTEMPT_MARKER).write_text("not json")
    fence = AttemptFence(tmp_path, 2, pod="job-2")
    fence.check("x")  # unreadable is not newer
    assert fence.claim() and recorded(tmp_path)["attempt"] == 2


def test_ranks_agree(tmp_path: Path) -> None:
    """`agree` (dist.any_rank) turns another rank's sighting into this rank's verdict."""
    fence = AttemptFence(tmp_path, 1)
    with pytest.raises(Superseded, match="seen by another rank"):
        fence.check("writing checkpoint-5", agree=lambda found: True)
    fence.check("writing checkpoint-5", agree=lambda found: found)


def test_a_check_costs_one_small_read(tmp_path: Path) -> None:
    fence = AttemptFence(tmp_path, 1)
    fence.claim()
    started = time.perf_counter()
    for _ in range(1000):
        fence.check("x")
    per_check = (time.perf_counter() - started) / 1000
    assert per_check < 0.005, f"{per_check * 1e6:.0f} µs per check"
    assert os.path.getsize(tmp_path / ATTEMPT_MARKER) < 200

"""metrics.py: names, types, labels (design.md §3), no double counting after an operator restart, removal."""

from __future__ import annotations

from finetune_api.metric_catalog import SAVE_BUCKETS
from finetune_operator.metrics import OperatorMetrics
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families


def families(m: OperatorMetrics) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(generate_latest(m.registry).decode())}


def sample(m: OperatorMetrics, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(generate_latest(m.registry).decode()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def status(step: int, ckpt: int | None, seconds: float = 0.1, **kw: object) -> dict[str, object]:
    s: dict[str, object] = {"phase": "Running", "step": step, "checkpoints": 2, **kw}
    if ckpt is not None:
        s["lastCheckpoint"] = {"step": ckpt, "time": f"t{ckpt}", "saveSeconds": seconds, "bytes": 1000 + ckpt}
    return s


def test_names_types_and_labels() -> None:
    m = OperatorMetrics()
    m.observe_job("ns", "a", status(3, None))
    m.observe_job("ns", "a", status(4, 4))
    m.observe_recovery("ns", "a", 3.0)
    fams = families(m)
    expected = {
        "finetune_checkpoint_save_duration_seconds": "histogram",
        "finetune_checkpoints": "gauge",
        "finetune_checkpoints_saved": "counter",
        "finetune_restarts": "counter",
        "finetune_jobs": "gauge",
        "finetune_training_step": "gauge",
        "finetune_lost_steps": "counter",
        "finetune_recovery_duration_seconds": "histogram",
        "finetune_checkpoint_size_bytes": "gauge",
        "finetune_restart_streak": "gauge",
        "finetune_emergency_saves_late": "counter",
    }
    for name, kind in expected.items():
        assert name in fams and fams[name].type == kind, name  # type: ignore[attr-defined]
    for family in fams.values():
        for s in family.samples:  # type: ignore[attr-defined]
            assert set(s.labels) <= {"namespace", "finetunejob", "cause", "phase", "le"}, s
            assert "job" not in s.labels
    assert SAVE_BUCKETS[0] <= 0.01 and SAVE_BUCKETS[-1] >= 600


def test_values_follow_status() -> None:
    m = OperatorMetrics()
    m.observe_job("ns", "a", status(10, 8, restarts={"preemption": 2, "hostOOM": 1}, lostSteps=5))
    assert sample(m, "finetune_training_step", finetunejob="a") == 10
    assert sample(m, "finetune_checkpoints", finetunejob="a") == 2
    assert sample(m, "finetune_checkpoint_size_bytes", finetunejob="a") == 1008
    assert sample(m, "finetune_restarts_total", finetunejob="a", cause="preemption") == 2
    assert sample(m, "finetune_restarts_total", finetunejob="a", cause="cudaOOM") == 0
    assert sample(m, "finetune_lost_steps_total", finetunejob="a") == 5
    assert sample(m, "finetune_jobs", namespace="ns", phase="Running") == 1
    assert sample(m, "finetune_jobs", namespace="ns", phase="Failed") == 0


def test_late_emergency_saves_follow_status() -> None:
    m = OperatorMetrics()
    m.observe_job("ns", "a", status(10, 8))
    assert sample(m, "finetune_emergency_saves_late_total", finetunejob="a") == 0
    m.observe_job("ns", "a", status(10, 8, lateEmergencySaves=2))
    assert sample(m, "finetune_emergency_saves_late_total", finetunejob="a") == 2


def test_restart_streak_follows_status_while_the_job_is_not_finished() -> None:
    m = OperatorMetrics()
    m.observe_job("ns", "a", status(10, 8, restarts={"infrastructure": 2}))
    assert sample(m, "finetune_restart_streak", finetunejob="a") == 0
    assert sample(m, "finetune_restarts_total", finetunejob="a", cause="infrastructure") == 2
    storm = {"reason": "UnexpectedAdmissionError", "count": 4}
    m.observe_job("ns", "a", status(10, 8, phase="Restarting", streak=storm))
    assert sample(m, "finetune_restart_streak", finetunejob="a") == 4
    m.observe_job("ns", "a", status(12, 8, phase="Running"))  # the trainer stepped: streak cleared
    assert sample(m, "finetune_restart_streak", finetunejob="a") == 0
    # a finished job's last streak is no storm (FineTuneJobFailed covers it)
    m.observe_job("ns", "a", status(12, 8, phase="Failed", streak=storm))
    assert sample(m, "finetune_restart_streak", finetunejob="a") is None


def test_each_new_save_is_observed_once() -> None:
    m = OperatorMetrics()
    m.observe_job("ns", "a", status(4, 4, 0.2))  # first sight (e.g. after an operator restart): baseline only
    assert sample(m, "finetune_checkpoint_save_duration_seconds_count", finetunejob="a") is None
    m.observe_job("ns", "a", status(5, 4, 0.2))  # same checkpoint again (a step report): not a new save
    m.observe_job("ns", "a", status(8, 8, 0.3))
    m.observe_job("ns", "a", status(8, 8, 0.3))  # duplicate event
    assert sample(m, "finetune_checkpoint_save_duration_seconds_count", finetunejob="a") == 1
    assert sample(m, "finetune_checkpoint_save_duration_seconds_sum", finetunejob="a") == 0.3
    assert sample(m, "finetune_checkpoints_saved_total", finetunejob="a") == 1


def test_restart_of_operator_does_not_double_count() -> None:
    before = OperatorMetrics()
    before.observe_job("ns", "a", status(8, 8, restarts={"preemption": 3}))
    after = OperatorMetrics()  # a new process sees the same status
    after.observe_job("ns", "a", status(8, 8, restarts={"preemption": 3}))
    assert sample(after, "finetune_restarts_total", cause="preemption") == 3
    assert sample(after, "finetune_checkpoints_saved_total", finetunejob="a") is None


def test_forget_removes_every_series() -> None:
    m = OperatorMetrics()
    m.observe_job("ns", "a", status(4, 4))
    m.observe_job("ns", "a", status(8, 8))
    m.observe_recovery("ns", "a", 2.0)
    m.observe_job("ns", "b", status(1, None))
    m.forget_job("ns", "a")
    text = generate_latest(m.registry).decode()
    assert 'finetunejob="a"' not in text and 'finetunejob="b"' in text
    m.forget_job("ns", "never-seen")  # harmless

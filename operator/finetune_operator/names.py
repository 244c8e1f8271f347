"""The names the operator's modules share: labels, annotations, finalizers, pod naming, the time format.

builders.py writes them onto the objects it makes, views.py and decisions.py read them back, handlers.py,
executor.py and finalizers.py select and release by them: one place, so writer and reader cannot drift.
"""

from __future__ import annotations

from datetime import UTC, datetime

TRAINER_CONTAINER = "trainer"
LABEL_JOB = "finetune.dev/job"
LABEL_ATTEMPT = "finetune.dev/attempt"
#: Our finalizer on trainer pods: the pod object (and its exit code, conditions) stays until the operator
#: has recorded how it ended, even when it is deleted or the operator is down at that moment.
POD_FINALIZER = "finetune.dev/attempt-tracking"
#: kopf's finalizer on each FineTuneJob (it stops the job's daemon before the job goes).
KOPF_FINALIZER = "finetune.dev/operator"
#: On the running pod: when its job last committed a checkpoint (a scheduler can prefer victims that
#: lose the least work).
ANNOTATION_LAST_CHECKPOINT = "finetune.dev/last-checkpoint-time"
ANNOTATION_LAST_CHECKPOINT_STEP = "finetune.dev/last-checkpoint-step"


def pod_name(job: str, attempt: int) -> str:
    return f"{job}-{attempt}"


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with milliseconds (what the status carries)."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

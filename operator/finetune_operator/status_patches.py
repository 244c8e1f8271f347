"""Status serialization: the operator's writes to `status` as merge-patch dicts, built from its model
(`finetune_api.status.OperatorStatus.patch`: only the operator's own fields, camelCase wire names).

`phase_patch` (phase, reason, message, conditions), `decision_patch` (one decision recorded: counters,
adaptations, the pending restart, the streak), `emergency_save_status` (status.lastEmergencySave) and
`conditions_for` (lastTransitionTime kept where a condition did not change). executor.py sends them
conditional on the resourceVersion the pass read.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from finetune_api.contract import EXIT_KILLED
from finetune_api.models import FineTuneJobStatus, Phase
from finetune_api.status import (
    Condition,
    EmergencySave,
    OperatorStatus,
    PendingDecision,
    RestartCounts,
    RestartStreak,
)

from finetune_operator.endings import Outcome
from finetune_operator.names import format_time
from finetune_operator.policy import Plan
from finetune_operator.views import PodView

_CONDITION_TYPES = ("Running", "Complete", "Failed", "Suspended")


def conditions_for(
    phase: Phase, reason: str, message: str, now: datetime, existing: list[Condition]
) -> list[dict[str, Any]]:
    """The job's conditions for `phase` (wire form), keeping lastTransitionTime where a status did not
    change."""
    wanted = {
        "Queued": "True" if phase == "Queued" else "False",
        "Running": "True" if phase == "Running" else "False",
        "Complete": "True" if phase == "Succeeded" else "False",
        "Failed": "True" if phase == "Failed" else "False",
        "Suspended": "True" if phase == "Suspended" else "False",
    }
    old = {c.type: c for c in existing}
    out = []
    # Queued (Kueue, issue 15) only on jobs that have been queued: the others keep their four conditions.
    kinds = ("Queued", *_CONDITION_TYPES) if phase == "Queued" or "Queued" in old else _CONDITION_TYPES
    for kind in kinds:
        status = wanted[kind]
        previous = old.get(kind)
        changed = previous is None or previous.status != status
        since = format_time(now) if changed or not previous else previous.last_transition_time
        why: str | None
        detail: str | None
        if status == "True" or changed:
            why, detail = reason, message[:1024]
        else:
            assert previous is not None  # unchanged: it existed
            why, detail = previous.reason, previous.message
        condition = Condition(
            type=kind, status=status, reason=why, message=detail, last_transition_time=since
        )
        out.append(condition.model_dump(mode="json", by_alias=True))
    return out


def phase_patch(
    status: FineTuneJobStatus, phase: Phase, reason: str, message: str, now: datetime
) -> dict[str, Any]:
    patch = OperatorStatus.patch(
        phase=phase,
        reason=reason,
        message=message[:1024],
        conditions=conditions_for(phase, reason, message, now, status.conditions),
    )
    if phase in ("Succeeded", "Failed"):
        patch.update(OperatorStatus.patch(completion_time=format_time(now), next_attempt_time=None))
    return patch


def decision_patch(
    status: FineTuneJobStatus, outcome: Outcome, plan: Plan, pod_name: str | None, now: datetime
) -> dict[str, Any]:
    """The one status patch that records a decision: counters, budgets, adaptations, the pending step."""
    phase: Phase = {"restart": "Restarting", "fail": "Failed", "succeed": "Succeeded", "stop": "Suspended"}[
        plan.action
    ]  # type: ignore[assignment]
    fields: dict[str, Any] = {
        "last_pod_end_time": format_time(outcome.finished_at or now),
        "last_end_step": status.step,
        # nothing trains until the next attempt reports: no estimate (the last measured rate stays)
        "estimated_remaining_seconds": None,
        "remaining": None,
    }
    if plan.lost_steps:
        fields["lost_steps"] = status.lost_steps + plan.lost_steps
    if plan.cause is not None:
        counts = status.restarts.model_dump(by_alias=True)
        counts[plan.cause] += 1  # the causes are the counters' wire names
        fields["restarts"] = RestartCounts.model_validate(counts)
        fields["restarts_total"] = sum(counts.values())
    if plan.effective is not None:
        fields["effective"] = plan.effective
    if plan.action in ("restart", "fail"):
        fields["streak"] = RestartStreak(reason=outcome.reason, count=plan.streak)
    if plan.action == "restart":
        not_before = now + timedelta(seconds=plan.delay_seconds)
        fields["pending"] = PendingDecision(
            action="restart",
            cause=plan.cause,
            reason=plan.reason,
            message=plan.message[:1024],
            pod_name=pod_name or "",
            not_before=format_time(not_before),
            avoid_node=plan.avoid_node,
        )
        fields["next_attempt_time"] = format_time(not_before)
    else:
        fields["pending"] = None
    if plan.action == "succeed" and outcome.step is not None:
        fields["step"] = max(outcome.step, status.step or 0)
    return phase_patch(status, phase, plan.reason, plan.message, now) | OperatorStatus.patch(**fields)


def emergency_save_status(pod: PodView | None, outcome: Outcome, now: datetime) -> EmergencySave | None:
    """status.lastEmergencySave for a pod stopped by SIGTERM after training began; None for other ends.

    In time: the trainer committed its emergency checkpoint and says so (`save_in_time`). Late: its watchdog
    gave up at the save deadline (exit 75, `save_in_time` false), or the kubelet killed it first (exit 137
    during a disruption or deletion)."""
    term = pod.terminated if pod is not None else None
    if term is None or outcome.end != "Preempted":
        return None
    msg = term.termination
    ended = format_time(outcome.finished_at or now)
    if msg is None or msg.reason != "Preempted" or msg.save_in_time is None:
        if term.exit_code == EXIT_KILLED and pod is not None and (pod.disruption or pod.deleting):
            return EmergencySave(step=None, seconds=None, deadline_seconds=None, in_time=False, time=ended)
        return None  # stopped before training began, or a trainer that does not report it
    # The trainer's own word, even when the kubelet's SIGKILL came after it wrote it (exit 137).
    return EmergencySave(
        step=msg.checkpoint_step if msg.save_in_time else None,
        seconds=msg.save_seconds if msg.save_in_time else None,
        deadline_seconds=msg.save_deadline_seconds,
        in_time=msg.save_in_time,
        time=ended,
    )

"""The apiserver refused to create one of the next attempt's objects: will it ever work without a change
to the job? `judge_refusal` says fail / wait / retry; `refused_step` is what the job then shows.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Literal

from finetune_api.status import OperatorStatus

from finetune_operator.actions import Event, PatchStatus, Step, World
from finetune_operator.status_patches import phase_patch

#: How often a job waiting for something that may appear later (a PriorityClass, quota) tries again.
REFUSAL_RECHECK_SECONDS = 15.0


@dataclass(frozen=True)
class Refusal:
    """The apiserver refused to create one of the attempt's objects (read from its Status answer)."""

    kind: str  # Pod, ConfigMap, PersistentVolumeClaim, ...
    name: str
    code: int  # HTTP status
    reason: str  # Status.reason: Invalid, Forbidden, BadRequest, RequestEntityTooLarge, ...
    message: str


def refusal_from_response(kind: str, name: str, code: int, body: str | bytes | None) -> Refusal:
    """Read the apiserver's Status body (JSON) into a Refusal; a body that is not JSON is the message."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else (body or "")
    reason, message = "", text.strip()
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        status = json.loads(text)
        reason = str(status.get("reason") or "")
        message = str(status.get("message") or message)
    return Refusal(kind=kind, name=name, code=code, reason=reason, message=message)


RefusalVerdict = Literal["fail", "wait", "retry"]


def judge_refusal(refusal: Refusal) -> tuple[RefusalVerdict, str]:
    """Will creating this object ever work without a change to the job? → (verdict, status reason).

    - wait: something outside the job may still change: a PriorityClass created later, quota freed by
      other workloads or raised, RBAC granted to the operator. The job stays visible as waiting and the
      operator tries again every REFUSAL_RECHECK_SECONDS.
    - fail: the object itself is refused (422 Invalid, 400, 413, an admission policy or webhook saying no):
      retrying the same spec cannot help, so the job fails with the apiserver's words.
    - retry: the apiserver is unavailable or throttling (429, 5xx, timeouts): the loop's own backoff.
    """
    text = refusal.message.lower()
    if refusal.reason in ("FlavorConflict", "PriorityClassNotFound"):  # Kueue's objects, fixable outside
        return "wait", refusal.reason
    if refusal.code == 403:
        if "no priorityclass with name" in text:
            return "wait", "PriorityClassNotFound"
        if "exceeded quota" in text or "for quota" in text:  # "status unknown for quota": just created
            return "wait", "QuotaExceeded"
        if "cannot create resource" in text or "cannot get resource" in text:
            # RBAC: the operator's own permissions (an older chart without a new rule), fixable by an admin
            return "wait", "OperatorForbidden"
        if "because it is being terminated" in text:
            # The namespace is going away and the job with it: not the job's failure. Waiting keeps the
            # loop alive, so it sees the job's deletion and releases its finalizers promptly.
            return "wait", "NamespaceTerminating"
        return "fail", "CreateRefused"
    if refusal.code in (400, 413, 422):
        return "fail", "CreateRefused"
    return "retry", ""


def refused_step(world: World, refusal: Refusal) -> Step:
    """What the job shows after the apiserver refused to create its next attempt's `refusal.kind`.

    Nothing was created for the attempt, so the attempt counter and pod name stay as they were and the
    next pass tries the same creation again (after REFUSAL_RECHECK_SECONDS for `wait`).
    """
    step = Step()
    verdict, reason = judge_refusal(refusal)
    if verdict == "retry":
        return step
    status = world.status
    what = f"the apiserver refused to create {refusal.kind} {refusal.name}: {refusal.message}"
    if verdict == "fail":
        patch = phase_patch(status, "Failed", reason, what, world.now)
        patch.update(OperatorStatus.patch(pending=None))
        step.actions.append(PatchStatus(patch))
        step.actions.append(Event("Warning", reason, f"job failed: {what}"[:1024]))
        return step
    text = f"waiting: {what} (trying again every {REFUSAL_RECHECK_SECONDS:g} s)"[:1024]
    step.requeue(REFUSAL_RECHECK_SECONDS)
    if status.reason == reason and status.message == text:
        return step  # already shown (and its Event posted): do not repeat it every recheck
    if status.phase is None:  # a new job: Queued when it is Kueue's Workload that was refused
        new_phase: Literal["Queued", "Pending"] = "Queued" if refusal.kind == "Workload" else "Pending"
        step.actions.append(PatchStatus(phase_patch(status, new_phase, reason, text, world.now)))
    else:  # Restarting / Suspended (resuming): keep the phase and its pending decision, say why
        step.actions.append(PatchStatus(OperatorStatus.patch(reason=reason, message=text)))
    step.actions.append(Event("Warning", reason, text))
    return step

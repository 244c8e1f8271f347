"""The restart policy: `plan_next(spec, status, outcome)` → `Plan` (restart now / with more memory / with
half the micro-batch / after a backoff, fail with a reason, succeed, stop).

Budgets (restartPolicy.max*), backoffs (errors, infrastructure, restart storms on a troubled node) and the
OOM adaptations (memory times oomMemoryFactor up to the cap, halved per-device batch at an equal effective
batch) live here (design.md §3, right half of the table). Pure: the counters come from status.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

from finetune_api.effective import resolve_effective_spec
from finetune_api.models import EffectiveTraining, FineTuneJobSpec, FineTuneJobStatus, RestartCause
from finetune_api.quantity import format_bytes, parse_quantity

from finetune_operator.endings import Outcome

#: Ends that point at the node and can repeat at once (admission failures, kubelet evictions): from this many
#: in a row without training progress on, the next pod waits a short doubling backoff.
STORM_AFTER = 3
Action_ = Literal["restart", "fail", "succeed", "stop"]


@dataclass(frozen=True)
class Plan:
    action: Action_
    reason: str
    message: str
    cause: RestartCause | None = None
    delay_seconds: float = 0.0
    effective: EffectiveTraining | None = None  # new adaptations for status.effective (None = unchanged)
    change: str | None = None  # human: "memory 512Mi → 768Mi"
    lost_steps: int = 0
    streak: int = 1  # ends in a row for this reason without training progress (this one included)
    avoid_node: str | None = None  # the next pod prefers other nodes than this one


def memory_cap(spec: FineTuneJobSpec) -> int | None:
    res = spec.resources
    if res.max_memory:
        return int(parse_quantity(res.max_memory))
    if res.memory:
        return int(parse_quantity(res.memory) * 2 * _dec(spec.restart_policy.oom_memory_factor))
    return None


def _dec(value: float) -> Any:
    from decimal import Decimal

    return Decimal(str(value))


def halve_batch(batch: int) -> int:
    """The largest divisor of `batch` that is at most half of it (so the effective batch stays exact)."""
    for candidate in range(batch // 2, 0, -1):
        if batch % candidate == 0:
            return candidate
    return 1


def lost_steps(status: FineTuneJobStatus, outcome: Outcome) -> int:
    """Steps trained in the ended attempt beyond its newest committed checkpoint (they will be redone)."""
    reported = status.step if status.step is not None and status.step != status.last_end_step else None
    candidates = [s for s in (reported, outcome.step) if s is not None]
    if not candidates:
        return 0
    last = max(candidates)
    committed = outcome.checkpoint_step
    if committed is None:
        committed = status.last_checkpoint_step
        if committed is None and status.last_checkpoint is not None:
            committed = status.last_checkpoint.step
    return max(0, last - (committed or 0))


def streak_after(status: FineTuneJobStatus, outcome: Outcome) -> int:
    """Ends in a row for `outcome.reason` (this one included) since the trainer last made progress."""
    previous = status.streak
    return previous.count + 1 if previous is not None and previous.reason == outcome.reason else 1


def storm_delay(policy: Any, streak: int) -> float:
    """The doubling backoff of a node-trouble end repeated `streak` times in a row (0 below STORM_AFTER)."""
    if streak < STORM_AFTER:
        return 0.0
    return float(min(policy.max_backoff_seconds, policy.backoff_seconds * 2 ** (streak - STORM_AFTER)))


def plan_next(spec: FineTuneJobSpec, status: FineTuneJobStatus, outcome: Outcome) -> Plan:
    """What to do after `outcome`, given the budgets and adaptations already recorded in `status`."""
    plan = _plan(spec, status, outcome)
    streak = streak_after(status, outcome)
    return replace(plan, streak=streak) if plan.action in ("restart", "fail") else plan


def _plan(spec: FineTuneJobSpec, status: FineTuneJobStatus, outcome: Outcome) -> Plan:
    policy = spec.restart_policy
    restarts = status.restarts
    adaptations = status.effective
    lost = 0 if outcome.end == "Completed" else lost_steps(status, outcome)
    streak = streak_after(status, outcome)

    if outcome.end == "Completed":
        return Plan("succeed", "Completed", outcome.message)
    if spec.suspend:
        return Plan("stop", "Suspended", f"suspended (spec.suspend): {outcome.message}", lost_steps=lost)
    if outcome.end in ("ConfigError", "Unschedulable", "NoIntactCheckpoint", "Superseded"):
        return Plan("fail", outcome.reason, outcome.message, lost_steps=lost)
    if outcome.end == "VolumeFull":
        return Plan("fail", "VolumeFull", f"{outcome.message}; {volume_full_advice(spec)}", lost_steps=lost)

    if outcome.end == "Preempted":
        if restarts.preemption >= policy.max_preemptions:
            return Plan(
                "fail",
                "PreemptionBudgetExhausted",
                f"{outcome.message}; restartPolicy.maxPreemptions={policy.max_preemptions} reached",
                lost_steps=lost,
            )
        if not outcome.node_trouble:  # drain, taint, priority preemption, spot reclaim: never wait
            return Plan(
                "restart",
                outcome.reason,
                f"{outcome.message}; restarting now",
                cause="preemption",
                lost_steps=lost,
            )
        delay = storm_delay(policy, streak)
        when = f"restarting in {delay:g} s ({streak} in a row)" if delay else "restarting now"
        return Plan(
            "restart",
            outcome.reason,
            f"{outcome.message}; {when}",
            cause="preemption",
            delay_seconds=delay,
            lost_steps=lost,
            avoid_node=outcome.node,
        )

    if outcome.end == "StartFailure":
        if restarts.infrastructure >= policy.max_infrastructure_restarts:
            return Plan(
                "fail",
                "InfrastructureBudgetExhausted",
                f"{outcome.message}; restartPolicy.maxInfrastructureRestarts="
                f"{policy.max_infrastructure_restarts} reached",
                lost_steps=lost,
            )
        delay = min(float(policy.max_backoff_seconds), policy.backoff_seconds * 2.0 ** (streak - 1))
        avoid = f", preferring another node than {outcome.node}" if outcome.node else ""
        return Plan(
            "restart",
            outcome.reason,
            f"{outcome.message}; a new pod in {delay:g} s{avoid}",
            cause="infrastructure",
            delay_seconds=delay,
            lost_steps=lost,
            avoid_node=outcome.node,
        )

    if outcome.end in ("HostOOM", "CudaOOM"):
        used = restarts.host_oom + restarts.cuda_oom
        if used >= policy.max_oom_restarts:
            return Plan(
                "fail",
                "OOMBudgetExhausted",
                f"{outcome.message}; restartPolicy.maxOomRestarts={policy.max_oom_restarts} reached",
                lost_steps=lost,
            )
        if outcome.end == "HostOOM":
            return _plan_host_oom(spec, adaptations, outcome, lost)
        return _plan_cuda_oom(spec, adaptations, outcome, lost)

    # Error
    if restarts.error >= policy.max_failures:
        return Plan(
            "fail",
            "FailureBudgetExhausted",
            f"{outcome.message}; restartPolicy.maxFailures={policy.max_failures} reached",
            lost_steps=lost,
        )
    delay = min(float(policy.max_backoff_seconds), policy.backoff_seconds * (2.0**restarts.error))
    return Plan(
        "restart",
        outcome.reason,
        f"{outcome.message}; retrying in {delay:g} s",
        cause="error",
        delay_seconds=delay,
        lost_steps=lost,
    )


def volume_full_advice(spec: FineTuneJobSpec) -> str:
    """What the user can change when the checkpoint volume is full (retrying alone fails the same way)."""
    ckpt, limit = spec.checkpoint, spec.training.save_total_limit
    keep = "lower spec.training.save_total_limit" + (f" (now {limit})" if limit else " (now unlimited)")
    if ckpt.existing_claim_name:
        grow = f"grow the PersistentVolumeClaim {ckpt.existing_claim_name} (checkpoint.existingClaimName)"
    else:
        grow = f"raise spec.checkpoint.volumeSize (now {ckpt.volume_size})"
    return f"{grow} or {keep}; the committed checkpoints on the volume are intact"


def _plan_host_oom(
    spec: FineTuneJobSpec, adaptations: EffectiveTraining, outcome: Outcome, lost: int
) -> Plan:
    current_text = resolve_effective_spec(spec, adaptations).resources.memory
    if current_text is None:
        return Plan(
            "restart",
            outcome.reason,
            f"{outcome.message}; no memory limit is set (resources.memory), restarting unchanged",
            cause="hostOOM",
            lost_steps=lost,
        )
    current = int(parse_quantity(current_text))
    cap = memory_cap(spec)
    assert cap is not None
    if current >= cap:
        return Plan(
            "fail",
            "OOMAtMemoryCap",
            f"{outcome.message} at {current_text}, the memory cap (resources.maxMemory): "
            "raise resources.maxMemory or lower training.per_device_train_batch_size",
            lost_steps=lost,
        )
    factor = _dec(spec.restart_policy.oom_memory_factor)
    raised = min(cap, math.ceil(current * factor))
    new_text = format_bytes(raised)
    if parse_quantity(new_text) > cap:  # rounding up to whole Mi may pass a non-Mi cap
        new_text = format_bytes(cap)
    change = f"memory {current_text} → {new_text}"
    return Plan(
        "restart",
        outcome.reason,
        f"{outcome.message}; restarting with {change}",
        cause="hostOOM",
        effective=adaptations.model_copy(update={"memory": new_text}),
        change=change,
        lost_steps=lost,
    )


def _plan_cuda_oom(
    spec: FineTuneJobSpec, adaptations: EffectiveTraining, outcome: Outcome, lost: int
) -> Plan:
    # What the ended attempt ran with: its own report, else the effective spec it was started from.
    training = resolve_effective_spec(spec, adaptations).training
    batch = outcome.batch or training.per_device_train_batch_size
    accumulation = outcome.accumulation or training.gradient_accumulation_steps
    if batch <= 1:
        return Plan(
            "fail",
            "CudaOOMAtBatchOne",
            f"{outcome.message}: the per-device batch is already 1 and cannot be halved; use a GPU with more "
            "memory, shorter training.max_length, or gradient_checkpointing",
            lost_steps=lost,
        )
    new_batch = halve_batch(batch)
    new_accumulation = accumulation * batch // new_batch
    change = (
        f"per-device batch {batch} → {new_batch}, gradient accumulation {accumulation} → {new_accumulation} "
        f"(effective batch {batch * accumulation} unchanged)"
    )
    return Plan(
        "restart",
        outcome.reason,
        f"{outcome.message}; restarting with {change}",
        cause="cudaOOM",
        effective=adaptations.model_copy(
            update={"per_device_train_batch_size": new_batch, "gradient_accumulation_steps": new_accumulation}
        ),
        change=change,
        lost_steps=lost,
    )

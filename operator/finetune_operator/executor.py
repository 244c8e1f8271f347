"""Carry out a `Step`'s actions against the API: create the attempt's objects and pod, delete, release,
annotate, post Events, and write status, every status write conditional on the resourceVersion the pass read
(`Fence`; a 409 is `StaleRead`: the pass stops and the next one decides again on a fresh read).

Over 400 lines: one branch per action type, and the attempt's objects (claim, RBAC, ConfigMap, pod,
Kueue Workload) created in the order a replacement relies on.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from finetune_api.effective import EffectiveJob, effective_job
from finetune_api.models import GROUP, KIND, PLURAL, VERSION, FineTuneJob
from kubernetes.client.rest import ApiException

from finetune_operator import builders, decisions, kueue, refusals
from finetune_operator.actions import (
    Action,
    AdoptPod,
    AnnotatePod,
    CreatePod,
    CreateWorkload,
    Decided,
    DeletePod,
    DeleteWorkload,
    Event,
    PatchStatus,
    PatchWorkloadStatus,
    Recovered,
    ReleasePod,
    World,
)
from finetune_operator.names import LABEL_JOB, POD_FINALIZER, format_time
from finetune_operator.runtime import Runtime

log = logging.getLogger("finetune_operator")
_trace = logging.getLogger("finetune_operator.trace")


class StaleRead(Exception):
    """A conditional write got 409: the job changed since this pass read it. Re-read and decide again."""


@dataclass
class Written:
    """What a pass's writes returned: the job after its last status write, and each trainer pod it wrote
    (None: gone with that write). handlers.run_once may decide once more on the pass's read plus these."""

    job: dict[str, Any] | None = None
    pods: dict[str, dict[str, Any] | None] = field(default_factory=dict)


@dataclass
class Fence:
    """The job's resourceVersion this pass decided on. Every status write is conditional on it."""

    custom: Any
    namespace: str
    name: str
    resource_version: str
    vouched: bool = False  # a conditional write of this pass succeeded: the read was current then
    #: Given the job as each write returned it (the watch cache takes it: the pass's next look is cached).
    on_written: Callable[[dict[str, Any]], None] | None = None
    written: Written = field(default_factory=Written)

    def patch_status(self, patch: dict[str, Any]) -> None:
        body: dict[str, Any] = {"status": patch}
        if self.resource_version:
            body["metadata"] = {"resourceVersion": self.resource_version}
        try:
            result = self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, self.namespace, PLURAL, self.name, body
            )
        except ApiException as error:
            if error.status == 409:
                raise StaleRead(
                    f"job {self.namespace}/{self.name} changed since resourceVersion {self.resource_version}"
                ) from None
            raise
        if isinstance(result, dict) and result.get("metadata", {}).get("resourceVersion"):
            self.resource_version = result["metadata"]["resourceVersion"]
            self.written.job = result
            if self.on_written is not None:
                self.on_written(result)
        self.vouched = True

    def check(self) -> None:
        """Before touching pods: an empty conditional patch fails with 409 if the read is stale."""
        if not self.vouched:
            self.patch_status({})


_POD_ACTIONS = (CreatePod, DeletePod, ReleasePod, AnnotatePod)


class CreateRefusedError(Exception):
    """The apiserver refused one of the attempt's objects with a 4xx that is not a conflict."""

    def __init__(self, refusal: refusals.Refusal, error: Exception):
        super().__init__(f"{refusal.kind} {refusal.name}: {refusal.code} {refusal.message}")
        self.refusal, self.error = refusal, error


def execute(
    runtime: Runtime,
    job: FineTuneJob,
    uid: str,
    world: World,
    actions: list[Action],
    resource_version: str = "",
    written: Written | None = None,
    vouched: bool = False,
) -> float | None:
    """Carry out `actions`; a number means: stop this pass and look again after that many seconds.
    `written`: filled with what the writes returned. `vouched`: `resource_version` is what this pass's own
    last conditional write returned (pod actions need no check before them)."""
    core, custom, _ = runtime.apis()
    namespace, name = job.metadata.namespace or "default", job.metadata.name
    key = (namespace, name)
    fence = Fence(
        custom,
        namespace,
        name,
        resource_version,
        vouched=vouched,
        on_written=lambda body: runtime.observe(runtime.cache.observe_job, key, body),
        written=written if written is not None else Written(),
    )
    tracing = _trace.isEnabledFor(logging.DEBUG)
    for action in actions:
        started = time.monotonic()
        try:
            stop, wait = _carry_out(runtime, job, uid, world, action, fence, core, custom)
        finally:
            if tracing:
                _trace.debug(
                    "%s %.3f s",
                    type(action).__name__,
                    time.monotonic() - started,
                    extra={"finetunejob": f"{namespace}/{name}"},
                )
        if stop:
            return wait
    return None


def _carry_out(
    runtime: Runtime,
    job: FineTuneJob,
    uid: str,
    world: World,
    action: Action,
    fence: Fence,
    core: Any,
    custom: Any,
) -> tuple[bool, float | None]:
    """One action; (True, seconds): stop the pass here and look again after that (None: when woken)."""
    namespace, name = job.metadata.namespace or "default", job.metadata.name
    if isinstance(action, _POD_ACTIONS):
        fence.check()
    if isinstance(action, PatchStatus):
        fence.patch_status(action.patch)
    elif isinstance(action, CreatePod):
        try:
            created = _create_attempt(runtime, job, uid, world, action, fence.written)
        except CreateRefusedError as refused:
            return True, _show_refusal(runtime, job, uid, world, refused, fence, action.attempt)
        if created:  # before the status write: should that lose a race, the next pass adopts silently
            _event(runtime, job, uid, "Normal", action.event_reason, action.event_message)
        fence.patch_status(action.status_patch)
        log.info(
            "created pod",
            extra={
                "finetunejob": f"{namespace}/{name}",
                "attempt": action.attempt,
                "run_directory": action.run_directory,
            },
        )
    elif isinstance(action, AdoptPod):
        fence.patch_status(action.status_patch)
        log.info("adopted pod %s", action.name, extra={"finetunejob": f"{namespace}/{name}"})
    elif isinstance(action, DeletePod):
        _observe_pod(runtime, namespace, _delete_pod(core, namespace, action), fence.written)
    elif isinstance(action, ReleasePod):
        read = next((p for p in world.pods if p.name == action.name), None)
        released = release_pod(core, namespace, action.name, read.finalizers if read else None)
        _observe_pod(runtime, namespace, released, fence.written)
    elif isinstance(action, Event):
        _event(runtime, job, uid, action.type, action.reason, action.message)
    elif isinstance(action, AnnotatePod):
        annotate_pod(runtime, namespace, action, fence.written)
    elif isinstance(action, Decided):
        log.info(
            "decision: %s (%s) → %s",
            action.outcome.reason,
            action.outcome.end,
            action.plan.action,
            extra={
                "finetunejob": f"{namespace}/{name}",
                "cause": action.plan.cause,
                "change": action.plan.change,
                "lost_steps": action.plan.lost_steps,
                "delay_seconds": action.plan.delay_seconds,
            },
        )
    elif isinstance(action, CreateWorkload | DeleteWorkload | PatchWorkloadStatus):
        try:
            _workload_action(runtime, job, uid, world, action)
        except CreateRefusedError as refused:
            return True, _show_refusal(runtime, job, uid, world, refused, fence, world.status.attempt + 1)
    elif isinstance(action, Recovered):
        runtime.metrics.observe_recovery(namespace, name, action.seconds)
        log.info("recovered after %.1f s", action.seconds, extra={"finetunejob": f"{namespace}/{name}"})
    return False, None


def _show_refusal(
    runtime: Runtime,
    job: FineTuneJob,
    uid: str,
    world: World,
    refused: CreateRefusedError,
    fence: Fence,
    attempt: int,
) -> float | None:
    """The attempt's object was refused: show why on the job (refusals.refused_step) and end the pass;
    the seconds until the next look. A transient refusal is raised for the loop's backoff."""
    step = refusals.refused_step(world, refused.refusal)
    if not step.actions and step.requeue_seconds is None:
        raise refused.error from None
    log.warning(
        "create refused: %s",
        refused,
        extra={"finetunejob": f"{job.metadata.namespace}/{job.metadata.name}", "attempt": attempt},
    )
    execute(runtime, job, uid, world, step.actions, fence.resource_version)
    return step.requeue_seconds


def _refused(kind: str, body: dict[str, Any], error: ApiException) -> CreateRefusedError | None:
    """A 4xx other than 409 (conflict) and 404/429 (namespace going away, throttling): a refusal."""
    if error.status is None or not 400 <= error.status < 500 or error.status in (404, 409, 429):
        return None
    name = str((body.get("metadata") or {}).get("name", ""))
    return CreateRefusedError(refusals.refusal_from_response(kind, name, error.status, error.body), error)


def _create_or_keep(create: Any, namespace: str, body: dict[str, Any]) -> None:
    try:
        create(namespace, body)
    except ApiException as error:
        if error.status == 409:
            return
        raise _refused(body["kind"], body, error) or error from None


def _create_attempt(
    runtime: Runtime, job: FineTuneJob, uid: str, world: World, action: CreatePod, written: Written
) -> bool:
    """Create the attempt's objects and pod; False when the pod already existed (ours: adopted)."""
    core, _, rbac = runtime.apis()
    namespace = job.metadata.namespace or "default"
    # The spec this attempt runs (OOM adaptations applied): its config and its pod both come from it.
    attempt_job = effective_job(job, world.status.effective)
    pvc = builders.build_pvc(job, uid)
    # The pass read the claim (claim_blocker let this attempt through): there, it is this job's; a
    # replacement pod saves the create that would get a 409.
    if pvc is not None and not (world.claim is not None and world.claim.exists):
        _create_or_keep(core.create_namespaced_persistent_volume_claim, namespace, pvc)
    # A replacement whose ServiceAccount, Role and RoleBinding the watches show (owned by this job) saves
    # three creates that would each get a 409.
    access_seen = action.attempt > 1 and runtime.on_loop(
        runtime.cache.has_trainer_access,
        (namespace, job.metadata.name),
        builders.service_account_name(job),
        uid,
    )
    if not access_seen:
        _create_trainer_access(core, rbac, namespace, job, uid)
    cm = builders.build_config_map(attempt_job, uid)
    try:
        if action.attempt > 1:  # a replacement: the first attempt made it (one request, not a 409 and two)
            try:
                core.replace_namespaced_config_map(cm["metadata"]["name"], namespace, cm)
            except ApiException as error:
                if error.status != 404:
                    raise
                core.create_namespaced_config_map(namespace, cm)
        else:
            try:
                core.create_namespaced_config_map(namespace, cm)
            except ApiException as error:
                if error.status != 409:
                    raise
                core.replace_namespaced_config_map(cm["metadata"]["name"], namespace, cm)
    except ApiException as error:
        raise _refused("ConfigMap", cm, error) or error from None
    pod = _attempt_pod(runtime, attempt_job, uid, world, action.attempt, action.run_directory)
    if world.workload is not None and world.workload.admitted and world.workload.flavors:
        pod = kueue.place_pod(pod, _flavor_placement(runtime, world.workload.flavors))
    try:
        try:
            created = core.create_namespaced_pod(namespace, pod, _preload_content=False)
        except ApiException as error:
            if not (access_seen and error.status == 403):
                raise
            # Refused for a missing ServiceAccount, deleted while the watch was away (the resync has not
            # dropped it yet): make the three again and try once more.
            _create_trainer_access(core, rbac, namespace, job, uid)
            created = core.create_namespaced_pod(namespace, pod, _preload_content=False)
        _observe_pod(runtime, namespace, _returned(created), written)
    except ApiException as error:
        if error.status != 409:
            raise _refused("Pod", pod, error) or error from None
        existing = core.read_namespaced_pod(pod["metadata"]["name"], namespace)
        owners = {o.uid for o in existing.metadata.owner_references or []}
        if uid not in owners:
            raise RuntimeError(f"pod {pod['metadata']['name']} exists and belongs to someone else") from None
        return False  # ours (created by an earlier pass whose status write was lost): adopt it
    return True


def _create_trainer_access(core: Any, rbac: Any, namespace: str, job: FineTuneJob, uid: str) -> None:
    """The trainer's ServiceAccount, and the Role and RoleBinding that let it patch its job's status."""
    _create_or_keep(
        core.create_namespaced_service_account, namespace, builders.build_service_account(job, uid)
    )
    _create_or_keep(rbac.create_namespaced_role, namespace, builders.build_role(job, uid))
    _create_or_keep(rbac.create_namespaced_role_binding, namespace, builders.build_role_binding(job, uid))


def _flavor_placement(runtime: Runtime, names: tuple[str, ...]) -> kueue.FlavorPlacement:
    """The node labels and tolerations of the ResourceFlavors Kueue admitted the job on (read when the
    attempt's pod is made: one GET per flavor, usually one). A flavor deleted since the admission adds
    nothing; one the operator may not read (an older chart's RBAC) or two that contradict each other keep
    the job waiting with the reason in its status."""
    _, custom, _ = runtime.apis()
    flavors = []
    for name in names:
        try:
            flavors.append(
                custom.get_cluster_custom_object(kueue.GROUP, kueue.VERSION, kueue.RESOURCE_FLAVORS, name)
            )
        except ApiException as error:
            if error.status == 404:
                continue
            raise _refused("ResourceFlavor", {"metadata": {"name": name}}, error) or error from None
    try:
        return kueue.flavor_placement(flavors)
    except ValueError as conflict:
        refusal = refusals.Refusal("ResourceFlavor", ",".join(names), 409, "FlavorConflict", str(conflict))
        raise CreateRefusedError(refusal, conflict) from None


def _attempt_pod(
    runtime: Runtime, job: EffectiveJob, uid: str, world: World, attempt: int, run_directory: str
) -> dict[str, Any]:
    """The attempt's pod, from the effective job (also what a Kueue Workload accounts)."""
    ckpt = world.status.last_checkpoint
    pending = world.status.pending
    return builders.build_pod(
        job,
        uid,
        attempt,
        run_directory=run_directory,
        last_checkpoint_time=ckpt.time if ckpt else None,
        last_checkpoint_step=ckpt.step if ckpt else None,
        unreachable_toleration_seconds=runtime.config.unreachable_toleration_seconds,
        cause=(pending.cause or pending.reason) if pending else None,
        avoid_node=pending.avoid_node if pending else None,
    )


def _workload_action(
    runtime: Runtime,
    job: FineTuneJob,
    uid: str,
    world: World,
    action: CreateWorkload | DeleteWorkload | PatchWorkloadStatus,
) -> None:
    """Kueue (issue 15): the job's Workload. 404/409 mean someone (Kueue, an earlier pass) was first."""
    _, custom, _ = runtime.apis()
    namespace = job.metadata.namespace or "default"
    try:
        if isinstance(action, CreateWorkload):
            pod = _attempt_pod(
                runtime,
                effective_job(job, world.status.effective),
                uid,
                world,
                action.attempt,
                decisions.run_directory(uid, world.status),
            )
            priority = None
            if world.priority_class:  # its value goes into the Workload
                priority = _workload_priority(
                    custom, kueue.workload_name(job.metadata.name), world.priority_class
                )
            body = kueue.build_workload(
                job.metadata.name, namespace, uid, world.queue or "", world.priority_class, pod, priority
            )
            try:
                custom.create_namespaced_custom_object(
                    kueue.GROUP, kueue.VERSION, namespace, kueue.PLURAL, body
                )
            except ApiException as error:  # Kueue's webhook says no: its words on the job
                raise _refused("Workload", body, error) or error from None
        elif isinstance(action, DeleteWorkload):
            custom.delete_namespaced_custom_object(
                kueue.GROUP, kueue.VERSION, namespace, kueue.PLURAL, action.name
            )
        else:
            custom.patch_namespaced_custom_object_status(
                kueue.GROUP, kueue.VERSION, namespace, kueue.PLURAL, action.name, action.patch
            )
    except ApiException as error:
        if error.status not in (404, 409):
            raise


def _workload_priority(custom: Any, workload: str, priority_class: str) -> int:
    """The value of the job's WorkloadPriorityClass; one that does not exist (a typo in the label) keeps
    the job waiting, saying so, until it is created or the label fixed."""
    try:
        wpc = custom.get_cluster_custom_object(
            kueue.GROUP, kueue.VERSION, kueue.PRIORITY_CLASSES, priority_class
        )
    except ApiException as error:
        if error.status != 404:
            raise _refused("Workload", {"metadata": {"name": workload}}, error) or error from None
        text = (
            f"its WorkloadPriorityClass {priority_class!r} (label {kueue.LABEL_PRIORITY_CLASS}) does not "
            "exist: create it or fix the label"
        )
        raise CreateRefusedError(
            refusals.Refusal("Workload", workload, 404, "PriorityClassNotFound", text), error
        ) from None
    return int(wpc.get("value") or 0)


def _delete_pod(core: Any, namespace: str, action: DeletePod) -> dict[str, Any] | None:
    """Delete; the pod as the apiserver returned it (None: already gone)."""
    try:
        if action.grace_seconds is None:
            response = core.delete_namespaced_pod(action.name, namespace, _preload_content=False)
        else:
            response = core.delete_namespaced_pod(
                action.name, namespace, grace_period_seconds=action.grace_seconds, _preload_content=False
            )
    except ApiException as error:
        if error.status != 404:
            raise
        return None
    return _returned(response)


def release_pod(
    core: Any, namespace: str, name: str, finalizers: tuple[str, ...] | None = None
) -> dict[str, Any] | None:
    """Remove our finalizer with a JSON patch guarded by a test op (other finalizers are left alone); the
    pod as the patch returned it (None: not patched). `finalizers`: as the pass read them, which saves a GET
    (the test op guards the index; if they changed since, the pod is read and the patch made again)."""
    known = finalizers is not None
    for _ in range(5):
        if not known:
            try:
                finalizers = tuple(core.read_namespaced_pod(name, namespace).metadata.finalizers or ())
            except ApiException as error:
                if error.status == 404:
                    return None
                raise
        known = False
        if POD_FINALIZER not in (finalizers or ()):
            return None
        index = list(finalizers or ()).index(POD_FINALIZER)
        ops = [
            {"op": "test", "path": f"/metadata/finalizers/{index}", "value": POD_FINALIZER},
            {"op": "remove", "path": f"/metadata/finalizers/{index}"},
        ]
        try:
            return _returned(core.patch_namespaced_pod(name, namespace, ops, _preload_content=False))
        except ApiException as error:
            if error.status == 404:
                return None
            if error.status not in (409, 422):
                raise
    return None


def annotate_pod(
    runtime: Runtime, namespace: str, action: AnnotatePod, written: Written | None = None
) -> None:
    """Merge the annotations into the pod (gone: nothing to do); what the patch returned goes to the cache."""
    core, _, _ = runtime.apis()
    try:
        response = core.patch_namespaced_pod(
            action.name, namespace, {"metadata": {"annotations": action.annotations}}, _preload_content=False
        )
    except ApiException as error:
        if error.status != 404:
            raise
        return
    _observe_pod(runtime, namespace, _returned(response), written)


def _returned(response: Any) -> dict[str, Any] | None:
    """The object a write made with `_preload_content=False` returned (None: nothing readable)."""
    data = getattr(response, "data", None)
    if not data:
        return None
    try:
        body = json.loads(data)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _observe_pod(
    runtime: Runtime, namespace: str, pod: dict[str, Any] | None, written: Written | None
) -> None:
    """What a write returned of a trainer pod, into `written` and the watch cache (the pass's next look is
    cached). A pod deleting with no grace and no finalizer left is gone: the apiserver removed it with that
    write."""
    if not pod or pod.get("kind") != "Pod":
        return
    meta = pod.get("metadata") or {}
    job = (meta.get("labels") or {}).get(LABEL_JOB)
    if not job:
        return
    gone = bool(meta.get("deletionTimestamp")) and not meta.get("finalizers")
    gone = gone and meta.get("deletionGracePeriodSeconds") == 0
    if written is not None:
        written.pods[str(meta.get("name"))] = None if gone else pod
    runtime.observe(runtime.cache.observe_pod, (namespace, job), pod, gone)


def _event(runtime: Runtime, job: FineTuneJob, uid: str, type_: str, reason: str, message: str) -> None:
    """Post an Event off the pass (Runtime.post_event): its time is taken now."""
    core, _, _ = runtime.apis()
    instance = runtime.config.instance
    namespace = job.metadata.namespace or "default"
    now = datetime.now(UTC)
    body = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{job.metadata.name}.", "namespace": namespace},
        "involvedObject": {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "name": job.metadata.name,
            "namespace": namespace,
            "uid": uid,
        },
        "type": type_,
        "reason": reason[:128],
        "message": message[:1024],
        "firstTimestamp": format_time(now),
        "lastTimestamp": format_time(now),
        "count": 1,
        "action": "Reconcile",
        "source": {"component": "finetune-operator"},
        "reportingComponent": "finetune.dev/operator",
        "reportingInstance": instance[:128],
    }
    runtime.post_event(_post_event, core, namespace, body)
    log.info("event %s: %s", reason, message, extra={"finetunejob": f"{namespace}/{job.metadata.name}"})


def _post_event(core: Any, namespace: str, body: dict[str, Any]) -> None:
    try:
        core.create_namespaced_event(namespace, body)
    except Exception as error:  # an Event is worth a log line, never a failed reconcile
        log.warning("could not post event %s: %s", body["reason"], getattr(error, "reason", error))

"""Releasing the operator's finalizers when no job loop will: trainer pods of a job that is gone or being
deleted (at once from a pod event, and by a periodic sweep), and, for the chart's uninstall hook, every
trainer pod and FineTuneJob in scope (`--release-finalizers`).
"""

from __future__ import annotations

from fnmatch import fnmatch
from typing import Any

from finetune_api.models import GROUP, PLURAL, VERSION
from kubernetes.client.rest import ApiException

from finetune_operator import views
from finetune_operator.executor import release_pod
from finetune_operator.names import KOPF_FINALIZER, LABEL_JOB, POD_FINALIZER
from finetune_operator.runtime import Runtime, response_json


def release_orphan(runtime: Runtime, pod: dict[str, Any], namespace: str) -> None:
    core, custom, _ = runtime.apis()
    if orphaned(custom, namespace, pod, {}):
        release_pod(core, namespace, pod["metadata"]["name"])


def orphaned(custom: Any, namespace: str, pod: dict[str, Any], jobs: dict[str, Any]) -> bool:
    """Nobody will release this tracked pod: its job is gone, another job's, or being deleted; or the pod
    is deleting and its end is already recorded. `jobs` caches job reads (name → body or None)."""
    meta = pod["metadata"]
    job_name = (meta.get("labels") or {}).get(LABEL_JOB, "")
    if job_name not in jobs:
        try:
            jobs[job_name] = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, job_name)
        except ApiException as error:
            if error.status != 404:
                raise
            jobs[job_name] = None
    job = jobs[job_name]
    owners = {o.get("uid") for o in meta.get("ownerReferences") or []}
    if job is None or job["metadata"]["uid"] not in owners or job["metadata"].get("deletionTimestamp"):
        return True
    if not meta.get("deletionTimestamp"):
        return False  # its job lives: its loop handles the pod
    status = job.get("status") or {}
    attempt = views.pod_view(pod).attempt
    return (
        status.get("phase") in ("Succeeded", "Failed")
        or (status.get("pending") or {}).get("podName") == meta.get("name")
        or (attempt is not None and attempt < int(status.get("attempt") or 0))
    )


def release_job_pods(core: Any, namespace: str, name: str, uid: str | None) -> None:
    """Release every tracked pod of this job (it is being deleted: no end will be recorded)."""
    pods = response_json(
        core.list_namespaced_pod(namespace, label_selector=f"{LABEL_JOB}={name}", _preload_content=False)
    )
    for pod in pods.get("items") or []:
        meta = pod.get("metadata") or {}
        owners = {o.get("uid") for o in meta.get("ownerReferences") or []}
        if POD_FINALIZER in (meta.get("finalizers") or []) and (uid is None or uid in owners):
            release_pod(core, namespace, meta["name"])


def release_if_job_going(runtime: Runtime, namespace: str, name: str) -> None:
    core, custom, _ = runtime.apis()
    try:
        job = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as error:
        if error.status != 404:
            raise
        job = None
    if job is None or job["metadata"].get("deletionTimestamp"):
        release_job_pods(core, namespace, name, job["metadata"]["uid"] if job else None)
    if job is not None and job["metadata"].get("deletionTimestamp"):
        # Our daemon has stopped. In a terminating namespace kopf stops serving the namespace without
        # removing its finalizer, which would keep the job, and so the namespace, forever.
        _drop_kopf_finalizer(custom, job)


def namespaces_in_scope(core: Any, namespaces: list[str]) -> list[str] | None:
    """The namespaces served: exact names, glob patterns matched against the cluster's; None = all."""
    if not namespaces:
        return None
    names = {n for n in namespaces if not any(c in n for c in "*?[")}
    patterns = [n for n in namespaces if n not in names]
    if patterns:
        listed = response_json(core.list_namespace(_preload_content=False)).get("items") or []
        names |= {
            n["metadata"]["name"] for n in listed if any(fnmatch(n["metadata"]["name"], p) for p in patterns)
        }
    return sorted(names)


def _scoped_pods(core: Any, namespaces: list[str]) -> list[dict[str, Any]]:
    """Trainer pods (those with the job label) in the namespaces served."""
    scope = namespaces_in_scope(core, namespaces)
    if scope is None:
        found = response_json(
            core.list_pod_for_all_namespaces(label_selector=LABEL_JOB, _preload_content=False)
        )
        return list(found.get("items") or [])
    items: list[dict[str, Any]] = []
    for namespace in scope:
        found = response_json(
            core.list_namespaced_pod(namespace, label_selector=LABEL_JOB, _preload_content=False)
        )
        items += found.get("items") or []
    return items


def job_looks_after(runtime: Runtime, namespace: str, pod: dict[str, Any]) -> bool:
    """The watch cache shows this pod's job alive, owning it, and the pod not deleting: its loop releases
    it, so the sweep need not read the job (with a thousand running jobs that read was most of the
    operator's requests at rest). Anything else is confirmed with a read (`orphaned`). A job deleted while
    the watch was down stays in the cache until its loop's next read finds it gone (handlers.job_loop)."""
    meta = pod["metadata"]
    if meta.get("deletionTimestamp"):
        return False
    job = runtime.cache.jobs.get((namespace, (meta.get("labels") or {}).get(LABEL_JOB, "")))
    job_meta = (job or {}).get("metadata") or {}
    owners = {o.get("uid") for o in meta.get("ownerReferences") or []}
    return bool(job_meta) and not job_meta.get("deletionTimestamp") and job_meta.get("uid") in owners


def release_orphans(runtime: Runtime, namespaces: list[str]) -> list[str]:
    """Release tracked trainer pods that no job loop will release (see `orphaned`); returns their names."""
    core, custom, _ = runtime.apis()
    released: list[str] = []
    jobs_by_ns: dict[str, dict[str, Any]] = {}
    for pod in _scoped_pods(core, namespaces):
        meta = pod["metadata"]
        if POD_FINALIZER not in (meta.get("finalizers") or []):
            continue
        namespace = meta["namespace"]
        if job_looks_after(runtime, namespace, pod):
            continue
        if orphaned(custom, namespace, pod, jobs_by_ns.setdefault(namespace, {})):
            release_pod(core, namespace, meta["name"])
            released.append(f"{namespace}/{meta['name']}")
    return released


def _drop_kopf_finalizer(custom: Any, job: dict[str, Any]) -> bool:
    """Remove kopf's finalizer from a job whose daemon no longer runs (True if removed)."""
    meta = job["metadata"]
    finalizers = list(meta.get("finalizers") or [])
    if KOPF_FINALIZER not in finalizers:
        return False
    # A merge patch (the client sends custom-object patches as such) replacing the list, conditional on
    # the resourceVersion so that a concurrent change of the finalizers is not overwritten.
    body = {
        "metadata": {
            "finalizers": [f for f in finalizers if f != KOPF_FINALIZER],
            "resourceVersion": meta["resourceVersion"],
        }
    }
    try:
        custom.patch_namespaced_custom_object(GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], body)
    except ApiException as error:
        if error.status not in (404, 409, 422):
            raise
        return False
    return True


def release_all_finalizers(runtime: Runtime, namespaces: list[str]) -> tuple[list[str], list[str]]:
    """Uninstall: with no operator left, release every trainer pod and drop kopf's finalizer from every
    FineTuneJob in scope, so deleting or draining them later does not hang. Returns (pods, jobs)."""
    core, custom, _ = runtime.apis()
    pods = []
    for pod in _scoped_pods(core, namespaces):
        meta = pod["metadata"]
        if POD_FINALIZER in (meta.get("finalizers") or []):
            release_pod(core, meta["namespace"], meta["name"])
            pods.append(f"{meta['namespace']}/{meta['name']}")
    jobs = []
    scope = namespaces_in_scope(core, namespaces)
    if scope is None:
        listed = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
    else:
        listed = [
            job
            for namespace in scope
            for job in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
        ]
    for job in listed:
        if _drop_kopf_finalizer(custom, job):
            jobs.append(f"{job['metadata']['namespace']}/{job['metadata']['name']}")
    return pods, jobs

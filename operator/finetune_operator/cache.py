"""What the operator's watches have told it: each job's latest body, its trainer pods, the nodes, the
claims and the Kueue Workloads it owns, kept in memory by the kopf event handlers (handlers.py), and the
`World` assembled from that without any request.

The cache decides only *whether* a job needs a look: a pass on the cached World that finds nothing to do
costs no request at all (a thousand jobs at rest cost nothing). A pass that would act re-reads the job, its
pods, nodes and claim from the API and decides again on that (handlers.run_once), so every write is still
made on a fresh read, conditional on its resourceVersion (executor.Fence). Why not act on the cache: the job
and its pods come on separate watch streams with no order between them, so the cache may show the status
that names attempt 2 before it shows pod 2; the Fence catches a stale job, not a stale pod list, and a
decision on that mix would count a vanished pod. Docs: docs/operator.md "Reads, wake-ups and the cache".

Only the facts the decisions use are kept: a PodView per trainer pod, a NodeView per node, of each claim
its deletion, owners and access modes (memory stays small with thousands of nodes and claims), and of each
job's ServiceAccount, Role and RoleBinding their names and owners (a replacement pod need not create them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from finetune_api.effective import effective_job
from finetune_api.models import FineTuneJob, FineTuneJobStatus
from finetune_api.trainer_config import InvalidManifest, parse_job

from finetune_operator import builders, kueue, views
from finetune_operator.actions import World

JobKey = tuple[str, str]  # (namespace, name)

#: The per-job objects that give a trainer pod its identity and its right to patch its job's status
#: (builders.build_service_account, build_role, build_role_binding): made once, watched so that a
#: replacement pod can skip creating them (three requests that would each get a 409).
ACCESS_KINDS = ("ServiceAccount", "Role", "RoleBinding")

#: A PersistentVolumeClaim as read (or the facts of one the cache keeps); None: there is none.
Claim = dict[str, Any] | None


@dataclass
class WatchCache:
    jobs: dict[JobKey, dict[str, Any]] = field(default_factory=dict)  # raw body as the watch sent it
    pods: dict[JobKey, dict[str, views.PodView]] = field(default_factory=dict)  # by the job label
    nodes: dict[str, views.NodeView] = field(default_factory=dict)
    claims: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # (namespace, claim name)
    #: Kueue's Workloads the operator owns, by the job label (only where Kueue is installed).
    workloads: dict[JobKey, kueue.WorkloadView] = field(default_factory=dict)
    #: Those ACCESS_KINDS objects that carry a job label, by that label: kind → (name, owner uids).
    access: dict[JobKey, dict[str, tuple[str, tuple[str, ...]]]] = field(default_factory=dict)
    #: Each job's spec parsed once per (uid, generation): parsing is most of a cached look's CPU, and the
    #: spec changes only with the generation.
    parsed: dict[JobKey, tuple[tuple[str, int], FineTuneJob]] = field(default_factory=dict)

    def observe_job(self, key: JobKey, body: dict[str, Any], deleted: bool = False) -> None:
        if deleted:
            self.jobs.pop(key, None)
            self.pods.pop(key, None)
            self.parsed.pop(key, None)
        else:  # managedFields: often half the body, never read
            meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
            self.jobs[key] = {**body, "metadata": meta}

    def observe_pod(self, key: JobKey, pod: dict[str, Any], deleted: bool = False) -> None:
        """`key`: the namespace and the pod's job label."""
        name = str((pod.get("metadata") or {}).get("name", ""))
        if deleted:
            pods = self.pods.get(key)
            if pods is not None:
                pods.pop(name, None)
                if not pods:
                    del self.pods[key]
        else:
            self.pods.setdefault(key, {})[name] = views.pod_view(pod)

    def observe_node(self, name: str, node: dict[str, Any] | None) -> bool:
        """Record a node (None: deleted). True when what the decisions look at changed (ready, since when,
        the out-of-service taint, existence): the jobs with a pod there need a look."""
        before = self.nodes.get(name)
        if node is None:
            self.nodes.pop(name, None)
            return before is not None
        after = views.node_view(name, node)
        self.nodes[name] = after
        return before != after

    def observe_claim(self, namespace: str, claim: dict[str, Any], deleted: bool = False) -> None:
        name = str((claim.get("metadata") or {}).get("name", ""))
        if deleted:
            self.claims.pop((namespace, name), None)
        else:
            self.claims[(namespace, name)] = claim_facts(claim)

    def observe_workload(self, key: JobKey, workload: dict[str, Any], deleted: bool = False) -> None:
        """`key`: the namespace and the Workload's job label."""
        name = str((workload.get("metadata") or {}).get("name", ""))
        if deleted:
            if (view := self.workloads.get(key)) is not None and view.name == name:
                del self.workloads[key]
        else:
            self.workloads[key] = kueue.workload_view(name, workload)

    def observe_access(self, key: JobKey, kind: str, obj: dict[str, Any], deleted: bool = False) -> None:
        """`key`: the namespace and the object's job label; `kind`: one of ACCESS_KINDS."""
        meta = obj.get("metadata") or {}
        name = str(meta.get("name", ""))
        kinds = self.access.get(key)
        if deleted:
            if kinds is not None and kinds.get(kind, ("",))[0] == name:
                del kinds[kind]
                if not kinds:
                    del self.access[key]
        else:
            owners = tuple(str(o.get("uid")) for o in meta.get("ownerReferences") or [])
            self.access.setdefault(key, {})[kind] = (name, owners)

    def has_trainer_access(self, key: JobKey, name: str, uid: str) -> bool:
        """Whether the job's ServiceAccount, Role and RoleBinding `name` exist, owned by job `uid` (a job
        re-applied under the same name has another uid: the old ones are being garbage-collected)."""
        kinds = self.access.get(key) or {}
        return all(
            (seen := kinds.get(kind)) is not None and seen[0] == name and uid in seen[1]
            for kind in ACCESS_KINDS
        )

    def jobs_using_claim(self, namespace: str, claim: str) -> list[JobKey]:
        return [
            key for key, body in self.jobs.items() if key[0] == namespace and claim_of(key[1], body) == claim
        ]

    def jobs_on_node(self, node: str) -> list[JobKey]:
        return [key for key, pods in self.pods.items() if any(p.node_name == node for p in pods.values())]


def claim_of(name: str, body: dict[str, Any]) -> str:
    """The checkpoint claim's name from a job's raw body (builders.pvc_name without parsing the spec)."""
    checkpoint = (body.get("spec") or {}).get("checkpoint") or {}
    return str(checkpoint.get("existingClaimName") or f"{name}-checkpoints")


def claim_facts(claim: dict[str, Any]) -> dict[str, Any]:
    """What views.claim_view and checkpoint_volume_shared read from a claim, in the API's shape."""
    meta = claim.get("metadata") or {}
    return {
        "metadata": {
            "name": meta.get("name"),
            "deletionTimestamp": meta.get("deletionTimestamp"),
            "ownerReferences": [
                {"kind": o.get("kind"), "uid": o.get("uid")} for o in meta.get("ownerReferences") or []
            ],
        },
        "spec": {"accessModes": list((claim.get("spec") or {}).get("accessModes") or [])},
        "status": {"accessModes": list((claim.get("status") or {}).get("accessModes") or [])},
    }


@dataclass(frozen=True)
class Assembled:
    job: FineTuneJob
    uid: str
    world: World
    resource_version: str


def assemble_world(
    name: str,
    body: dict[str, Any],
    job: FineTuneJob,
    pods: tuple[views.PodView, ...],
    nodes: dict[str, views.NodeView],
    claim: Claim,
    *,
    now: datetime,
    node_lost_seconds: float,
) -> Assembled:
    """The World from what was read (API or cache): the one assembly both paths share."""
    meta = body.get("metadata") or {}
    node_trouble = any(n.exists and n.ready != "True" for n in nodes.values())
    world = World(
        name=name,
        uid=str(meta["uid"]),
        generation=int(meta.get("generation") or 0),
        spec=job.spec,
        status=FineTuneJobStatus.model_validate(body.get("status") or {}),
        pods=pods,
        nodes=nodes,
        now=now,
        claim=views.claim_view(builders.pvc_name(job), claim),
        node_lost_seconds=node_lost_seconds,
        shared_volume=node_trouble and checkpoint_volume_shared(job, claim),
    )
    return Assembled(job, str(meta["uid"]), world, str(meta.get("resourceVersion") or ""))


def with_workload(
    world: World,
    job: FineTuneJob,
    labels: dict[str, str],
    workload: kueue.WorkloadView | None,
    installed: bool,
    watched: bool,
) -> World:
    """The World with what Kueue decides for a job labelled kueue.x-k8s.io/queue-name: its Workload (read
    from the API, or `watched`: from the watch-fed cache), whether Kueue is installed, and the resources
    key of the trainer pod the next attempt would get."""
    return dataclasses.replace(
        world,
        queue=labels.get(kueue.LABEL_QUEUE_NAME) or None,
        priority_class=labels.get(kueue.LABEL_PRIORITY_CLASS) or None,
        workload=workload,
        kueue_installed=installed,
        next_resources_key=kueue.resources_key(
            builders.trainer_resources(effective_job(job, world.status.effective))
        ),
        workload_watched=watched,
    )


def claim_needed(phase: str | None, nodes: dict[str, views.NodeView]) -> bool:
    """The claim is read for a job that may create a pod (a terminating claim blocks it) and for a pod on a
    troubled node (is the volume shared?)."""
    return phase not in ("Succeeded", "Failed") or any(n.exists and n.ready != "True" for n in nodes.values())


def checkpoint_volume_shared(job: FineTuneJob, claim: Claim) -> bool:
    """Whether the checkpoint claim may be mounted read-write on several nodes (ReadWriteMany requested, or
    offered by the bound volume: an NFS volume does not enforce a ReadWriteOnce request across nodes).
    `claim`: the claim as read (None: not there yet, the spec's access mode decides)."""
    if claim is None:
        return views.volume_shared([job.spec.checkpoint.access_mode])
    requested = (claim.get("spec") or {}).get("accessModes") or []
    offered = (claim.get("status") or {}).get("accessModes") or []
    return views.volume_shared([*requested, *offered] or [job.spec.checkpoint.access_mode])


def cached_world(
    cache: WatchCache, key: JobKey, *, now: datetime, node_lost_seconds: float
) -> Assembled | None:
    """The World as the watches show it, or None when only the API can say (the job unknown or being
    deleted, an invalid spec, a pod on a node the cache has not seen, a queued job whose Workload the
    Workload watch has not shown: not created yet, or Kueue not installed)."""
    namespace, name = key
    body = cache.jobs.get(key)
    meta = (body or {}).get("metadata") or {}
    if body is None or meta.get("deletionTimestamp"):
        return None
    labels = meta.get("labels") or {}
    queued = bool(labels.get(kueue.LABEL_QUEUE_NAME))
    workload = cache.workloads.get(key)
    if queued and workload is None:
        return None
    stamp = (str(meta.get("uid")), int(meta.get("generation") or 0))
    parsed = cache.parsed.get(key)
    if parsed is not None and parsed[0] == stamp:
        job = parsed[1]
    else:
        try:
            job = parse_job({**body, "status": None}, f"{namespace}/{name}")
        except InvalidManifest:
            return None  # the fresh pass shows it on the job
        job.metadata.namespace = namespace
        cache.parsed[key] = (stamp, job)
    pods = tuple(sorted((cache.pods.get(key) or {}).values(), key=lambda p: p.name))
    nodes: dict[str, views.NodeView] = {}
    for pod in pods:
        if pod.node_name:
            node = cache.nodes.get(pod.node_name)
            if node is None:
                return None
            nodes[pod.node_name] = node
    claim: Claim = None
    if builders.has_job_claim(job) and claim_needed((body.get("status") or {}).get("phase"), nodes):
        claim = cache.claims.get((namespace, builders.pvc_name(job)))
        attempts = int((body.get("status") or {}).get("attempt") or 0)
        if claim is None and attempts > 0 and job.spec.checkpoint.object_store is not None:
            # An object-store job's claim missing after attempts counts as a lost volume (decisions.
            # volume_lost): only the API can say it is really gone, not merely unseen by the watch yet.
            return None
    assembled = assemble_world(
        name, body, job, pods, nodes, claim, now=now, node_lost_seconds=node_lost_seconds
    )
    if not queued:
        return assembled
    world = with_workload(assembled.world, job, labels, workload, installed=True, watched=True)
    return dataclasses.replace(assembled, world=world)


@dataclass(frozen=True)
class Keys:
    """Which objects are there: in the cache, or in a relist."""

    jobs: frozenset[JobKey] = frozenset()
    pods: frozenset[tuple[JobKey, str]] = frozenset()
    nodes: frozenset[str] = frozenset()
    claims: frozenset[tuple[str, str]] = frozenset()
    workloads: frozenset[tuple[JobKey, str]] = frozenset()  # (the job label's key, Workload name)
    access: frozenset[tuple[JobKey, str, str]] = frozenset()  # (the job label's key, kind, name)
    #: What the decisions look at of each node: as cached when the relist went out, or as listed.
    node_views: tuple[tuple[str, views.NodeView], ...] = ()


def cached_keys(cache: WatchCache) -> Keys:
    return Keys(
        jobs=frozenset(cache.jobs),
        pods=frozenset((key, name) for key, pods in cache.pods.items() for name in pods),
        nodes=frozenset(cache.nodes),
        claims=frozenset(cache.claims),
        workloads=frozenset((key, view.name) for key, view in cache.workloads.items()),
        access=frozenset(
            (key, kind, seen[0]) for key, kinds in cache.access.items() for kind, seen in kinds.items()
        ),
        node_views=tuple(cache.nodes.items()),
    )


def refresh_nodes(cache: WatchCache, before: Keys, listed: Keys) -> set[JobKey]:
    """The slow safety net for nodes: a node whose kept facts (ready, since when, the out-of-service taint)
    differ in the relist from the cache, with no node event since the relist went out (a newer event wins),
    takes the listed facts; returns the jobs with a pod there. A watch that missed a node's change (kopf
    re-lists after an error, but a missed event between is possible) is caught within one resync."""
    cached_then = dict(before.node_views)
    woken: set[JobKey] = set()
    for name, view in listed.node_views:
        now = cache.nodes.get(name)
        # `is`: every node event stores a new view, even one with the same facts
        if now is None or now is not cached_then.get(name) or now == view:
            continue  # unknown (the watch will tell), an event since the relist went out, or the same
        cache.nodes[name] = view
        woken.update(cache.jobs_on_node(name))
    return woken


def drop_ghosts(cache: WatchCache, before: Keys, listed: Keys) -> set[JobKey]:
    """The safety resync. kopf re-lists after a watch error and so catches up with every object that
    exists, but it does not report what was deleted meanwhile: such a ghost stays in the cache. Drop what
    was cached `before` the relist was sent and is not in it (anything added since is left alone); returns
    the jobs concerned, which then read the API. Dropping a live object by mistake is harmless: a missing
    object only ever makes a look read the API."""
    woken: set[JobKey] = set()
    for key in before.jobs - listed.jobs:
        if key in cache.jobs:
            cache.observe_job(key, {}, deleted=True)
            woken.add(key)
    for key, name in before.pods - listed.pods:
        if name in cache.pods.get(key, {}):
            cache.observe_pod(key, {"metadata": {"name": name}}, deleted=True)
            woken.add(key)
    for node in before.nodes - listed.nodes:
        if node in cache.nodes:
            woken.update(cache.jobs_on_node(node))
            cache.observe_node(node, None)
    for namespace, claim in before.claims - listed.claims:
        if (namespace, claim) in cache.claims:
            cache.observe_claim(namespace, {"metadata": {"name": claim}}, deleted=True)
            woken.update(cache.jobs_using_claim(namespace, claim))
    for key, name in before.workloads - listed.workloads:
        if (view := cache.workloads.get(key)) is not None and view.name == name:
            cache.observe_workload(key, {"metadata": {"name": name}}, deleted=True)
            woken.add(key)
    for key, kind, name in before.access - listed.access:  # nothing decides on them: no job to wake
        cache.observe_access(key, kind, {"metadata": {"name": name}}, deleted=True)
    return woken

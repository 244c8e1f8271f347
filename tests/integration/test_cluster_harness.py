"""The local cluster and its disruption helpers behave like a real cloud cluster.

Each disruption must leave the pod with the condition/reason a managed cluster shows, because the
operator classifies a pod's end from exactly these fields (design.md §3).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness import disruptions as d
from tests.harness.cluster import Cluster
from tests.harness.kube import Kube, container_terminated, pod_condition, wait_for

pytestmark = pytest.mark.cluster


def start(kube: Kube, ns: str, manifest: dict) -> str:
    name = manifest["metadata"]["name"]
    kube.create_pod(ns, manifest)
    kube.wait_running(ns, name, timeout=60)
    return name


def wait_disruption(kube: Kube, ns: str, name: str, timeout: float = 60):
    """Until the pod has its DisruptionTarget condition and is marked for deletion. The controllers
    write these in two requests (status patch, then delete), so a read can fall between them."""
    return kube.wait_pod(
        ns,
        name,
        lambda p: d.disruption_target(p) is not None and p.metadata.deletion_timestamp is not None,
        timeout,
        what=f"DisruptionTarget and deletion on {ns}/{name}",
    )


# --- the node ------------------------------------------------------------------------------------
def test_node_ready_and_pod_logs_exec(cluster: Cluster, kube: Kube, namespace: str) -> None:
    assert kube.node_ready(cluster.node_name) == "True"
    name = start(kube, namespace, d.testbox_pod("hello"))
    # logs and exec go apiserver -> kubelet on the node's InternalIP
    wait_for(lambda: "waiting" in kube.logs(namespace, name), 10, what="log line")
    out = kube.kubectl("-n", namespace, "exec", name, "--", "/testbox", "write", "/x", "hi").stdout
    assert "wrote /x" in out


def test_delete_sends_sigterm(kube: Kube, namespace: str) -> None:
    # With a 30 s grace period, a pod that ignored SIGTERM would live 30 s; testbox exits on it.
    name = start(kube, namespace, d.testbox_pod("term", grace=30, hold=True))
    t0 = time.monotonic()
    kube.core.delete_namespaced_pod(name, namespace)
    pod = kube.wait_pod(
        namespace, name, lambda p: container_terminated(p) is not None, 20, what="container ended"
    )
    assert time.monotonic() - t0 < 10
    assert container_terminated(pod).exit_code == 0


def test_in_cluster_config_reaches_apiserver(kube: Kube, namespace: str) -> None:
    # KUBERNETES_SERVICE_HOST is the `kubernetes` Service IP; the node translates it to the apiserver.
    name = "incluster"
    kube.create_pod(namespace, d.testbox_pod(name, "incluster"))
    pod = kube.wait_pod(
        namespace, name, lambda p: p.status.phase in ("Succeeded", "Failed"), 60, what="incluster pod done"
    )
    log = kube.logs(namespace, name)
    assert pod.status.phase == "Succeeded", log
    assert re.search(r"GET https://10\.0\.0\.1:443/api -> 200 .*\"versions\"", log), log


def test_dynamic_pvc_is_writable_by_uid_1000(kube: Kube, namespace: str) -> None:
    kube.core.create_namespaced_persistent_volume_claim(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        },
    )  # no storageClassName: the default class provisions it
    pvc = wait_for(
        lambda: (
            (c := kube.core.read_namespaced_persistent_volume_claim("data", namespace)).status.phase
            == "Bound"
            and c
        ),
        60,
        what="PVC bound",
    )
    manifest = d.testbox_pod(
        "writer",
        "write",
        "/data/hello",
        "from-pod",
        run_as=1000,
        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
        volume_mounts=[{"name": "data", "mountPath": "/data"}],
    )
    kube.create_pod(namespace, manifest)
    pod = kube.wait_pod(
        namespace, "writer", lambda p: p.status.phase in ("Succeeded", "Failed"), 60, what="writer done"
    )
    log = kube.logs(namespace, "writer")
    assert pod.status.phase == "Succeeded", log
    assert "uid=1000 gid=1000" in log
    # The data is on the node, in the volume the provisioner made.
    pv = kube.core.read_persistent_volume(pvc.spec.volume_name)
    assert (Path(pv.spec.host_path.path) / "hello").read_text() == "from-pod"


# --- disruptions ---------------------------------------------------------------------------------
def test_drain_gives_eviction_by_eviction_api(cluster: Cluster, kube: Kube, namespace: str) -> None:
    name = start(kube, namespace, d.testbox_pod("victim", hold=True))
    try:
        evicted = d.drain(kube, cluster.node_name, namespace)
        assert evicted == [f"{namespace}/{name}"]
        pod = wait_disruption(kube, namespace, name)
        cond = d.disruption_target(pod)
        assert cond.reason == "EvictionByEvictionAPI"
        assert pod.metadata.deletion_timestamp is not None
        assert kube.node(cluster.node_name).spec.unschedulable
    finally:
        d.uncordon(kube, cluster.node_name)
    assert not kube.node(cluster.node_name).spec.unschedulable


def test_noexecute_taint_gives_deletion_by_taint_manager(
    cluster: Cluster, kube: Kube, namespace: str
) -> None:
    name = start(kube, namespace, d.testbox_pod("victim", hold=True))
    with d.tainted(kube, cluster.node_name):
        pod = wait_disruption(kube, namespace, name)
        assert d.disruption_target(pod).reason == "DeletionByTaintManager"
        assert pod.metadata.deletion_timestamp is not None
    assert not [t for t in kube.node(cluster.node_name).spec.taints or [] if t.key == d.SPOT_TAINT_KEY]


def test_preemption_gives_preemption_by_scheduler(kube: Kube, namespace: str) -> None:
    name = start(kube, namespace, d.testbox_pod("victim", cpu="200m", hold=True))
    preemptor = d.preempt(kube, namespace, name)
    try:
        pod = wait_disruption(kube, namespace, name)
        assert d.disruption_target(pod).reason == "PreemptionByScheduler"
        d.release(kube, namespace, name)
        kube.wait_running(namespace, preemptor.name, timeout=60)
    finally:
        preemptor.release()


def test_memory_limit_gives_oomkilled_137(kube: Kube, namespace: str) -> None:
    kube.create_pod(namespace, d.oom_pod("hog", limit="32Mi", hog_mib=128))
    pod = kube.wait_pod(namespace, "hog", lambda p: p.status.phase == "Failed", 60, what="pod Failed")
    term = container_terminated(pod)
    assert (term.reason, term.exit_code) == ("OOMKilled", 137)
    assert d.disruption_target(pod) is None


def test_vanished_node(cluster: Cluster, kube: Kube, namespace: str) -> None:
    """A spot VM disappears: the node goes Unknown, is tainted unreachable, and after the toleration the
    pod is marked DeletionByTaintManager. When the node comes back, the pod's containers are gone."""
    name = start(kube, namespace, d.testbox_pod("victim", hold=True))
    try:
        seconds = d.vanish_node(cluster, kube, timeout=60)
        print(f"node Unknown {seconds:.1f} s after the kubelet died")
        taints = wait_for(
            lambda: [
                t
                for t in kube.node(cluster.node_name).spec.taints or []
                if t.key == "node.kubernetes.io/unreachable" and t.effect == "NoExecute"
            ],
            30,
            what="unreachable NoExecute taint",
        )
        assert taints
        pod = kube.wait_pod(
            namespace, name, lambda p: pod_condition(p, "Ready").status == "False", 30, what="pod Ready=False"
        )
        pod = wait_disruption(kube, namespace, name, timeout=60)
        assert d.disruption_target(pod).reason == "DeletionByTaintManager"
        assert pod.metadata.deletion_timestamp is not None
    finally:
        d.restore_node(cluster, kube)
    # The kubelet finds the pod's processes dead (they were SIGKILLed with the VM) and reports it.
    pod = kube.wait_pod(
        namespace,
        name,
        lambda p: container_terminated(p) is not None,
        60,
        what="container reported terminated",
    )
    assert container_terminated(pod).exit_code != 0


# --- down leaves nothing; then up again for whoever comes next ------------------------------------
def _alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _mounts_under(*dirs: str) -> list[str]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = line.split()[4]
        if any(mp == x or mp.startswith(x.rstrip("/") + "/") for x in dirs):
            out.append(mp)
    return out


@pytest.mark.skipif(
    os.environ.get("FTO_TEST_DOWN") != "1",
    reason="takes the shared cluster down and up (wiping what other tests set up): "
    "run alone with FTO_TEST_DOWN=1",
)
def test_down_leaves_no_process_or_mount_then_up_again(cluster: Cluster, kube: Kube, namespace: str) -> None:
    start(kube, namespace, d.testbox_pod("running-at-down"))
    state = cluster.state_dir
    pids = [int(p.read_text()) for p in (state / "run").glob("*.pid")]
    assert len(pids) >= 6
    cluster.down()
    assert not state.exists()
    alive = [p for p in pids if _alive(p)]
    assert not alive, f"still running: {alive}"
    assert not _mounts_under(str(state), "/run/containerd", "/var/lib/kubelet", "/run/netns")
    shims = subprocess.run(["pgrep", "-f", "containerd-shim-runc-v2"], capture_output=True, text=True).stdout
    assert not shims.strip(), shims
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert "fto-" not in links
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    assert "FTO-" not in rules
    assert "KUBE-" not in rules  # the kubelet's chains (there were none before our first up)
    assert not [
        n
        for n in (Path("/run/netns").iterdir() if Path("/run/netns").exists() else [])
        if n.name.startswith("fto-")
    ]
    # Leave the cluster as we found it (up), for the tests and people after us.
    was_started_here = cluster.started_here
    t0 = time.monotonic()
    cluster.up(build=False)
    cluster.started_here = was_started_here
    print(f"warm up took {time.monotonic() - t0:.1f} s")
    assert time.monotonic() - t0 < 30
    assert kube.node_ready(cluster.node_name) == "True"

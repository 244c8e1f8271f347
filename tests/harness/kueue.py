"""Real Kueue on the shared local cluster, for the tests of the Kueue integration (issue 15).

`Kueue.start(kube)` builds the pinned manager (hack/cluster/kueue/build.sh: cached, seconds when warm),
installs its CRDs, and runs `kueue` as a child process on the host with the admin kubeconfig, like the
harness runs the operator. Its webhook server listens on 127.0.0.1 only, with a throwaway self-signed
certificate; the apiserver (a host process too) reaches it through webhook configurations whose
`clientConfig.url` is `https://127.0.0.1:<port>/...`. Only the webhooks for Kueue's own API group are
installed (no pod/Job webhooks), so nothing else in the shared cluster passes through them.

`kueue.queue(namespace, ...)` makes a ResourceFlavor, a ClusterQueue with the given quota and a LocalQueue
in `namespace`; `stop()` deletes everything it made (queues, flavors, priority classes, Workloads, the
webhook configurations, Kueue's namespace and the CRDs), so the other tests see a cluster without Kueue.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from .kube import Kube, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SH = REPO_ROOT / "hack" / "cluster" / "kueue" / "build.sh"
GROUP = "kueue.x-k8s.io"
VERSION = "v1beta2"
#: Every object this harness makes carries this label, so a later run can clear what a killed run left.
OWNED_LABEL = "finetune-operator.test/kueue"
#: Cluster-scoped Kueue kinds the harness creates (plural names), deleted in this order.
CLUSTER_KINDS = ("clusterqueues", "resourceflavors", "workloadpriorityclasses")
WEBHOOK_GROUPS = {GROUP}
#: Without internal cert management Kueue v0.17 reads its metrics certificate from this fixed path (cmd/kueue
#: main.go): the harness puts its throwaway one there, and removes the directory when it made it.
METRICS_CERT_ROOT = Path("/etc/kueue")
METRICS_CERT_DIR = METRICS_CERT_ROOT / "metrics" / "certs"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build() -> Path:
    """The cache dir of the pinned Kueue (bin/kueue, crds/kueue-crds.yaml), building it when missing."""
    r = subprocess.run([str(BUILD_SH)], capture_output=True, text=True, timeout=3600, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"{BUILD_SH} failed:\n{r.stderr[-3000:]}")
    return Path(r.stdout.strip().splitlines()[-1])


def _self_signed_cert(cert_dir: Path) -> bytes:
    """tls.crt/tls.key for 127.0.0.1 in cert_dir (the webhook server default names); returns the cert."""
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=kueue-webhook.fto.local", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(cert_dir / "tls.key"), "-out", str(cert_dir / "tls.crt"),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return (cert_dir / "tls.crt").read_bytes()


@dataclass
class Kueue:
    """A running Kueue manager (child process) and the cluster objects the harness made for it."""

    kube: Kube
    home: Path
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    proc: subprocess.Popen[bytes] | None = None
    webhook_port: int = field(default_factory=_free_port)
    health_port: int = field(default_factory=_free_port)
    metrics_port: int = field(default_factory=_free_port)
    work_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="fto-kueue-")))
    start_seconds: float = 0.0
    made_metrics_certs: bool = False

    @property
    def namespace(self) -> str:
        """Kueue's own namespace (its config needs one; nothing of ours runs there)."""
        return f"fto-kueue-{self.suffix}"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "kueue.log"

    # --- lifecycle -------------------------------------------------------------------------------
    @classmethod
    def start(cls, kube: Kube, timeout: float = 120) -> Kueue:
        t0 = time.monotonic()
        home = build()
        k = cls(kube=kube, home=home)
        try:
            remove_leftovers(kube)
            k._install_crds()
            k._create_namespace()
            ca = _self_signed_cert(k.work_dir)
            k._metrics_certs()
            k._write_config()
            k._install_webhooks(ca)
            k._run(timeout)
        except BaseException:
            k.stop()
            raise
        k.start_seconds = time.monotonic() - t0
        return k

    def _install_crds(self) -> None:
        self.kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(self.home / "crds"))
        for name in (
            "workloads",
            "clusterqueues",
            "localqueues",
            "resourceflavors",
            "workloadpriorityclasses",
        ):
            wait_for(
                lambda n=name: any(
                    c.type == "Established" and c.status == "True"
                    for c in self.kube.apiext.read_custom_resource_definition(
                        f"{n}.{GROUP}"
                    ).status.conditions
                    or []
                ),
                60,
                what=f"CRD {name}.{GROUP} established",
            )

    def _create_namespace(self) -> None:
        self.kube.core.create_namespace(
            client.V1Namespace(
                metadata=client.V1ObjectMeta(name=self.namespace, labels={OWNED_LABEL: "true"})
            )
        )

    def _metrics_certs(self) -> None:
        if METRICS_CERT_ROOT.exists():
            if not (METRICS_CERT_DIR / "tls.crt").exists():
                raise RuntimeError(
                    f"{METRICS_CERT_ROOT} exists without a metrics certificate: not ours, left alone"
                )
            return
        METRICS_CERT_DIR.mkdir(parents=True)
        self.made_metrics_certs = True
        for name in ("tls.crt", "tls.key"):
            shutil.copy(self.work_dir / name, METRICS_CERT_DIR / name)

    def _write_config(self) -> None:
        config = {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2",
            "kind": "Configuration",
            "namespace": self.namespace,
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.health_port}"},
            "metrics": {"bindAddress": f"127.0.0.1:{self.metrics_port}"},
            "webhook": {"host": "127.0.0.1", "port": self.webhook_port, "certDir": str(self.work_dir)},
            "leaderElection": {"leaderElect": False},
            # Our certificate, our webhook configurations: Kueue must not rewrite them.
            "internalCertManagement": {"enable": False},
            # Workloads are owned by the operator (docs/operator.md "Kueue"): no job framework needed;
            # batch/job is the smallest valid list, and its webhook is not installed, so no Job is touched.
            "integrations": {"frameworks": ["batch/job"]},
            "manageJobsWithoutQueueName": False,
            # The on-demand visibility API server binds every interface: off.
            "featureGates": {"VisibilityOnDemand": False},
        }
        (self.work_dir / "config.yaml").write_text(yaml.safe_dump(config))

    def _install_webhooks(self, ca: bytes) -> None:
        """Kueue webhooks (defaulting/validation of Workloads, queues, flavors), pointed at 127.0.0.1."""

        manifests = self.home / "webhooks.yaml"
        docs = [d for d in yaml.safe_load_all(manifests.read_text()) if d]
        ca_b64 = base64.b64encode(ca).decode()
        for doc in docs:
            hooks = [h for h in doc["webhooks"] if set(h["rules"][0]["apiGroups"]) <= WEBHOOK_GROUPS]
            for h in hooks:
                path = h["clientConfig"]["service"]["path"]
                h["clientConfig"] = {
                    "url": f"https://127.0.0.1:{self.webhook_port}{path}",
                    "caBundle": ca_b64,
                }
            doc["webhooks"] = hooks
            doc["metadata"] = {
                "name": f"fto-kueue-{self.suffix}-{doc['kind'].lower()}",
                "labels": {OWNED_LABEL: "true"},
            }
        path = self.work_dir / "webhooks.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        self.kube.kubectl("apply", "-f", str(path))

    def _run(self, timeout: float) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.kube.kubeconfig)}
        log = open(self.log_path, "ab")  # noqa: SIM115  (owned by the child)
        self.proc = subprocess.Popen(
            [
                str(self.home / "bin" / "kueue"),
                f"--config={self.work_dir / 'config.yaml'}",
                "--zap-log-level=2",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.work_dir,
        )
        log.close()
        wait_for(self._ready, timeout, interval=0.3, what="kueue /readyz")
        # The webhook server answers once the certificate is loaded: a dry-run flavor goes through it.
        wait_for(self._webhook_answers, 30, interval=0.3, what="kueue webhooks reachable from the apiserver")

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"kueue exited {self.proc.returncode}: {self.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def _webhook_answers(self) -> bool:
        body = self._obj("ResourceFlavor", f"fto-probe-{self.suffix}", {})
        try:
            self.kube.custom.create_cluster_custom_object(
                GROUP, VERSION, "resourceflavors", body, dry_run="All"
            )
        except ApiException as e:
            if e.status == 500 and "webhook" in str(e.body):
                return False
            raise
        return True

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Delete everything this harness made (while Kueue still runs: it removes its own finalizers),
        then stop Kueue and remove its webhooks, namespace and CRDs."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                _delete_owned_objects(self.kube, timeout=30)
        finally:
            if self.proc is not None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
                self.proc = None
            remove_leftovers(self.kube)
            shutil.rmtree(self.work_dir, ignore_errors=True)
            if self.made_metrics_certs:
                shutil.rmtree(METRICS_CERT_ROOT, ignore_errors=True)

    # --- queues ----------------------------------------------------------------------------------
    def _obj(
        self, kind: str, name: str, spec: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name, "labels": {OWNED_LABEL: "true"}}
        if namespace:
            meta["namespace"] = namespace
        return {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": meta, "spec": spec}

    def queue(
        self,
        namespace: str,
        quota: dict[str, str],
        name: str = "team-a",
        preemption: dict[str, str] | None = None,
        flavor_spec: dict[str, Any] | None = None,
    ) -> str:
        """ResourceFlavor (`flavor_spec`: its nodeLabels, tolerations, ...) + ClusterQueue (`quota`:
        resource -> nominal quota) + LocalQueue `name` in `namespace`. Returns the LocalQueue's name (what
        a job's `kueue.x-k8s.io/queue-name` says)."""
        flavor, cq = f"fto-{self.suffix}-{namespace}"[:63], f"fto-{self.suffix}-{namespace}"[:63]
        self.kube.custom.create_cluster_custom_object(
            GROUP, VERSION, "resourceflavors", self._obj("ResourceFlavor", flavor, flavor_spec or {})
        )
        cq_spec: dict[str, Any] = {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "resourceGroups": [
                {
                    "coveredResources": list(quota),
                    "flavors": [
                        {
                            "name": flavor,
                            "resources": [{"name": r, "nominalQuota": q} for r, q in quota.items()],
                        }
                    ],
                }
            ],
        }
        if preemption:
            cq_spec["preemption"] = preemption
        self.kube.custom.create_cluster_custom_object(
            GROUP, VERSION, "clusterqueues", self._obj("ClusterQueue", cq, cq_spec)
        )
        self.kube.custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "localqueues",
            self._obj("LocalQueue", name, {"clusterQueue": cq}, namespace),
        )
        wait_for(
            lambda: _condition_true(
                self.kube.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "localqueues", name),
                "Active",
            ),
            30,
            what=f"LocalQueue {namespace}/{name} active",
        )
        return name

    def priority_class(self, name: str, value: int) -> str:
        """A WorkloadPriorityClass (cluster-scoped; removed by stop())."""
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "WorkloadPriorityClass",
            "metadata": {"name": name, "labels": {OWNED_LABEL: "true"}},
            "value": value,
        }
        self.kube.custom.create_cluster_custom_object(GROUP, VERSION, "workloadpriorityclasses", body)
        return name

    def workloads(self, namespace: str) -> list[dict[str, Any]]:
        return list(
            self.kube.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "workloads")["items"]
        )


def _condition_true(obj: dict[str, Any], ctype: str) -> bool:
    return any(
        c.get("type") == ctype and c.get("status") == "True"
        for c in obj.get("status", {}).get("conditions", [])
    )


def _crds_installed(kube: Kube) -> bool:
    try:
        kube.apiext.read_custom_resource_definition(f"workloads.{GROUP}")
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    return True


def _delete_owned_objects(kube: Kube, timeout: float) -> None:
    """Workloads and LocalQueues in every namespace, then the labelled cluster-scoped objects."""
    if not _crds_installed(kube):
        return
    for plural in ("workloads", "localqueues"):
        for obj in kube.custom.list_cluster_custom_object(GROUP, VERSION, plural)["items"]:
            meta = obj["metadata"]
            try:
                kube.custom.delete_namespaced_custom_object(
                    GROUP, VERSION, meta["namespace"], plural, meta["name"]
                )
            except ApiException as e:
                if e.status != 404:
                    raise
    for plural in CLUSTER_KINDS:
        for obj in kube.custom.list_cluster_custom_object(GROUP, VERSION, plural, label_selector=OWNED_LABEL)[
            "items"
        ]:
            try:
                kube.custom.delete_cluster_custom_object(GROUP, VERSION, plural, obj["metadata"]["name"])
            except ApiException as e:
                if e.status != 404:
                    raise
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = sum(
            len(kube.custom.list_cluster_custom_object(GROUP, VERSION, p)["items"])
            for p in ("workloads", "localqueues", *CLUSTER_KINDS)
        )
        if not left:
            return
        time.sleep(0.5)


def _drop_finalizers(kube: Kube) -> None:
    """With Kueue stopped nobody removes its finalizers (kueue.x-k8s.io/resource-in-use, ...): we do."""
    for plural in ("workloads", "localqueues"):
        for obj in kube.custom.list_cluster_custom_object(GROUP, VERSION, plural)["items"]:
            meta = obj["metadata"]
            if meta.get("finalizers"):
                kube.custom.patch_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    meta["namespace"],
                    plural,
                    meta["name"],
                    {"metadata": {"finalizers": None}},
                )
    for plural in CLUSTER_KINDS:
        for obj in kube.custom.list_cluster_custom_object(GROUP, VERSION, plural)["items"]:
            if obj["metadata"].get("finalizers"):
                kube.custom.patch_cluster_custom_object(
                    GROUP, VERSION, plural, obj["metadata"]["name"], {"metadata": {"finalizers": None}}
                )


def remove_leftovers(kube: Kube) -> None:
    """Remove every trace of Kueue this harness may have left (also after a killed run): webhook
    configurations, Kueue objects (finalizers dropped), the CRDs, and Kueue's namespaces."""
    admission = client.AdmissionregistrationV1Api(kube.api_client)
    for cfg in admission.list_mutating_webhook_configuration(label_selector=OWNED_LABEL).items:
        admission.delete_mutating_webhook_configuration(cfg.metadata.name)
    for vcfg in admission.list_validating_webhook_configuration(label_selector=OWNED_LABEL).items:
        admission.delete_validating_webhook_configuration(vcfg.metadata.name)
    if _crds_installed(kube):
        _delete_owned_objects(kube, timeout=5)
        _drop_finalizers(kube)
        for crd in kube.apiext.list_custom_resource_definition().items:
            if crd.spec.group == GROUP:
                try:
                    kube.apiext.delete_custom_resource_definition(crd.metadata.name)
                except ApiException as e:
                    if e.status != 404:
                        raise
        wait_for(
            lambda: (
                not any(c.spec.group == GROUP for c in kube.apiext.list_custom_resource_definition().items)
            ),
            60,
            what="Kueue CRDs removed",
        )
    for ns in kube.core.list_namespace(label_selector=OWNED_LABEL).items:
        try:
            kube.core.delete_namespace(ns.metadata.name, propagation_policy="Background")
        except ApiException as e:
            if e.status != 404:
                raise


def leftovers(kube: Kube) -> list[str]:
    """What of Kueue is still in the cluster (empty after stop())."""
    admission = client.AdmissionregistrationV1Api(kube.api_client)
    left = [
        f"crd/{c.metadata.name}"
        for c in kube.apiext.list_custom_resource_definition().items
        if c.spec.group == GROUP
    ]
    left += [
        f"mutatingwebhookconfiguration/{c.metadata.name}"
        for c in admission.list_mutating_webhook_configuration(label_selector=OWNED_LABEL).items
    ]
    left += [
        f"validatingwebhookconfiguration/{c.metadata.name}"
        for c in admission.list_validating_webhook_configuration(label_selector=OWNED_LABEL).items
    ]
    left += [
        f"namespace/{n.metadata.name}"
        for n in kube.core.list_namespace(label_selector=OWNED_LABEL).items
        if n.status.phase != "Terminating"
    ]
    return left

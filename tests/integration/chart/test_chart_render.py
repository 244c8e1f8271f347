"""The chart, rendered offline by real helm: lint, default and full values, the schema's refusals.

No cluster needed (only the helm binary that `hack/cluster.sh build` makes).
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from .helm import CHART, FULL_VALUES, by_kind, hooks, installed, one, render_error, run, template

EXPECTED_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "Deployment"}


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    return c


@pytest.mark.parametrize("values", [[], ["-f", str(FULL_VALUES)]], ids=["default", "full"])
def test_lint(helm: str, values: list[str]) -> None:
    r = run(helm, "lint", "--strict", str(CHART), *values)
    assert "0 chart(s) failed" in r.stdout


def test_default_values_render_the_operator(helm: str) -> None:
    objects = installed(template(helm))
    kinds = {o["kind"] for o in objects}
    assert kinds >= EXPECTED_KINDS, kinds
    # Monitoring objects are opt-in (their CRDs may not exist in the cluster).
    assert not {"ServiceMonitor", "PodMonitor", "PrometheusRule"} & kinds
    for o in objects:
        if o["kind"] not in {"ClusterRole", "ClusterRoleBinding"}:
            assert o["metadata"]["namespace"] == "fto-system", o["metadata"]["name"]
        assert o["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"

    deploy = one(objects, "Deployment")
    spec = deploy["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    c = container(objects)
    assert (
        c["image"]
        == "ghcr.io/finetune-operator/operator:"
        + yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    )
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    # A read-only root needs somewhere writable for Python's temp files.
    (tmp,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
    (vol,) = [v for v in pod["volumes"] if v["name"] == tmp["name"]]
    assert "emptyDir" in vol
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    assert c["resources"]["limits"]["memory"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["port"] in ports, probe
    assert "--all-namespaces" in c["args"]
    # Leader election on by default (it also covers a terminating operator pod's overlap with its successor).
    assert {
        "--leader-election",
        "--leader-election-namespace=fto-system",
        "--leader-election-id=fto-finetune-operator-leader",
    } <= set(c["args"])
    assert f"--health-port={ports['health']}" in c["args"]
    assert f"--metrics-port={ports['metrics']}" in c["args"]

    # The metrics Service selects exactly the operator pod and targets its metrics port by name.
    svc = one(objects, "Service")
    labels = spec["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert spec["selector"]["matchLabels"] == svc["spec"]["selector"]
    (port,) = svc["spec"]["ports"]
    assert port["targetPort"] == "metrics" and ports["metrics"] == 8080

    # The binding gives the ClusterRole to the pod's ServiceAccount, in the release namespace.
    sa = one(objects, "ServiceAccount")
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    crb = one(objects, "ClusterRoleBinding")
    assert crb["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": one(objects, "ClusterRole")["metadata"]["name"],
    }
    assert crb["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "fto-system"}
    ]


def test_no_secret_access_anywhere(helm: str) -> None:
    for values in ([], ["-f", str(FULL_VALUES)]):
        objects = template(helm, *values)
        assert not by_kind(objects, "Secret")
        roles = by_kind(objects, "ClusterRole") + by_kind(objects, "Role")
        assert len(roles) >= 3  # the operator's, the leader Lease's, the uninstall hook's
        for rule in [rule for role in roles for rule in role["rules"]]:
            assert "secrets" not in rule["resources"]
            assert "*" not in rule["resources"] and "*" not in rule["verbs"] and "*" not in rule["apiGroups"]
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])


def test_full_values_render(helm: str) -> None:
    full = yaml.safe_load(FULL_VALUES.read_text())
    objects = installed(template(helm, "-f", str(FULL_VALUES)))
    deploy = one(objects, "Deployment")
    assert deploy["metadata"]["name"] == "ml-finetune"
    assert deploy["spec"]["replicas"] == 2  # a hot standby: only the Lease holder acts
    assert not hooks(template(helm, "-f", str(FULL_VALUES)))  # uninstall.releaseFinalizers: false
    pod = deploy["spec"]["template"]["spec"]
    c = container(objects)
    assert (
        c["image"] == f"{full['image']['repository']}@{full['image']['digest']}"
    )  # a digest wins over the tag
    assert c["imagePullPolicy"] == "Always"
    assert "--verbose" in c["args"]
    assert "--namespace=ml-team-a" in c["args"] and "--namespace=ml-team-b" in c["args"]
    assert "--all-namespaces" not in c["args"]
    assert {"--log-format=text", "--node-lost-seconds=300", "--unreachable-toleration-seconds=60"} <= set(
        c["args"]
    )
    assert {"name": "EXTRA", "value": "1"} in c["env"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"metrics": 9090, "health": 9091}
    assert "readinessProbe" not in c and c["livenessProbe"]["periodSeconds"] == 30
    assert c["resources"] == full["resources"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["nodeSelector"] == full["nodeSelector"]
    assert pod["tolerations"] == full["tolerations"]
    assert pod["affinity"] == full["affinity"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["terminationGracePeriodSeconds"] == 60
    assert pod["serviceAccountName"] == "ml-finetune-operator"
    meta = deploy["spec"]["template"]["metadata"]
    assert meta["labels"]["team"] == "ml" and meta["annotations"]["example.com/owner"] == "ml-platform"
    svc = one(objects, "Service")
    assert svc["metadata"]["name"] == "ml-finetune-metrics"
    assert svc["spec"]["ports"][0]["port"] == 9000
    assert svc["metadata"]["annotations"] == {"prometheus.io/scrape": "true"}
    sa = one(objects, "ServiceAccount")
    assert sa["metadata"]["annotations"] == full["serviceAccount"]["annotations"]


def test_optional_objects_can_be_turned_off(helm: str) -> None:
    objects = template(
        helm,
        "--set",
        "rbac.create=false,serviceAccount.create=false,serviceAccount.name=byo,metrics.service.enabled=false",
    )
    assert {o["kind"] for o in objects} & EXPECTED_KINDS == {"Deployment"}
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "byo"


def test_replicas_elect_a_leader(helm: str) -> None:
    deploy = one(template(helm, "--set", "replicaCount=3"), "Deployment")
    assert deploy["spec"]["replicas"] == 3
    assert "--leader-election" in deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    # Without leader election the operator acts on its own: one replica only (refused otherwise, below).
    deploy = one(template(helm, "--set", "leaderElection.enabled=false"), "Deployment")
    assert not [a for a in deploy["spec"]["template"]["spec"]["containers"][0]["args"] if "leader" in a]
    assert not [o for o in template(helm, "--set", "leaderElection.enabled=false") if "leader" in str(o)]


def test_uninstall_hook_releases_the_finalizers(helm: str) -> None:
    """helm uninstall runs a post-delete Job with the operator image: `--release-finalizers` over the same
    scope, after taking the leader Lease (so it runs once no operator acts)."""
    objects = template(helm, "--set", "operator.watchNamespaces={a,b}")
    job = one(hooks(objects), "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-delete"
    assert "hook-succeeded" in job["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    operator = container(installed(objects))
    assert c["image"] == operator["image"]
    assert c["securityContext"] == operator["securityContext"]
    assert c["args"][0] == "--release-finalizers"
    assert {"--namespace=a", "--namespace=b", "--leader-election"} <= set(c["args"])
    assert {a for a in c["args"] if a.startswith("--leader-election-")} == {
        a for a in operator["args"] if a.startswith("--leader-election-")
    }
    sa = one(hooks(objects), "ServiceAccount")["metadata"]["name"]
    assert pod["serviceAccountName"] == sa
    # Its RBAC is created before it (hook weight) and bound in the watched namespaces only.
    for o in hooks(objects):
        if o["kind"] != "Job":
            assert int(o["metadata"]["annotations"]["helm.sh/hook-weight"]) < 0, o["kind"]
    assert sorted(b["metadata"]["namespace"] for b in by_kind(hooks(objects), "RoleBinding")) == [
        "a",
        "b",
        "fto-system",
    ]
    assert not by_kind(hooks(objects), "ClusterRoleBinding")
    assert not hooks(template(helm, "--set", "uninstall.releaseFinalizers=false"))


def test_existing_service_account_needs_a_name(helm: str) -> None:
    assert "serviceAccount.name is required" in render_error(helm, "--set", "serviceAccount.create=false")


def test_metrics_and_health_ports_must_differ(helm: str) -> None:
    stderr = render_error(helm, "--set", "operator.metricsPort=9000,operator.healthPort=9000")
    assert "must differ" in stderr


def test_settings_change_rolls_the_pod(helm: str) -> None:
    a = one(template(helm), "Deployment")["spec"]["template"]["metadata"]["annotations"]
    b = one(template(helm, "--set", "operator.logLevel=debug"), "Deployment")["spec"]["template"]["metadata"]
    assert a["checksum/values"] != b["annotations"]["checksum/values"]


def test_crd_ships_in_the_chart(helm: str) -> None:
    crd_dir = CHART / "crds"
    if not any(crd_dir.glob("*.yaml")):
        pytest.skip("charts/finetune-operator/crds/ is empty: run `finetune-crd --write`")
    objects = template(helm, "--include-crds")
    (crd,) = by_kind(objects, "CustomResourceDefinition")
    assert crd["metadata"]["name"] == "finetunejobs.finetune.dev"
    # crds/ is never templated: Helm installs it once and keeps it on uninstall.
    assert "{{" not in (crd_dir / "finetune.dev_finetunejobs.yaml").read_text()


# Values the schema must refuse, each with the message helm prints.
BAD_VALUES = [
    (["--set", "image.pullPolicy=Sometimes"], "/image/pullPolicy"),
    (["--set", "image.digest=latest"], "/image/digest"),
    (["--set", "image.repository="], "/image/repository"),
    # two replicas that would both act: more than one needs leader election
    (["--set", "replicaCount=2,leaderElection.enabled=false"], "replicaCount"),
    (["--set", "replicaCount=0"], "/replicaCount"),
    (["--set", "leaderElection.enabled=yes"], "/leaderElection/enabled"),
    (["--set", "uninstall.releaseFinalizers=1"], "/uninstall/releaseFinalizers"),
    # Roles are bound per namespace: exact names only
    (["--set", "operator.watchNamespaces={team-*}"], "/operator/watchNamespaces/0"),
    (["--set", "operator.logLevel=verbose"], "/operator/logLevel"),
    (["--set", "operator.metricsPort=0"], "/operator/metricsPort"),
    (["--set", "operator.healthPort=70000"], "/operator/healthPort"),
    (["--set-string", "operator.metricsPort=8080"], "/operator/metricsPort"),
    (["--set", "operator.extraArgs=--x"], "/operator/extraArgs"),
    (["--set", "operator.watchNamespaces={Team_A}"], "/operator/watchNamespaces/0"),
    (["--set", "operator.logFormat=xml"], "/operator/logFormat"),
    (["--set", "operator.nodeLostSeconds=0"], "/operator/nodeLostSeconds"),
    (["--set", "operator.env[0].value=x"], "/operator/env/0"),
    (["--set", "serviceAccount.create=yes"], "/serviceAccount/create"),
    (["--set", "rbac.enabled=true"], "/rbac"),
    (["--set", "metrics.service.type=ExternalName"], "/metrics/service/type"),
    (["--set", "resources.limits.memory=lots"], "/resources/limits/memory"),
    (["--set", "resources.request.cpu=1"], "/resources"),
    (["--set", "podSecurityContext.runAsNonRoot=false"], "/podSecurityContext/runAsNonRoot"),
    (["--set", "podSecurityContext.runAsUser=0"], "/podSecurityContext/runAsUser"),
    (["--set", "securityContext.privileged=true"], "/securityContext/privileged"),
    (["--set", "securityContext.allowPrivilegeEscalation=true"], "/securityContext/allowPrivilegeEscalation"),
    (["--set", "probes.liveness.periodSeconds=0"], "/probes/liveness/periodSeconds"),
    (["--set", "terminationGracePeriodSeconds=-1"], "/terminationGracePeriodSeconds"),
    (["--set", "nodeSelector.pool=1"], "/nodeSelector/pool"),
    (["--set", "fullnameOverride=Not_A_DNS_Label"], "/fullnameOverride"),
    (["--set", "monitoring.serviceMonitor.interval=often"], "/monitoring/serviceMonitor/interval"),
    (["--set", "monitoring.dashboards.enabled=maybe"], "/monitoring/dashboards/enabled"),
]


@pytest.mark.parametrize(("args", "where"), BAD_VALUES, ids=[" ".join(a[1:]) for a, _ in BAD_VALUES])
def test_schema_rejects_bad_values(helm: str, args: list[str], where: str) -> None:
    r = run(helm, "template", "fto", str(CHART), "--kube-version", "1.37.2", *args, check=False)
    assert r.returncode != 0, f"helm accepted {args}"
    assert "values don't meet the specifications of the schema" in r.stderr or "schema" in r.stderr, r.stderr
    assert where in r.stderr, r.stderr

"""The chart's RBAC (ClusterRole, and the Roles of a namespaced install) is exactly what the operator's code
needs: no rule or verb without a use, no use without a rule. A namespaced install (operator.watchNamespaces)
writes only in the watched namespaces: checked on the rendered objects, and on the real apiserver with
`kubectl auth can-i` (marker `cluster`).

What the operator needs is derived from its source, not restated by hand:
- every Kubernetes client call in operator/finetune_operator/*.py (`core.create_namespaced_pod`, ...) → one
  (group, resource, verb);
- every kopf handler: `@kopf.on.event`/`@kopf.daemon` on a resource → list + watch it; a daemon (or any
  non-event handler) → patch the resource (kopf's finalizer and its progress/diff-base annotations);
  kopf posts Events → create events;
- the per-job Role built by builders.build_role: RBAC lets a subject grant only permissions it holds itself;
- owner references with blockOwnerDeletion → update on the owner's finalizers subresource (required where
  the OwnerReferencesPermissionEnforcement admission plugin is on).

The cluster tests (test_chart_cluster.py) then run the operator under this role and check it never got a 403.
"""

from __future__ import annotations

import ast
import re
import uuid
from collections.abc import Iterable
from pathlib import Path

import pytest
import yaml
from finetune_api.trainer_config import parse_job
from finetune_operator import builders

from tests.harness.kube import Kube

from .helm import REPO_ROOT, is_hook, one, template

OPERATOR_SRC = REPO_ROOT / "operator" / "finetune_operator"
MINIMAL_JOB = REPO_ROOT / "tests" / "manifests" / "minimal-job.yaml"

Perm = tuple[str, str, str]  # (apiGroup, resource, verb)

VERBS = {
    "create": "create",
    "read": "get",
    "list": "list",
    "patch": "patch",
    "replace": "update",
    "delete": "delete",
}
# kubernetes-client resource names → (apiGroup, resource)
RESOURCES = {
    "pod": ("", "pods"),
    "persistent_volume_claim": ("", "persistentvolumeclaims"),
    "config_map": ("", "configmaps"),
    "service_account": ("", "serviceaccounts"),
    "event": ("", "events"),
    "node": ("", "nodes"),
    "role": ("rbac.authorization.k8s.io", "roles"),
    "role_binding": ("rbac.authorization.k8s.io", "rolebindings"),
    # the operator's only custom resource (every custom-object call passes GROUP/VERSION/PLURAL)
    "custom_object": ("finetune.dev", "finetunejobs"),
    "cluster_custom_object": ("finetune.dev", "finetunejobs"),
    "lease": ("coordination.k8s.io", "leases"),
    "custom_object_status": ("finetune.dev", "finetunejobs/status"),
}
#: Kueue's objects (operator/finetune_operator/kueue.py): the plural constant a custom-object call names.
KUEUE_PLURALS = {
    "kueue.PLURAL": "workloads",
    "kueue.PRIORITY_CLASSES": "workloadpriorityclasses",
    "kueue.RESOURCE_FLAVORS": "resourceflavors",
}
CLIENT_CALL = re.compile(
    r"\.(create|read|list|patch|replace|delete|get)_(?:namespaced_)?([a-z_]+?)(?:_for_all_namespaces)?\b"
)


def operator_roles(objects: list[dict]) -> list[dict]:
    """The operator's ClusterRole and Roles (not the uninstall hook's)."""
    return [o for o in objects if o["kind"] in ("ClusterRole", "Role") and not is_hook(o)]


def granted_all(roles: list[dict]) -> set[Perm]:
    return set().union(*(granted(r) for r in roles))


def granted(role: dict) -> set[Perm]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def client_calls(sources: Iterable[Path]) -> dict[Perm, list[str]]:
    """(group, resource, verb) → where in the code it is used."""
    uses: dict[Perm, list[str]] = {}
    for path in sources:
        lines = path.read_text().splitlines()
        for lineno, line in enumerate(lines, 1):
            for verb, resource in CLIENT_CALL.findall(line):
                if resource not in RESOURCES:
                    continue  # e.g. `.get_running_loop`, `.delete_with_job`
                group, plural = RESOURCES[resource]
                # Kueue's objects: custom-object calls whose arguments (this line and the next few) name
                # kueue.GROUP; the plural is the first of kueue's plural constants there
                call = " ".join(lines[lineno - 1 : lineno + 6])
                if "custom_object" in resource and "kueue.GROUP" in call:
                    found = {
                        m.start(): KUEUE_PLURALS[c]
                        for c in KUEUE_PLURALS
                        for m in re.finditer(rf"{c}\b", call)
                    }
                    assert found, f"{path.name}:{lineno}: a Kueue call without one of {list(KUEUE_PLURALS)}"
                    plural = found[min(found)]
                    group = "kueue.x-k8s.io"
                    if resource == "custom_object_status":
                        plural += "/status"
                # the custom-objects API says `get_`, the typed APIs say `read_`
                perm = (group, plural, VERBS.get(verb, verb))
                uses.setdefault(perm, []).append(f"{path.name}:{lineno}")
    return uses


def _kopf_resource(call: ast.Call) -> tuple[str, str] | None:
    """(group, plural) of a kopf decorator call such as kopf.on.event(GROUP, VERSION, PLURAL)."""
    args = [a for a in call.args]
    if len(args) < 3:
        return None

    def value(node: ast.expr) -> str:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name):  # GROUP, PLURAL from finetune_api.models
            import finetune_api.models as models

            return str(getattr(models, node.id))
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "kueue":
            import finetune_operator.kueue as kueue_module  # kueue.GROUP, kueue.PLURAL

            return str(getattr(kueue_module, node.attr))
        raise AssertionError(f"cannot read kopf decorator argument {ast.dump(node)}")

    group = value(args[0])
    return ("" if group in ("", "v1") else group, value(args[2]))


def kopf_needs(sources: Iterable[Path]) -> dict[Perm, list[str]]:
    uses: dict[Perm, list[str]] = {}
    posts_events = False
    for path in sources:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for deco in node.decorator_list:
                if not isinstance(deco, ast.Call):
                    continue
                name = ast.unparse(deco.func)
                if not name.startswith("kopf."):
                    continue
                posts_events = True
                resource = _kopf_resource(deco)
                if resource is None:
                    continue  # startup, probe: no resource
                where = f"{path.name}:{deco.lineno} @{name}"
                for verb in ("list", "watch"):
                    uses.setdefault((*resource, verb), []).append(where)
                if name != "kopf.on.event":
                    # daemons and change handlers: kopf patches its finalizer + annotations on the object
                    uses.setdefault((*resource, "patch"), []).append(where)
    if posts_events:
        uses.setdefault(("", "events", "create"), []).append("kopf posts handler warnings as Events")
    return uses


def role_grants() -> dict[Perm, list[str]]:
    """What the per-job trainer Role grants: the operator must hold it to be allowed to grant it."""
    job = parse_job(yaml.safe_load(MINIMAL_JOB.read_text()), "minimal")
    job.metadata.namespace = "ns"
    role = builders.build_role(job, "uid")
    return {perm: ["builders.build_role (RBAC: grant only what you hold)"] for perm in granted(role)}


def owner_reference_needs() -> dict[Perm, list[str]]:
    job = parse_job(yaml.safe_load(MINIMAL_JOB.read_text()), "minimal")
    ref = builders.owner_reference(job, "uid")
    if not ref.get("blockOwnerDeletion"):
        return {}
    return {
        ("finetune.dev", "finetunejobs/finalizers", "update"): [
            "builders.owner_reference blockOwnerDeletion (OwnerReferencesPermissionEnforcement)"
        ]
    }


def kopf_observer_needs(sources: Iterable[Path], clusterwide: bool) -> dict[Perm, list[str]]:
    """kopf's observers (unless the operator sets settings.scanning.disabled): it watches CRDs always, and
    lists/watches namespaces when it serves namespace patterns rather than the whole cluster."""
    if any(re.search(r"scanning\.disabled\s*=\s*True", p.read_text()) for p in sources):
        return {}
    where = ["kopf._core.reactor.observation (scanning enabled)"]
    out: dict[Perm, list[str]] = {
        ("apiextensions.k8s.io", "customresourcedefinitions", verb): where for verb in ("list", "watch")
    }
    if not clusterwide:
        out.update({("", "namespaces", verb): where for verb in ("list", "watch")})
    return out


def needed(clusterwide: bool = True) -> dict[Perm, list[str]]:
    sources = sorted(OPERATOR_SRC.glob("*.py"))
    out: dict[Perm, list[str]] = {}
    parts = (
        client_calls(sources),
        kopf_needs(sources),
        kopf_observer_needs(sources, clusterwide),
        role_grants(),
        owner_reference_needs(),
    )
    for part in parts:
        for perm, where in part.items():
            out.setdefault(perm, []).extend(where)
    return out


def test_the_code_scan_finds_the_operator_calls() -> None:
    # Guard against a scan that silently finds nothing (e.g. the module moved): these are certain.
    need = needed()
    assert ("", "pods", "create") in need
    assert ("finetune.dev", "finetunejobs/status", "patch") in need
    assert ("finetune.dev", "finetunejobs", "watch") in need


SCOPES = {"cluster-wide": ([], True), "namespaced": (["--set", "operator.watchNamespaces={a,b}"], False)}


@pytest.mark.parametrize("scope", list(SCOPES))
def test_every_granted_permission_is_used(helm: str, scope: str) -> None:
    values, clusterwide = SCOPES[scope]
    unused = granted_all(operator_roles(template(helm, *values))) - needed(clusterwide).keys()
    assert not unused, f"the chart grants permissions the operator never uses: {sorted(unused)}"


@pytest.mark.parametrize("scope", list(SCOPES))
def test_every_used_permission_is_granted(helm: str, scope: str) -> None:
    values, clusterwide = SCOPES[scope]
    need = needed(clusterwide)
    missing = {
        perm: need[perm] for perm in need.keys() - granted_all(operator_roles(template(helm, *values)))
    }
    assert not missing, f"the operator uses permissions the chart does not grant: {missing}"


#: What a namespaced install may still grant cluster-wide: reads of cluster-scoped objects.
CLUSTER_SCOPED_READS = {
    ("", "nodes", "get"),
    ("", "nodes", "list"),  # the operator's node cache (a watch; nodes are cluster-scoped)
    ("", "nodes", "watch"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
    ("", "namespaces", "list"),
    ("", "namespaces", "watch"),
    ("kueue.x-k8s.io", "workloadpriorityclasses", "get"),  # Kueue: a job's priority class value
    ("kueue.x-k8s.io", "resourceflavors", "get"),  # Kueue: the admitted flavors' node labels, tolerations
}


def test_namespaced_install_writes_only_in_its_namespaces(helm: str) -> None:
    objects = template(helm, "--set", "operator.watchNamespaces={a,b}")
    (cluster_role,) = [o for o in operator_roles(objects) if o["kind"] == "ClusterRole"]
    assert granted(cluster_role) <= CLUSTER_SCOPED_READS, granted(cluster_role) - CLUSTER_SCOPED_READS
    sa = one([o for o in objects if not is_hook(o)], "ServiceAccount")["metadata"]["name"]
    roles = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objects if o["kind"] == "Role"}
    bindings = [o for o in objects if o["kind"] == "RoleBinding" and not is_hook(o)]
    writes = {
        perm
        for perm in needed(clusterwide=False)
        if perm[2] in ("create", "delete", "patch", "update") and perm[1] != "leases"
    }
    for ns in ("a", "b"):
        (binding,) = [b for b in bindings if b["metadata"]["namespace"] == ns]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": "fto-system"}]
        assert binding["roleRef"]["kind"] == "Role"
        role = roles[(ns, binding["roleRef"]["name"])]
        assert writes <= granted(role), writes - granted(role)
    # Anything else namespaced is the leader Lease in the release namespace (hook objects are the hook's).
    others = [
        o
        for o in operator_roles(objects)
        if o["kind"] == "Role" and o["metadata"]["namespace"] not in ("a", "b")
    ]
    assert [o["metadata"]["namespace"] for o in others] == ["fto-system"]
    assert {p[1] for p in granted(others[0])} == {"leases"}
    cluster_bindings = [o for o in objects if o["kind"] == "ClusterRoleBinding" and not is_hook(o)]
    assert [b["roleRef"]["name"] for b in cluster_bindings] == [cluster_role["metadata"]["name"]]


@pytest.mark.parametrize("scope", list(SCOPES))
def test_uninstall_hook_can_only_release_finalizers(helm: str, scope: str) -> None:
    values, clusterwide = SCOPES[scope]
    objects = template(helm, *values)
    hook_roles = [o for o in objects if o["kind"] in ("ClusterRole", "Role") and is_hook(o)]
    perms = granted_all(hook_roles)
    assert perms == {
        ("", "pods", "list"),
        ("", "pods", "patch"),
        ("finetune.dev", "finetunejobs", "list"),
        ("finetune.dev", "finetunejobs", "patch"),
        ("coordination.k8s.io", "leases", "get"),
        ("coordination.k8s.io", "leases", "create"),
        ("coordination.k8s.io", "leases", "update"),
    }
    assert perms <= needed(clusterwide).keys()  # the code's own calls (release_all_finalizers, leader.py)
    if not clusterwide:
        assert not [o for o in hook_roles if o["kind"] == "ClusterRole"]


def test_rules_are_not_duplicated(helm: str) -> None:
    role = one(operator_roles(template(helm)), "ClusterRole")
    seen: set[Perm] = set()
    for rule in role["rules"]:
        perms = granted({"rules": [rule]})
        assert not perms & seen, f"rule repeats a grant: {rule}"
        seen |= perms
        assert "resourceNames" not in rule  # cluster-wide operator: names are not known in advance


@pytest.mark.cluster
def test_namespaced_install_on_the_apiserver(helm: str, kube: Kube, tmp_path: Path) -> None:
    """The namespaced chart's RBAC applied to the real apiserver: the operator's account may create pods,
    ConfigMaps, Roles, RoleBindings and ServiceAccounts in its watched namespace and nowhere else."""
    suffix = uuid.uuid4().hex[:5]
    release_ns, watched, other = (f"t-rbac-{kind}-{suffix}" for kind in ("op", "jobs", "other"))
    release = f"rbac-{suffix}"
    objects = [
        o
        for o in template(
            helm, "--set", f"operator.watchNamespaces={{{watched}}}", release=release, namespace=release_ns
        )
        if o["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
        and not is_hook(o)
    ]
    sa = one(objects, "ServiceAccount")["metadata"]["name"]
    lease = f"{release}-finetune-operator-leader"
    for ns in (release_ns, watched, other):
        kube.kubectl("create", "namespace", ns)
    manifest = tmp_path / "rbac.yaml"
    manifest.write_text("\n---\n".join(yaml.safe_dump(o) for o in objects))
    try:
        kube.kubectl("apply", "-f", str(manifest))

        def can(*args: str) -> bool:
            r = kube.kubectl(
                "auth", "can-i", *args, f"--as=system:serviceaccount:{release_ns}:{sa}", check=False
            )
            answer = r.stdout.strip()
            assert answer in ("yes", "no"), (args, r.stdout, r.stderr)
            return answer == "yes"

        for verb, resource in [
            ("create", "pods"),
            ("delete", "pods"),
            ("create", "configmaps"),
            ("create", "roles"),
            ("create", "rolebindings"),
            ("create", "serviceaccounts"),
            ("patch", "finetunejobs.finetune.dev"),
        ]:
            assert can(verb, resource, "-n", watched), (verb, resource, watched)
            assert not can(verb, resource, "-n", other), (verb, resource, other)
            assert not can(verb, resource, "-n", release_ns), (verb, resource, release_ns)
        assert not can("list", "pods", "--all-namespaces")
        assert not can("get", "secrets", "-n", watched)
        assert can("get", "nodes")
        assert can("watch", "customresourcedefinitions.apiextensions.k8s.io")
        assert can("update", f"leases.coordination.k8s.io/{lease}", "-n", release_ns)
        assert not can("update", "leases.coordination.k8s.io/kube-scheduler", "-n", "kube-system")
    finally:
        for o in objects:
            if o["kind"].startswith("Cluster"):
                kube.kubectl(
                    "delete", o["kind"].lower(), o["metadata"]["name"], "--ignore-not-found", check=False
                )
        for ns in (release_ns, watched, other):
            kube.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found", check=False)

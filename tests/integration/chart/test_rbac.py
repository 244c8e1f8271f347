"""The chart's ClusterRole is exactly what the operator's code needs: no rule or verb without a use, no use
without a rule.

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
from collections.abc import Iterable
from pathlib import Path

import pytest
import yaml
from finetune_api.trainer_config import parse_job
from finetune_operator import builders

from .helm import REPO_ROOT, one, template

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
    "custom_object_status": ("finetune.dev", "finetunejobs/status"),
}
CLIENT_CALL = re.compile(
    r"\.(create|read|list|patch|replace|delete|get)_(?:namespaced_)?([a-z_]+?)(?:_for_all_namespaces)?\b"
)


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
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            for verb, resource in CLIENT_CALL.findall(line):
                if resource not in RESOURCES:
                    continue  # e.g. `.get_running_loop`, `.delete_with_job`
                group, plural = RESOURCES[resource]
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
    role = one(template(helm, *values), "ClusterRole")
    unused = granted(role) - needed(clusterwide).keys()
    assert not unused, f"ClusterRole grants permissions the operator never uses: {sorted(unused)}"


@pytest.mark.parametrize("scope", list(SCOPES))
def test_every_used_permission_is_granted(helm: str, scope: str) -> None:
    values, clusterwide = SCOPES[scope]
    role = one(template(helm, *values), "ClusterRole")
    need = needed(clusterwide)
    missing = {perm: need[perm] for perm in need.keys() - granted(role)}
    assert not missing, f"the operator uses permissions the ClusterRole lacks: {missing}"


def test_rules_are_not_duplicated(helm: str) -> None:
    role = one(template(helm), "ClusterRole")
    seen: set[Perm] = set()
    for rule in role["rules"]:
        perms = granted({"rules": [rule]})
        assert not perms & seen, f"rule repeats a grant: {rule}"
        seen |= perms
        assert "resourceNames" not in rule  # cluster-wide operator: names are not known in advance

"""The packages' dependencies point one way: the API depends on none of the others; the operator, the trainer
and the observability generator depend on the API and never on each other (the trainer image ships without
the operator, and the operator image without the trainer). Read from the source's imports, not from what
happens to be importable, so a lazy import inside a function counts too."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PACKAGES = {
    "finetune_api": REPO / "api" / "finetune_api",
    "finetune_operator": REPO / "operator" / "finetune_operator",
    "finetune_observability": REPO / "operator" / "finetune_observability",
    "finetune_trainer": REPO / "trainer-image" / "finetune_trainer",
}

ALLOWED = {
    "finetune_api": set(),
    "finetune_operator": {"finetune_api"},
    "finetune_observability": {"finetune_api"},
    "finetune_trainer": {"finetune_api"},
}


def project_imports(package_dir: Path, root: Path = REPO) -> dict[str, set[str]]:
    """Project packages imported by each module of `package_dir` (relative imports stay inside: skipped)."""
    found: dict[str, set[str]] = {}
    for path in sorted(package_dir.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(root))] = names & set(PACKAGES)
    return found


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_package_imports_only_what_the_layering_allows(package: str) -> None:
    imports = project_imports(PACKAGES[package])
    assert imports, f"no modules found under {PACKAGES[package]}"
    wrong = {module: sorted(names - ALLOWED[package] - {package}) for module, names in imports.items()}
    assert not {m: n for m, n in wrong.items() if n}, f"{package} may import only {sorted(ALLOWED[package])}"


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The reader catches both import forms, including one inside a function."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    source = "def f():\n    from finetune_operator.names import x\n    import finetune_trainer.cli\n"
    (pkg / "a.py").write_text(source)
    assert project_imports(pkg, tmp_path) == {"pkg/a.py": {"finetune_operator", "finetune_trainer"}}

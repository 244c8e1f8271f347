"""Grafana's own dashboard schema as a check: build `grafana-schema-check` (a small Go program in
tests/harness/grafana-schema-check on the grafana-foundation-sdk's generated dashboard and panel types)
and run it.

The binary is cached under ~/.cache/finetune-operator/tools/ (or $FTO_CACHE/tools), keyed by its sources and
the Go version, like the project's other built tools: the first build downloads the SDK through the Go module
proxy and compiles for about 1.5 minutes on 2 cores; later runs find it at once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("grafana-schema-check")
NAME = "grafana-schema-check"


class ToolUnavailable(RuntimeError):
    """The checker cannot be built here (no Go toolchain, or the module cannot be downloaded)."""


def _cache_root() -> Path:
    return Path(os.environ.get("FTO_CACHE", os.path.expanduser("~/.cache/finetune-operator"))) / "tools"


def _go() -> str:
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        raise ToolUnavailable("no Go toolchain (`go`) to build grafana-schema-check")
    return go


def binary(timeout: float = 900) -> Path:
    """The checker's path, built first if this version is not in the cache."""
    go = _go()
    version = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=True).stdout
    digest = hashlib.sha256(version.encode())
    for name in ("go.mod", "go.sum", "main.go"):
        digest.update((SOURCE / name).read_bytes())
    root = _cache_root()
    target = root / f"{NAME}-{digest.hexdigest()[:12]}" / NAME
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "GOPATH": str(root / "go"),
        "GOMODCACHE": str(root / "go" / "pkg" / "mod"),
        "GOCACHE": str(root / "go-build"),
        "GOTOOLCHAIN": "local",
        "GOFLAGS": "-mod=readonly -buildvcs=false",
        "CGO_ENABLED": "0",
    }
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    r = subprocess.run(
        [go, "build", "-o", str(partial), "."],
        cwd=SOURCE,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if r.returncode != 0:
        raise ToolUnavailable(f"`go build` of {SOURCE} failed:\n{(r.stdout + r.stderr)[-3000:]}")
    partial.replace(target)  # atomic: a concurrent build of the same sources writes the same bytes
    return target


def check(tool: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    """Run the checker on dashboard JSON files: returncode 0 = all match Grafana's schema."""
    return subprocess.run(
        [str(tool), *map(str, files)], capture_output=True, text=True, timeout=60, check=False
    )

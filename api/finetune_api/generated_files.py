"""Committed files generated from code (the CRD, the dashboard, the alert rules): write them, or check them.

`finetune-crd` and `finetune-observability` share this, so `--write` and `--check` behave the same for both.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path


def sync(root: Path, outputs: Mapping[Path, str], *, write: bool, command: str) -> int:
    """Write each of `outputs` (path relative to `root` → text) that differs, or, without `write`, name the
    ones that differ on stderr and return 1 (0 when all are current)."""
    stale = []
    for relative, text in outputs.items():
        path = root / relative
        if path.exists() and path.read_text() == text:
            continue
        if write:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {relative}")
        else:
            stale.append(str(relative))
    if stale:
        print(f"out of date (run `{command} --write`): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0

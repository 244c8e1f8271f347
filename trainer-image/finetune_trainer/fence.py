"""Fencing for shared volumes: a trainer of an older attempt never changes what a newer attempt owns.

On a ReadWriteMany volume a partitioned node's trainer may keep running after the operator replaced it, and
when the node returns it starts an emergency save into the same directory. So each attempt records itself in
`DIR/ATTEMPT.json` (`--attempt N`, the pod's name, the time; written atomically) at start, before it changes
anything on the volume, and checks that file again right before each change that matters: writing a
checkpoint, its commit marker, retention (which deletes), removing or setting aside checkpoints at start, and
publishing final/. Finding a NEWER attempt there raises `Superseded` (exit 73, reason "Superseded"); a lower
number is simply replaced at the claim, an equal one is this attempt itself.

What it does not cover: the time between a check and the work that follows it (after the check before a
save: removing a leftover, retention-before-save and the save's files, as long as a save takes — the marker
is checked again, so that checkpoint stays uncommitted; after the checks before the marker, retention and the
final/ rename: one step), and NFS attribute/data caching, which may serve a stale ATTEMPT.json for up to
`acregmax` seconds (opening the file makes an NFS client revalidate it under close-to-open consistency, but
not every server or mount option honours that). Without `--attempt` (manual runs) the fence is off.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_api.contract import ATTEMPT_MARKER

from finetune_trainer.checkpoints import atomic_write_json, now_rfc3339


class Superseded(Exception):
    """A newer attempt claimed the output directory: stop without changing anything on it."""

    def __init__(self, attempt: int, newer: dict[str, Any] | None, before: str, path: Path):
        self.attempt = attempt
        self.newer = newer
        self.before = before
        if newer is not None:
            pod, since = newer.get("pod", "?"), newer.get("time", "?")
            who = f"attempt {newer.get('attempt')} (pod {pod}, since {since})"
        else:
            who = "a newer attempt (seen by another rank)"
        super().__init__(
            f"superseded: {path} now belongs to {who}; this is attempt {attempt}, stopping before {before} "
            "without changing anything there"
        )


def pod_name() -> str:
    return os.environ.get("POD_NAME") or os.environ.get("HOSTNAME") or socket.gethostname()


@dataclass
class AttemptFence:
    """`claim()` once at start, `check(before)` right before each change that a newer attempt must not see."""

    output_dir: Path
    attempt: int | None  # None: off (a manual run without --attempt)
    pod: str = ""
    claimed: bool = False

    @property
    def path(self) -> Path:
        return self.output_dir / ATTEMPT_MARKER

    @property
    def on(self) -> bool:
        return self.attempt is not None

    def recorded(self) -> dict[str, Any] | None:
        """What ATTEMPT.json says now; None when it is missing or unreadable (never written torn: atomic)."""
        try:
            data = json.loads(self.path.read_text())
            int(data["attempt"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return dict(data)

    def newer(self) -> dict[str, Any] | None:
        """The record of a newer attempt, if one claimed the directory (one small read)."""
        if self.attempt is None:
            return None
        data = self.recorded()
        if data is not None and int(data["attempt"]) > self.attempt:
            return data
        return None

    def check(self, before: str, agree: Callable[[bool], bool] | None = None) -> None:
        """Raise Superseded when a newer attempt claimed the directory. `agree` (dist.any_rank) makes every
        rank reach the same verdict at a point all ranks pass."""
        if self.attempt is None:
            return
        newer = self.newer()
        found = newer is not None
        if agree is not None:
            found = agree(found)
        if found:
            raise Superseded(self.attempt, newer, before, self.output_dir)

    def claim(self) -> bool:
        """Record this attempt (unless a newer one is recorded: Superseded). Needs DIR to exist; returns
        whether the directory is claimed now. Later calls only check."""
        if self.attempt is None:
            return False
        if self.claimed:
            self.check("starting")
            return True
        if not self.output_dir.is_dir():
            return False
        self.check("starting")
        atomic_write_json(
            self.path, {"attempt": self.attempt, "pod": self.pod or pod_name(), "time": now_rfc3339()}
        )
        self.claimed = True
        return True

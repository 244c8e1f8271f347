"""Resume policy: which committed checkpoint this attempt continues from, chosen once.

`ResumePolicy.choose()` (cheap: no torch; right after the config checks) finds the candidate; `settle()`
(once the model has loaded, so a config error comes first) probes that it can be read back and decides what
no intact checkpoint means; `reject()` passes over a candidate the Trainer could not restore and hands out
the next older one. One search serves all three: candidates are looked up once, each checked once.

Modes (`--resume`): `auto` the newest committed checkpoint in DIR whose files match its marker, else
`--resume-from` (another run's checkpoint or run directory, read only), else a fresh start; `never` a fresh
start in a DIR holding no commit; PATH that checkpoint, no fallback. `NoIntactCheckpoint` (exit 65) when
committed ones exist, none is usable and the config does not say `on_no_intact_checkpoint: restart`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from finetune_api.contract import COMMIT_MARKER, DAMAGED_DIR, FINAL_DIR

from finetune_trainer import checkpoints as ckpt
from finetune_trainer import identity
from finetune_trainer.build import ConfigError
from finetune_trainer.fence import AttemptFence
from finetune_trainer.logs import log


class NoIntactCheckpoint(Exception):
    """Committed checkpoints exist and none can be resumed from (exit 65); the message names each one."""


class ResumePolicy:
    """The resume choice of one attempt; `newest` is the committed checkpoint the exit messages name."""

    def __init__(
        self,
        output_dir: Path,
        mode: str,
        resume_from: str | None,
        world_size: int,
        sections: dict[str, Any],
        final: dict[str, Any] | None,
    ):
        self.output_dir = output_dir
        self.mode = mode  # auto | never | PATH
        self.resume_from = resume_from
        self.world_size = world_size
        self.sections = sections  # the training-defining spec, for --resume-from's continuation check
        self.final = final  # DIR/final's marker when complete (read once, at start)
        self.search: ckpt.ResumeSearch | None = None  # the candidates, newest first; None: one was named
        self.source: Path | None = None  # --resume-from in use: the other run's directory or checkpoint
        self.source_differences: list[str] = []
        self.newest: ckpt.CommitRecord | None = None
        self.chosen: ckpt.CommitRecord | None = None

    # ------------------------------------------------------------------------- before the heavy imports

    def choose(self) -> ckpt.CommitRecord | None:
        """The candidate to resume from (None: start fresh); a config error or NoIntactCheckpoint here."""
        self.chosen = self._choose()
        if self.chosen is not None:
            self.check_world_size(self.chosen)
        return self.chosen

    def _choose(self) -> ckpt.CommitRecord | None:
        if self.mode == "never":
            # Any commit marker counts, intact or damaged: starting over would delete it (and with it,
            # evidence of the damage).
            existing = [p for _s, p in ckpt.list_checkpoints(self.output_dir) if (p / COMMIT_MARKER).exists()]
            if existing or self.final is not None:
                raise ConfigError(
                    f"--resume never: {self.output_dir} already holds committed checkpoints "
                    f"({', '.join(p.name for p in existing) or FINAL_DIR}); "
                    "use --resume auto or an empty directory"
                )
            return None
        if self.mode == "auto":
            self.search = ckpt.ResumeSearch(self.output_dir)
            found = self._next_candidate()
            if found is None and not self.search.damaged and self.resume_from:
                return self._from_source(Path(self.resume_from))
            return found
        path = Path(self.mode)
        try:
            record = ckpt.read_commit(path, verify_checksums=True)
        except ckpt.NotCommitted as error:
            raise ConfigError(f"--resume {self.mode}: not a committed checkpoint: {error}") from None
        except ckpt.CheckpointError as error:
            raise NoIntactCheckpoint(f"--resume {self.mode}: damaged: {error}; nothing was moved") from None
        log("resume_from", checkpoint=str(path), step=record.step, reason="--resume PATH")
        self.newest = record
        return record

    def _from_source(self, source: Path) -> ckpt.CommitRecord:
        """DIR has no committed checkpoint yet: continue from another run's. Read only: nothing there is set
        aside, deleted or retained; this run's own checkpoints go to DIR."""
        self.source = source
        if not source.is_dir():
            raise ConfigError(f"--resume-from {source}: no such directory on the checkpoint volume")
        if ckpt.checkpoint_step(source) is not None or (source / COMMIT_MARKER).exists():
            self.search = None  # one checkpoint named: no fallback to another, as --resume PATH
            try:
                record = ckpt.read_commit(source, verify_checksums=True)
            except ckpt.NotCommitted as error:
                raise ConfigError(f"--resume-from {source}: not a committed checkpoint: {error}") from None
            except ckpt.CheckpointError as error:
                raise NoIntactCheckpoint(
                    f"--resume-from {source}: damaged: {error}; nothing was moved"
                ) from None
        else:
            self.search = ckpt.ResumeSearch(source)
            found = self._next_candidate()
            if found is None:
                if self.search.damaged:
                    raise NoIntactCheckpoint(self._no_intact_message(self.search, source))
                raise ConfigError(
                    f"--resume-from {source}: no committed checkpoint there (a run directory's final/ is not "
                    "a checkpoint: it has no optimizer, scheduler or data position)"
                )
            record = found
        _, self.source_differences = identity.check_continuation(source, record, self.sections)
        log(
            "resume_from",
            checkpoint=str(record.path),
            step=record.step,
            reason="--resume-from: this run's directory has no committed checkpoint yet",
            same_spec=not self.source_differences,
            differences=self.source_differences or None,
        )
        self.newest = record
        return record

    def _next_candidate(self) -> ckpt.CommitRecord | None:
        """The next older committed checkpoint whose files match its marker (sizes and checksums), or None."""
        search = self.search
        assert search is not None
        seen = len(search.rejected)
        record = search.next()
        for item in search.rejected[seen:]:
            log(
                "checkpoint_skipped",
                level="warning",
                checkpoint=item.path.name,
                reason=item.why,
                damaged=item.committed,
            )
        if record is not None:
            log(
                "resume_from",
                checkpoint=record.name,
                step=record.step,
                marker_version=record.version,
                reason="newest committed checkpoint whose files match its marker"
                + (" (sizes and checksums)" if record.checksums else " (sizes: version-1 marker)"),
            )
        self.newest = record
        return record

    def check_world_size(self, record: ckpt.CommitRecord) -> None:
        missing = [name for name in ckpt.rng_files(self.world_size) if name not in record.files]
        if missing:
            raise ConfigError(
                f"--resume: {record.name} was written by a different number of processes (it lacks "
                f"{', '.join(missing)}); exact resume needs the same number ({self.world_size} now)"
            )

    # ------------------------------------------------------------------------- once the model has loaded

    def settle(self, on_no_intact_checkpoint: str) -> ckpt.CommitRecord | None:
        """Once the config has proven loadable (a config error comes first): pass over candidates that cannot
        be read back (restore probe), then decide what no intact checkpoint means."""
        from finetune_trainer.trainer import probe_restore

        resume = self.chosen
        while resume is not None:
            try:
                # A checkpoint that matches its marker but cannot be deserialised (a version-1 marker has no
                # checksums; a writer bug) is passed over here, before the Trainer is built.
                probe_restore(resume.path, self.world_size)
                break
            except ckpt.RestoreFailed as error:
                resume = self.reject(resume, f"restore probe: {error}")
        if resume is not None:
            return resume
        search = self.search
        if search is None or not search.damaged:
            log("resume_none", reason="no committed checkpoint")
            return None
        if self.source is not None:  # the other run's checkpoints are never set aside: fail, nothing moved
            raise NoIntactCheckpoint(self._no_intact_message(search, self.source))
        if on_no_intact_checkpoint != "restart":
            raise NoIntactCheckpoint(self._no_intact_message(search))
        log(
            "resume_none",
            level="warning",
            reason="none intact; on_no_intact_checkpoint is restart: starting over, damaged ones set aside",
            damaged=[item.path.name for item in search.damaged],
        )
        return None

    def reject(self, record: ckpt.CommitRecord, why: str) -> ckpt.CommitRecord | None:
        """Restoring `record` failed: note it and take the next older candidate (None when there is none)."""
        log("checkpoint_restore_failed", level="error", checkpoint=record.name, reason=why)
        if self.search is None:  # --resume PATH: the user chose this one; no silent fallback, nothing moved
            chosen = f"--resume-from {self.source}" if self.source else f"--resume {self.mode}"
            raise NoIntactCheckpoint(f"{chosen}: damaged: {why}; nothing was moved")
        self.search.reject(record, why)
        found = self._next_candidate()
        if found is not None:
            self.check_world_size(found)  # a different process count is a config error, not damage
        self.chosen = found
        return found

    def _no_intact_message(self, search: ckpt.ResumeSearch, source: Path | None = None) -> str:
        problems = "; ".join(f"{item.path.name}: {item.why}" for item in search.rejected)
        if source is not None:
            return f"--resume-from {source}: no intact checkpoint: {problems}. Nothing was deleted or moved"
        return (
            f"no intact checkpoint in {self.output_dir}: {problems}. Nothing was deleted or moved. "
            "To start over instead, set spec.checkpoint.onNoIntactCheckpoint: restart "
            f"(damaged checkpoints are then moved to {self.output_dir / DAMAGED_DIR}/)"
        )

    # ------------------------------------------------------------------------- once DIR is claimed (rank 0)

    def tidy(self, fence: AttemptFence, resume: ckpt.CommitRecord | None) -> None:
        """Damaged committed checkpoints passed over move to DIR/damaged/ (never deleted); uncommitted ones
        newer than the resume point are removed. Never in another run's directory (read only)."""
        if self.search is not None and self.search.damaged and self.source is None:
            fence.check("setting damaged checkpoints aside")
            for item, moved in ckpt.set_aside_all(self.search.damaged):
                log(
                    "checkpoint_set_aside",
                    level="warning",
                    checkpoint=item.path.name,
                    to=str(moved.relative_to(self.output_dir)),
                    reason=item.why,
                )
        fence.check("removing checkpoints newer than the resume point")
        # Resuming from another run: DIR has no committed checkpoint, only torn saves (if any) to clear.
        own_step = resume.step if resume and self.source is None else None
        stale = ckpt.remove_newer_than(self.output_dir, own_step)
        if stale:
            log(
                "removed_stale_checkpoints",
                checkpoints=[p.name for p in stale],
                resume_point=resume.name if resume else "fresh start",
                reason="newer than the resume point and not committed"
                + (" (or not chosen by --resume PATH)" if self.search is None else ""),
            )

"""Whose run a directory holds: `RUN.json`, the training fingerprint, and the checks that keep runs apart.

A run directory belongs to one run: the run id (the FineTuneJob's uid in a cluster) and the fingerprint of
the training-defining spec (the config's model, dataset, lora and training sections as given) are written
to `RUN.json` at its first start and into every checkpoint's commit marker. The trainer refuses (exit 78) a
directory that belongs to another run or to a different spec instead of resuming, finishing at once with, or
retaining another run's checkpoints. Continuing from another run is explicit (`--resume-from`) and allowed
across different specs only where the model and the LoRA shape match (the saved state must fit).
No torch here: this runs before the heavy imports, so a refusal comes in about a second.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_api.contract import CHECKPOINT_MOUNT, COMMIT_MARKER, FINAL_DIR, RUN_MARKER
from finetune_api.trainer_config import TrainerConfig

from finetune_trainer import checkpoints as ckpt
from finetune_trainer.build import ConfigError

RUN_MARKER_VERSION = 1
#: The config sections whose values change the trained adapter.
SECTIONS = ("model", "dataset", "lora", "training")
#: Fields the saved state's shapes depend on: a continuation (--resume-from) across specs needs them equal.
SHAPE_FIELDS = {
    "model": ("name_or_path", "revision"),
    "lora": ("r", "target_modules", "bias", "task_type"),
}
FRESH = "fresh"


def spec_sections(config: TrainerConfig) -> dict[str, Any]:
    """The training-defining sections as JSON values (defaults filled in: 'as given' = 'as stored')."""
    return {name: getattr(config, name).model_dump(mode="json") for name in SECTIONS}


def _canonical(sections: dict[str, Any]) -> dict[str, Any]:
    """Per-device batch and accumulation count as their product: the operator's CUDA-OOM adaptation (half the
    batch, double the accumulation) keeps the effective batch, so an adapted attempt is the same run."""
    out = json.loads(json.dumps(sections))
    training = out.get("training") or {}
    if "per_device_train_batch_size" in training and "gradient_accumulation_steps" in training:
        batch = training.pop("per_device_train_batch_size")
        accumulation = training.pop("gradient_accumulation_steps")
        training["effective_train_batch_size"] = batch * accumulation
    return out


def fingerprint(sections: dict[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of the training-defining sections."""
    text = json.dumps(_canonical(sections), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def differences(
    old: dict[str, Any], new: dict[str, Any], only: dict[str, tuple[str, ...]] | None = None
) -> list[str]:
    """'field: old → new' for every field that differs (dotted paths; `only` limits it to those fields)."""
    left, right = _flatten(_canonical(old)), _flatten(_canonical(new))
    out = []
    for key in sorted(set(left) | set(right)):
        section, _, name = key.partition(".")
        if only is not None and name.split(".")[0] not in only.get(section, ()):
            continue
        if left.get(key, "(unset)") != right.get(key, "(unset)"):
            out.append(f"{key}: {_show(left.get(key, '(unset)'))} → {_show(right.get(key, '(unset)'))}")
    return out


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def claim_relative(path: str | Path) -> str:
    """A path on the checkpoint claim as a later job names it in spec.checkpoint.resumeFrom."""
    text = str(path)
    prefix = CHECKPOINT_MOUNT.rstrip("/") + "/"
    return text[len(prefix) :] if text.startswith(prefix) else text


@dataclass
class RunIdentity:
    run_id: str
    fingerprint: str
    sections: dict[str, Any] = field(default_factory=dict)
    job: dict[str, str] | None = None
    created_at: str = ""
    started_from: str = FRESH

    def describe(self) -> str:
        who = f"run {self.run_id}"
        if self.job:
            who += f" (job {self.job.get('namespace')}/{self.job.get('name')}"
            who += f", created {self.created_at})" if self.created_at else ")"
        return who

    def to_json(self) -> dict[str, Any]:
        return {
            "version": RUN_MARKER_VERSION,
            "run_id": self.run_id,
            "job": self.job,
            "fingerprint": self.fingerprint,
            "created_at": self.created_at,
            "started_from": self.started_from,
            "spec": self.sections,
        }


def read_identity(run_dir: str | Path) -> RunIdentity | None:
    """RUN.json of a run directory; None when there is none (a new directory, or one from before RUN.json)."""
    path = Path(run_dir) / RUN_MARKER
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return RunIdentity(
            run_id=str(data["run_id"]),
            fingerprint=str(data["fingerprint"]),
            sections=dict(data.get("spec") or {}),
            job=data.get("job") or None,
            created_at=str(data.get("created_at") or ""),
            started_from=str(data.get("started_from") or FRESH),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ConfigError(
            f"{path}: unreadable ({error}); nothing was changed. It says whose run {run_dir} holds: "
            "repair or remove it by hand once you know"
        ) from None


def write_identity(run_dir: str | Path, identity: RunIdentity) -> None:
    ckpt.atomic_write_json(Path(run_dir) / RUN_MARKER, identity.to_json())


def _marker_owners(run_dir: Path) -> list[tuple[str, str | None, str | None]]:
    """(checkpoint name, run_id, fingerprint) from every commit marker in the directory (final/ too).
    Markers written before identities existed have neither field."""
    found = []
    dirs = [path for _step, path in ckpt.list_checkpoints(run_dir)] + [run_dir / FINAL_DIR]
    for path in dirs:
        marker = path / COMMIT_MARKER
        if not marker.is_file():
            continue
        try:
            data = json.loads(marker.read_text())
        except (OSError, ValueError):
            continue  # damage is the resume search's business; an unreadable marker names no owner
        if isinstance(data, dict):
            found.append((path.name, data.get("run_id"), data.get("fingerprint")))
    return found


ADVICE = (
    "nothing was changed. Give this run its own directory, or continue from that run explicitly with "
    "--resume-from (spec.checkpoint.resumeFrom)"
)


def check_run_directory(
    run_dir: str | Path, run_id: str | None, sections: dict[str, Any]
) -> RunIdentity | None:
    """Refuse (ConfigError) a directory whose RUN.json or commit markers belong to another run id or to a
    different training spec; return its RUN.json (None when it has none). Reads only."""
    root = Path(run_dir)
    mine = fingerprint(sections)
    existing = read_identity(root)
    if existing is not None:
        if run_id is not None and existing.run_id != run_id:
            changed = differences(existing.sections, sections) if existing.fingerprint != mine else []
            spec = f"; its spec differs: {', '.join(changed)}" if changed else " (same spec)"
            raise ConfigError(
                f"--output-dir {root} belongs to another run: {existing.describe()}, not {run_id}{spec}; "
                + ADVICE
            )
        if existing.fingerprint != mine:
            changed = differences(existing.sections, sections) or ["(fingerprints differ)"]
            raise ConfigError(
                f"--output-dir {root} holds {existing.describe()} started with a different training spec: "
                f"{', '.join(changed)}; " + ADVICE
            )
    markers = _marker_owners(root)
    owner = run_id or (existing.run_id if existing is not None else None) or recorded_run_id(markers)
    for name, marker_run, marker_fingerprint in markers:
        if marker_run is not None and owner is not None and marker_run != owner:
            raise ConfigError(
                f"--output-dir {root} belongs to another run: its {name} was written by run {marker_run}, "
                f"not {owner}; " + ADVICE
            )
        if marker_fingerprint is not None and marker_fingerprint != mine:
            raise ConfigError(
                f"--output-dir {root}: its {name} was written with a different training spec "
                f"(fingerprint {marker_fingerprint}, this one {mine}); " + ADVICE
            )
    return existing


def recorded_run_id(markers: list[tuple[str, str | None, str | None]]) -> str | None:
    """The run id the directory's commit markers name (newest first), for a directory without RUN.json."""
    return next((run for _name, run, _fp in markers if run is not None), None)


def run_id_of(run_dir: str | Path) -> str | None:
    """Without --run-id: the directory's own run id (RUN.json, else its markers); None for a new one."""
    existing = read_identity(run_dir)
    return existing.run_id if existing is not None else recorded_run_id(_marker_owners(Path(run_dir)))


def source_run_dir(path: Path) -> Path:
    """The run directory of a --resume-from target (a run directory, or one checkpoint-N in it)."""
    return path.parent if ckpt.checkpoint_step(path) is not None else path


def check_continuation(
    source: Path, record: ckpt.CommitRecord, sections: dict[str, Any]
) -> tuple[RunIdentity | None, list[str]]:
    """May this run continue from `record` (a committed checkpoint of the run in `source`)? Returns the
    source's identity and the fields that differ (empty: the same spec, an exact continuation). ConfigError
    when the model or the LoRA shape differ: the saved adapter and optimizer state would not fit."""
    identity = read_identity(source_run_dir(source))
    mine = fingerprint(sections)
    if record.fingerprint == mine or (identity is not None and identity.fingerprint == mine):
        return identity, []
    if identity is None:
        return None, ["(the source run has no RUN.json: model and LoRA shape not checked)"]
    shape = differences(identity.sections, sections, only=SHAPE_FIELDS)
    if shape:
        raise ConfigError(
            f"--resume-from {source}: {identity.describe()} has another model or LoRA shape: "
            f"{', '.join(shape)}; its adapter and optimizer state cannot continue under this spec. "
            "Nothing was changed"
        )
    return identity, differences(identity.sections, sections)

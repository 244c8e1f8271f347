"""Fake checkpoint files in the real formats (safetensors header, torch.save zip archives, JSON), no torch."""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

from finetune_trainer import checkpoints as ckpt


def write_safetensors(path: Path, n: int = 64) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * (4 * n))


def write_zip(path: Path, payload: bytes = b"x" * 300) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", payload)


def make_checkpoint(root: Path, step: int, world_size: int = 1, commit: bool = True) -> Path:
    """checkpoint-<step> with every file resume needs; committed unless `commit` is false."""
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    write_safetensors(path / "adapter_model.safetensors")
    (path / "adapter_config.json").write_text('{"r": 8}')
    for name in ("optimizer.pt", "scheduler.pt", "training_args.bin", *ckpt.rng_files(world_size)):
        write_zip(path / name)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if commit:
        ckpt.commit_checkpoint(path, world_size, started_at=None)
    return path

"""Checkpoint cost benchmark for finetune-trainer (a script, not a test).

Runs the real trainer CLI on a randomly initialised GPT-2 (the tiny one by default; wider/deeper with flags)
and reports, from its JSON log:
  * step time vs save time (save = HF write + verify + fsync + commit marker, as logged by the trainer)
  * training stall per checkpoint (wall gap across a save step minus the median step gap)
  * our save+commit latency vs a raw fsync'd write of the same bytes (same files, same directory)
  * commit overhead alone (verify + fsync + marker on an already-written checkpoint), with the CRC-32 of every
    file (marker version 2, now) and without it (version 1, before): the save latency before and after
  * checksum cost in seconds per GiB (crc32, the one used; sha256 and blake2b for comparison) and the
    resume-time verification of the newest checkpoint
  * checkpoint size by file

    OMP_NUM_THREADS=1 .venv/bin/python bench/trainer/bench_checkpoint.py --out bench/trainer/results-cpu.json
    python3 bench/trainer/bench_checkpoint.py --n-layer 12 --n-embd 768 --n-head 12 --steps 40 --save-steps 10

No hub access: the model is built from a config. Nothing here is asynchronous: saves block training.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
sys.path[:0] = [str(HERE.parents[2] / "trainer-image"), str(HERE.parents[2] / "api")]

from finetune_trainer import checkpoints as ckpt  # noqa: E402
from finetune_trainer import tiny  # noqa: E402


def build(workdir: Path, n_layer: int, n_embd: int, n_head: int, r: int, targets: list[str]) -> Path:
    tiny.build(workdir, examples=512)
    if (n_layer, n_embd, n_head) != (2, 64, 2):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(workdir / "model")
        model = tiny.build_model(len(tok), seed=0, n_layer=n_layer, n_embd=n_embd, n_head=n_head)
        shutil.rmtree(workdir / "model")
        model.save_pretrained(workdir / "model")
        tok.save_pretrained(workdir / "model")
    import yaml

    config = yaml.safe_load((workdir / "trainer-config.yaml").read_text())
    config["lora"]["r"] = r
    config["lora"]["target_modules"] = targets
    path = workdir / "bench-config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_trainer(config: Path, out: Path, steps: int, save_steps: int, batch: int) -> list[dict[str, Any]]:
    import yaml

    data = yaml.safe_load(config.read_text())
    data["training"].update(
        {
            "max_steps": steps,
            "save_steps": save_steps,
            "save_total_limit": 2,
            "per_device_train_batch_size": batch,
        }
    )
    config.write_text(yaml.safe_dump(data))
    log = out.parent / "trainer.log"
    cmd = [
        sys.executable,
        "-m",
        "finetune_trainer.cli",
        "--config",
        str(config),
        "--output-dir",
        str(out),
        "--termination-message-path",
        str(out.parent / "term"),
    ]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    with open(log, "wb") as fh:
        code = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    if code != 0:
        raise SystemExit(f"trainer exited {code}; see {log}")
    return events


def raw_write(src: Path, dst: Path) -> float:
    """Write the same files with plain write() + fsync each + fsync dir: the floor for a durable save."""
    blobs = {p.name: p.read_bytes() for p in src.iterdir() if p.is_file() and p.name != ckpt.COMMIT_MARKER}
    dst.mkdir()
    t0 = time.perf_counter()
    for name, data in blobs.items():
        with open(dst / name, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    ckpt.fsync_dir(dst)
    return time.perf_counter() - t0


def commit_only(src: Path, dst: Path, checksums: bool = True) -> float:
    """The commit protocol on an already-written checkpoint; `checksums=False` is the version-1 protocol
    (sizes only), i.e. the same code with the CRC-32 pass left out."""
    shutil.copytree(src, dst)
    (dst / ckpt.COMMIT_MARKER).unlink()
    os.sync()
    crc32 = ckpt.file_crc32
    if not checksums:
        ckpt.file_crc32 = lambda path: ""  # type: ignore[assignment]
    try:
        t0 = time.perf_counter()
        ckpt.commit_checkpoint(dst)
        return time.perf_counter() - t0
    finally:
        ckpt.file_crc32 = crc32  # type: ignore[assignment]


def checksum_seconds_per_gib(workdir: Path, mib: int) -> dict[str, float]:
    """Seconds per GiB of each candidate over a file in the page cache (best of 3): the CPU cost, which is
    what a commit pays for the files HF has just written."""
    path = workdir / "checksum-probe.bin"
    path.write_bytes(os.urandom(mib << 20))

    def digest(name: str) -> None:
        h = hashlib.new(name)
        with open(path, "rb") as fh:
            while chunk := fh.read(4 << 20):
                h.update(chunk)

    candidates = {
        "crc32": lambda: ckpt.file_crc32(path),
        "sha256": lambda: digest("sha256"),
        "blake2b": lambda: digest("blake2b"),
    }
    out = {}
    for name, fn in candidates.items():
        best = min(_timed(fn) for _ in range(3))
        out[name] = best * 1024 / mib
    path.unlink()
    return out


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def add_model_arguments(
    parser: argparse.ArgumentParser,
    *,
    n_layer: int,
    n_embd: int,
    n_head: int,
    lora_r: int,
    targets: str,
) -> None:
    """The model and LoRA shape flags every trainer benchmark takes (each with its own defaults)."""
    parser.add_argument("--n-layer", type=int, default=n_layer)
    parser.add_argument("--n-embd", type=int, default=n_embd)
    parser.add_argument("--n-head", type=int, default=n_head)
    parser.add_argument("--lora-r", type=int, default=lora_r)
    parser.add_argument("--targets", default=targets, help="comma-separated LoRA target modules")


def machine_and_model(args: argparse.Namespace) -> dict[str, Any]:
    """What a result was measured on: device, torch threads, model and LoRA shape."""
    import torch

    return {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
        "model": {
            "n_layer": args.n_layer,
            "n_embd": args.n_embd,
            "lora_r": args.lora_r,
            "targets": args.targets,
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser, n_layer=2, n_embd=64, n_head=2, lora_r=8, targets="c_attn")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--save-steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--checksum-mib", type=int, default=256, help="size of the checksum-speed probe file")
    parser.add_argument("--workdir", default=None, help="where to build and train (default: a temp dir)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fto-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    config = build(workdir, args.n_layer, args.n_embd, args.n_head, args.lora_r, args.targets.split(","))
    out = workdir / "run"
    shutil.rmtree(out, ignore_errors=True)
    events = run_trainer(config, out, args.steps, args.save_steps, args.batch)

    logs = {e["step"]: e for e in events if e.get("event") == "train_log" and "loss" in e}
    commits = [e for e in events if e.get("event") == "checkpoint_committed"]
    save_steps = {c["step"] for c in commits}
    step_times = [e["step_seconds"] for e in logs.values() if "step_seconds" in e]
    gaps = [logs[s]["ts"] - logs[s - 1]["ts"] for s in logs if s - 1 in logs and s - 1 not in save_steps]
    stalls = [
        logs[s + 1]["ts"] - logs[s]["ts"] - statistics.median(gaps)
        for s in sorted(save_steps)
        if s + 1 in logs
    ]
    newest = max(ckpt.committed_checkpoints(out), key=lambda r: r.step)
    raw = [raw_write(newest.path, workdir / f"raw-{i}") for i in range(3)]
    commit, commit_v1 = [], []
    for i in range(3):  # interleaved, so both see the same machine load
        commit.append(commit_only(newest.path, workdir / f"commit-{i}/checkpoint-{newest.step}"))
        commit_v1.append(commit_only(newest.path, workdir / f"v1-{i}/checkpoint-{newest.step}", False))
    verify = [_timed(lambda: ckpt.read_commit(newest.path, verify_checksums=True)) for _ in range(3)]
    per_gib = checksum_seconds_per_gib(workdir, args.checksum_mib)
    result = {
        **machine_and_model(args),
        "steps": args.steps,
        "save_steps": args.save_steps,
        "step_seconds_median": statistics.median(step_times),
        "save_seconds": [c["save_seconds"] for c in commits],
        "save_seconds_median": statistics.median(c["save_seconds"] for c in commits),
        "stall_seconds_per_checkpoint_median": statistics.median(stalls) if stalls else None,
        "raw_fsync_write_seconds_median": statistics.median(raw),
        "commit_only_seconds_median": statistics.median(commit),
        "commit_only_v1_no_checksums_seconds_median": statistics.median(commit_v1),
        "checksum_seconds_per_gib": per_gib,
        "resume_verify_seconds_median": statistics.median(verify),
        "checkpoint_bytes": newest.bytes,
        "files": dict(sorted(newest.files.items(), key=lambda kv: -kv[1])),
    }
    print(f"device {result['device']}, threads {result['threads']}, model {result['model']}")
    print(f"{'metric':56} {'value':>12}")
    rows = [
        ("median step time (s)", result["step_seconds_median"]),
        ("median save time: HF write + verify + fsync + commit (s)", result["save_seconds_median"]),
        ("median training stall per checkpoint (s)", result["stall_seconds_per_checkpoint_median"]),
        ("raw fsync'd write of the same bytes (s)", result["raw_fsync_write_seconds_median"]),
        ("commit only: verify + crc32 + fsync + marker (s)", result["commit_only_seconds_median"]),
        ("commit only, before (v1: no checksums) (s)", result["commit_only_v1_no_checksums_seconds_median"]),
        (
            "save time before (v1), = save - commit difference (s)",
            result["save_seconds_median"]
            - (result["commit_only_seconds_median"] - result["commit_only_v1_no_checksums_seconds_median"]),
        ),
        ("resume: verify sizes + checksums of newest (s)", result["resume_verify_seconds_median"]),
        ("crc32 (s/GiB, page cache)", per_gib["crc32"]),
        ("sha256 (s/GiB, for comparison)", per_gib["sha256"]),
        ("blake2b (s/GiB, for comparison)", per_gib["blake2b"]),
        ("save / step ratio", result["save_seconds_median"] / result["step_seconds_median"]),
        ("checkpoint bytes", newest.bytes),
    ]
    for name, value in rows:
        print(f"{name[:56]:56} {value:>12.4f}" if isinstance(value, float) else f"{name[:56]:56} {value:>12}")
    print(f"\n{'file':32} {'bytes':>12} {'share':>7}")
    for name, size in result["files"].items():
        print(f"{name:32} {size:>12} {100 * size / newest.bytes:>6.1f}%")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Synchronous vs background checkpoint saves, side by side in one run (a script, not a test).

Trains the same model (6x384 GPT-2, LoRA r=16 on c_attn,c_proj,c_fc by default: a ~7 MB checkpoint) with
the real trainer CLI, interleaving the modes so they see the same machine load:
  * no checkpoints (the baseline training time)
  * spec.checkpoint.backgroundSave false / true, a checkpoint every step and every 10 steps
  * with --object-store (issue 14): background saves that are also uploaded to a real S3 server (Versity
    Gateway on 127.0.0.1, tests/harness/object_store.py), every step and every 10 steps: the stall per
    checkpoint with the background upload against the same mode without it
and reports for each (median over --rounds rounds): training time and overhead against the baseline
(fraction of training time); the training stall per checkpoint (`blocked_seconds` the trainer logs: how long
training waited for the save; and the wall-clock gap across a save step minus a median step, as
bench_checkpoint.py measures it); the save latency (`save_seconds`: copy/write + verify + fsync + commit
marker) and a raw fsync'd write of the same bytes.

    OMP_NUM_THREADS=1 .venv/bin/python bench/trainer/bench_background_save.py \\
        --out bench/trainer/results-cpu-6x384-background.json
    OMP_NUM_THREADS=1 .venv/bin/python bench/trainer/bench_background_save.py --object-store \\
        --out bench/trainer/results-cpu-6x384-upload.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve()
sys.path[:0] = [str(HERE.parent), str(HERE.parents[2])]

from bench_checkpoint import add_model_arguments, build, machine_and_model, raw_write, run_trainer  # noqa: E402
from finetune_trainer import checkpoints as ckpt  # noqa: E402


def run_mode(
    config: Path,
    workdir: Path,
    name: str,
    background: bool,
    steps: int,
    save_steps: int,
    batch: int,
    object_store: dict[str, Any] | None = None,
):
    data = yaml.safe_load(config.read_text())
    data["background_save"] = background
    data["object_store"] = object_store
    mode_config = workdir / f"{name}.yaml"
    mode_config.write_text(yaml.safe_dump(data))
    out = workdir / name / "run"
    shutil.rmtree(out.parent, ignore_errors=True)
    out.parent.mkdir(parents=True)
    events = run_trainer(mode_config, out, steps, save_steps, batch)
    return out, events


def summarise(events: list[dict[str, Any]], baseline_gap: float | None) -> dict[str, Any]:
    logs = {e["step"]: e for e in events if e.get("event") == "train_log" and "loss" in e}
    commits = [e for e in events if e.get("event") == "checkpoint_committed"]
    uploads = [e for e in events if e.get("event") == "checkpoint_uploaded"]
    save_steps = {c["step"] for c in commits}
    steps = sorted(logs)
    gaps = {s: logs[s]["ts"] - logs[s - 1]["ts"] for s in steps if s - 1 in logs}
    plain = [g for s, g in gaps.items() if s - 1 not in save_steps]
    step_gap = statistics.median(plain) if plain else baseline_gap
    after_save = [gaps[s + 1] for s in sorted(save_steps) if s + 1 in gaps]
    result: dict[str, Any] = {
        # first logged step to last: the steps, the saves and everything in between
        "train_seconds": logs[steps[-1]]["ts"] - logs[steps[0]]["ts"],
        "checkpoints": len(commits),
        "step_gap_seconds_median": step_gap,
    }
    if commits:
        result.update(
            {
                "save_seconds_median": statistics.median(c["save_seconds"] for c in commits),
                "blocked_seconds_median": statistics.median(c["blocked_seconds"] for c in commits),
                "stall_from_step_gaps_seconds_median": (
                    statistics.median(after_save) - (step_gap or 0.0) if after_save and step_gap else None
                ),
                "background": all(c.get("background") for c in commits),
            }
        )
    if uploads:
        # an upload runs only for the newest commit it was offered: with a commit every step, fewer uploads
        result.update(
            {
                "uploads": len(uploads),
                "upload_seconds_median": statistics.median(u["seconds"] for u in uploads),
            }
        )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser, n_layer=6, n_embd=384, n_head=6, lora_r=16, targets="c_attn,c_proj,c_fc")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="repeat every mode; medians are reported")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument(
        "--object-store",
        action="store_true",
        help="also run background saves uploaded to a real S3 server on loopback (hack/objectstore, cached)",
    )
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fto-bench-bg-"))
    workdir.mkdir(parents=True, exist_ok=True)
    config = build(workdir, args.n_layer, args.n_embd, args.n_head, args.lora_r, args.targets.split(","))
    store = None
    if args.object_store:
        from tests.harness.object_store import ObjectStore

        store = ObjectStore(workdir / "s3")
        store.start()
        os.environ.update(store.env())
    rounds: list[dict[str, Any]] = []
    newest = None
    for round_index in range(args.rounds):  # every mode in every round, interleaved: all see the same load
        runs: dict[str, Any] = {}
        never = 10 * args.steps
        _, events = run_mode(config, workdir, "no-checkpoints", False, args.steps, never, args.batch)
        runs["no-checkpoints"] = summarise(events, None)
        baseline = runs["no-checkpoints"]
        for every in (1, 10):
            for background in (False, True):
                name = f"{'background' if background else 'synchronous'}-every-{every}"
                out, events = run_mode(config, workdir, name, background, args.steps, every, args.batch)
                runs[name] = summarise(events, baseline["step_gap_seconds_median"])
                runs[name]["overhead_fraction"] = runs[name]["train_seconds"] / baseline["train_seconds"] - 1
                newest = max(ckpt.committed_checkpoints(out), key=lambda r: r.step)
            if store is not None:
                name = f"background-every-{every}+upload"
                remote = store.config(prefix=f"bench/{name}/{round_index}")
                out, events = run_mode(config, workdir, name, True, args.steps, every, args.batch, remote)
                runs[name] = summarise(events, baseline["step_gap_seconds_median"])
                runs[name]["overhead_fraction"] = runs[name]["train_seconds"] / baseline["train_seconds"] - 1
                if not runs[name].get("uploads"):
                    raise SystemExit(f"{name}: no checkpoint was uploaded; see {out.parent}/trainer.log")
        rounds.append(runs)
    if store is not None:
        store.stop()
    runs = {name: _median_over(rounds, name) for name in rounds[0]}
    assert newest is not None
    raw = [raw_write(newest.path, workdir / f"raw-{i}") for i in range(5)]
    result = {
        **machine_and_model(args),
        "steps": args.steps,
        "checkpoint_bytes": newest.bytes,
        "raw_fsync_write_seconds_median": statistics.median(raw),
        "rounds": args.rounds,
        "runs": runs,
        "runs_by_round": rounds,
    }
    print(
        f"device {result['device']}, threads {result['threads']}, model {result['model']}, {newest.bytes} B"
    )
    print(f"raw fsync'd write of the same bytes: {result['raw_fsync_write_seconds_median']:.4f} s")
    header = (
        f"{'run':28} {'train s':>8} {'overhead':>9} {'blocked s':>10} {'gap stall s':>11} {'save s':>8}"
        f" {'uploads':>7} {'upload s':>8}"
    )
    print(header)
    for name, r in runs.items():
        cells = [
            f"{r['train_seconds']:8.2f}",
            f"{100 * r.get('overhead_fraction', 0.0):8.1f}%",
            _cell(r.get("blocked_seconds_median"), 10),
            _cell(r.get("stall_from_step_gaps_seconds_median"), 11),
            _cell(r.get("save_seconds_median"), 8),
            f"{r.get('uploads', '-'):>7}",
            _cell(r.get("upload_seconds_median"), 8),
        ]
        print(f"{name:28} " + " ".join(cells))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _median_over(rounds: list[dict[str, Any]], name: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in rounds[0][name].items():
        values = [r[name][key] for r in rounds if r[name].get(key) is not None]
        numeric = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        out[key] = statistics.median(numeric) if numeric and len(numeric) == len(values) else value
    return out


def _cell(value: float | None, width: int) -> str:
    return f"{value:{width}.4f}" if value is not None else " " * (width - 1) + "-"


if __name__ == "__main__":
    sys.exit(main())

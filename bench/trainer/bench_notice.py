"""SIGTERM → committed emergency checkpoint with gradient accumulation (a script, not a test; issue 13).

Trains a randomly initialised GPT-2 (12 layers x 768 by default, ~85M parameters with the tiny tokenizer's
vocabulary) with LoRA and gradient_accumulation_steps 8 on CPU, sends SIGTERM in the middle of an optimizer
step (right after step `--signal-after` is logged, so the next step's first micro-batch runs) and reads from
the trainer's log how long it took until the emergency checkpoint was committed. Twice, same model and data:

  * step_end:    a save deadline long enough to finish the step (what every stop did before: wait for the
                 optimizer step, then save);
  * micro_batch: a short save deadline (a short cloud notice) that the rest of the step, the save and the
                 margin do not fit in: the trainer stops at the next micro-batch and commits the last
                 completed step.

    OMP_NUM_THREADS=1 .venv/bin/python bench/trainer/bench_notice.py \
        --out bench/trainer/results-notice-cpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
sys.path[:0] = [str(HERE.parent), str(HERE.parents[2] / "trainer-image"), str(HERE.parents[2] / "api")]

from bench_checkpoint import add_model_arguments, build, machine_and_model  # noqa: E402


def events_of(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def run_once(
    config: Path, workdir: Path, tag: str, deadline: float, args: argparse.Namespace
) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(config.read_text())
    data["training"].update(
        {
            "max_steps": args.signal_after + 5,
            "save_steps": 1000,  # no periodic save: the emergency one is the first
            "per_device_train_batch_size": args.batch,
            "gradient_accumulation_steps": args.accumulation,
            "logging_steps": 1,
        }
    )
    data["save_deadline_seconds"] = deadline
    run_config = workdir / f"config-{tag}.yaml"
    run_config.write_text(yaml.safe_dump(data))
    out = workdir / f"run-{tag}"
    log = workdir / f"{tag}.log"
    cmd = [
        sys.executable,
        "-m",
        "finetune_trainer.cli",
        "--config",
        str(run_config),
        "--output-dir",
        str(out),
    ]
    cmd += ["--termination-message-path", str(workdir / f"{tag}.term")]
    env = dict(os.environ, PYTHONWARNINGS="ignore", PYTHONUNBUFFERED="1")
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        while not any(
            e.get("event") == "train_log" and e.get("step", 0) >= args.signal_after for e in events_of(log)
        ):
            if proc.poll() is not None:
                raise SystemExit(
                    f"trainer exited {proc.returncode} before step {args.signal_after}; see {log}"
                )
            time.sleep(0.02)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(600)
        exited = time.monotonic() - signalled
    events = events_of(log)
    steps = [e["step_seconds"] for e in events if e.get("event") == "train_log" and "step_seconds" in e]
    stop = next((e for e in events if e.get("event") == "preemption_stop"), {})
    commit = next((e for e in events if e.get("event") == "checkpoint_committed"), {})
    preempted = next((e for e in events if e.get("event") == "preempted"), {})
    return {
        "save_deadline_seconds": deadline,
        "exit_code": code,
        "step_seconds": steps,
        "stop_at": stop.get("at"),
        "stopped_step": stop.get("step"),
        "signal_to_stop_seconds": stop.get("seconds_since_signal"),
        "budget": {k: stop[k] for k in ("micro_batches_left", "needed_seconds", "seconds_left") if k in stop},
        "save_seconds": commit.get("save_seconds"),
        "checkpoint": commit.get("path", "").rsplit("/", 1)[-1] or None,
        "signal_to_committed_seconds": preempted.get("seconds_since_signal"),
        "signal_to_exit_seconds": round(exited, 3),
        "deadline_exceeded": any(e.get("event") == "save_deadline_exceeded" for e in events),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser, n_layer=12, n_embd=768, n_head=12, lora_r=16, targets="c_attn")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--accumulation", type=int, default=8)
    parser.add_argument("--signal-after", type=int, default=2, help="SIGTERM once this step is logged")
    parser.add_argument("--long-deadline", type=float, default=120.0, help="step_end run: time to finish")
    parser.add_argument("--short-deadline", type=float, default=5.0, help="micro_batch run: < one step")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fto-notice-"))
    workdir.mkdir(parents=True, exist_ok=True)
    config = build(workdir, args.n_layer, args.n_embd, args.n_head, args.lora_r, args.targets.split(","))
    from transformers import AutoModelForCausalLM

    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(workdir / "model").parameters())
    runs = {
        "step_end": run_once(config, workdir, "step-end", args.long_deadline, args),
        "micro_batch": run_once(config, workdir, "micro-batch", args.short_deadline, args),
    }
    described = machine_and_model(args)
    described["model"]["parameters"] = params
    result = {
        **described,
        "per_device_train_batch_size": args.batch,
        "gradient_accumulation_steps": args.accumulation,
        "signal": f"right after step {args.signal_after} is logged (first micro-batch of the next step)",
        "runs": runs,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/opt/venv/bin/python3
"""A stand-in for `finetune-trainer` (bench/scale --kind running): it trains nothing, it only sleeps and
keeps the trainer's contract toward the operator, so that many jobs can run on one small node.

- the CLI: the operator's arguments (builders.trainer_args: --config, --output-dir, --attempt, ...) are
  accepted; only --config, --output-dir and --termination-message-path are used.
- the config: the rendered TrainerConfig (JSON) the operator mounts: `job` (whose status to patch),
  `training.max_steps`, `training.save_steps`, `save_deadline_seconds`.
- status: merge patches to its own job's `status` subresource (the pod's ServiceAccount may get/patch only
  that), built with finetune_api.status.TrainerStatus as the real trainer's are: step/totalSteps/progress
  at start and after each step, stepsPerSecond and estimatedRemainingSeconds, lastCheckpoint at each
  "save". A failed report is logged and never stops it.
- a "checkpoint" is one small file, DIR/standin-checkpoint.json (its step): a restarted attempt continues
  from it, so resumed steps and lost steps look like a real run's.
- endings (finetune_api.contract): SIGTERM or SIGINT → a checkpoint at the current step, its status patch,
  the termination message (reason Preempted, save_in_time; and for the bench when it took the signal and
  how long it took until the message) and exit 75; max_steps reached → DIR/final/
  (one marker file), termination message reason Completed, exit 0. A config it cannot read → exit 78.

The step length is FTO_STANDIN_STEP_SECONDS (default 5; the job's spec.env sets it).

SIGTERM/SIGINT are blocked and taken with sigtimedwait, which is also the sleep between steps: a signal
ends the wait at once, and one arriving during a status patch is taken right after it (the patch has a
5 s read timeout), as the real trainer finishes its step before the emergency save.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

EXIT_SUCCEEDED, EXIT_PREEMPTED, EXIT_CONFIG_ERROR = 0, 75, 78  # finetune_api.contract
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
CHECKPOINT_FILE = "standin-checkpoint.json"


def log(event: str, **fields: Any) -> None:
    print(json.dumps({"time": datetime.now(UTC).isoformat(), "event": event, **fields}), flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="finetune-trainer", description="bench stand-in: sleeps, reports")
    parser.add_argument("--config", required=True)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--termination-message-path", default="/dev/termination-log")
    args, ignored = parser.parse_known_args(argv)  # --run-id, --resume, --attempt, ...: nothing to do
    args.ignored = ignored
    return args


class Run:
    """What the stand-in knows: its config, its output dir, where it is."""

    def __init__(self, config: dict[str, Any], output_dir: Path, step_seconds: float):
        training = config.get("training") or {}
        self.job = config.get("job")  # {namespace, name}; absent outside a cluster: no reports
        self.max_steps = int(training.get("max_steps") or 0)  # 0: until SIGTERM
        self.save_steps = int(training.get("save_steps") or 0)
        self.save_deadline_seconds = float(config.get("save_deadline_seconds") or 115.0)
        self.output_dir = output_dir
        self.step_seconds = step_seconds
        self.step = self.resumed_step()

    def resumed_step(self) -> int:
        try:
            return int(json.loads((self.output_dir / CHECKPOINT_FILE).read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def progress(self) -> dict[str, Any]:
        """The TrainerStatus fields of a step report (the real trainer's on_train_begin/on_log)."""
        fields: dict[str, Any] = {"step": self.step, "total_steps": self.max_steps or None}
        if self.max_steps:
            fields["progress"] = f"{self.step}/{self.max_steps}"
            remaining = max(0, self.max_steps - self.step) * self.step_seconds
            fields["estimated_remaining_seconds"] = round(remaining)
        fields["steps_per_second"] = float(f"{1.0 / self.step_seconds:.4g}")
        return fields

    def save(self) -> dict[str, Any]:
        """A 'checkpoint' at the current step; the TrainerStatus fields of its commit (empty if unwritten)."""
        started = time.monotonic()
        record = {"step": self.step, "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.output_dir / f"{CHECKPOINT_FILE}.tmp"
            tmp.write_text(json.dumps(record))
            tmp.replace(self.output_dir / CHECKPOINT_FILE)
        except OSError as error:
            log("save_failed", step=self.step, error=str(error)[:300])
            return {}
        seconds = round(time.monotonic() - started, 4)
        log("checkpoint_committed", step=self.step, save_seconds=seconds)
        path = str(self.output_dir / f"checkpoint-{self.step}")
        return {
            "last_checkpoint": {
                "step": self.step,
                "path": path,
                "time": record["time"],
                "save_seconds": seconds,
                "bytes": 0,
            },
            "last_checkpoint_step": self.step,
            "checkpoints": 1,
        }


def status_patcher(job: dict[str, Any] | None) -> Any:
    """A function sending a merge patch of TrainerStatus fields to the job's status (None: no cluster)."""
    if not job or not os.environ.get("KUBERNETES_SERVICE_HOST"):
        log("status_reporting_off")
        return lambda fields: None
    from finetune_api.models import GROUP, PLURAL, VERSION
    from finetune_api.status import TrainerStatus
    from kubernetes import client, config

    config.load_incluster_config()
    api = client.CustomObjectsApi()

    def patch(fields: dict[str, Any]) -> None:
        if not fields:
            return
        try:
            api.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                job["namespace"],
                PLURAL,
                job["name"],
                {"status": TrainerStatus.patch(**fields)},
                _request_timeout=(2.0, 5.0),
                _content_type="application/merge-patch+json",
            )
        except Exception as error:  # a report never stops the run
            log("status_report_failed", error=f"{type(error).__name__}: {error}"[:300])

    return patch


def write_termination(path: str, message: dict[str, Any]) -> None:
    try:
        Path(path).write_text(json.dumps({k: v for k, v in message.items() if v is not None}))
    except OSError as error:
        log("termination_message_failed", error=str(error))


def main(argv: list[str] | None = None) -> int:
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # first: taken by sigtimedwait below
    args = parse_args(argv)
    try:
        config = json.loads(Path(args.config).read_text())
        run = Run(config, Path(args.output_dir), float(os.environ.get("FTO_STANDIN_STEP_SECONDS", "5")))
    except (OSError, ValueError) as error:
        write_termination(args.termination_message_path, {"reason": "ConfigError", "message": str(error)})
        return EXIT_CONFIG_ERROR
    log("standin_start", step=run.step, max_steps=run.max_steps, ignored_args=args.ignored)
    patch = status_patcher(run.job)
    patch({"started_from": "fresh", **run.progress()})
    first_step = run.step
    while not run.max_steps or run.step < run.max_steps:
        taken = signal.sigtimedwait(STOP_SIGNALS, run.step_seconds)
        if taken is not None:
            since, taken_at = time.monotonic(), time.time()
            log("preempted", signal=signal.Signals(taken.si_signo).name, step=run.step)
            saved = run.save()
            patch(saved)  # the emergency checkpoint's report, as the real trainer flushes it before exiting
            write_termination(
                args.termination_message_path,
                {
                    "reason": "Preempted",
                    "step": run.step,
                    "checkpoint": f"checkpoint-{run.step}" if saved else None,
                    "checkpoint_step": run.step if saved else None,
                    "save_seconds": saved["last_checkpoint"]["save_seconds"] if saved else None,
                    "save_in_time": bool(saved),
                    "save_deadline_seconds": run.save_deadline_seconds,
                    "message": "SIGTERM before the first step" if run.step == first_step else None,
                    # the stand-in's own timing, for the bench (the message allows extra fields): when
                    # it took the signal (unix time) and how long its handling took until this message
                    "standin_signal_at": round(taken_at, 3),
                    "standin_seconds": round(time.monotonic() - since, 3),
                },
            )
            log("exit", exit_code=EXIT_PREEMPTED, seconds_since_signal=round(time.monotonic() - since, 3))
            return EXIT_PREEMPTED
        run.step += 1
        fields = run.progress()
        if run.save_steps and run.step % run.save_steps == 0:
            fields.update(run.save())
        patch(fields)
    final = run.output_dir / "final"
    try:
        final.mkdir(parents=True, exist_ok=True)
        (final / "STANDIN").write_text("written by the bench stand-in trainer: no adapter\n")
    except OSError as error:
        log("final_failed", error=str(error)[:300])
    completed = {"reason": "Completed", "step": run.step, "final": str(final)}
    write_termination(args.termination_message_path, completed)
    log("exit", exit_code=EXIT_SUCCEEDED, step=run.step)
    return EXIT_SUCCEEDED


if __name__ == "__main__":
    code = main()
    if code == EXIT_PREEMPTED:
        # as the real trainer (cli.py): all is written, skip the interpreter's teardown inside the notice
        sys.stdout.flush()
        os._exit(code)
    sys.exit(code)

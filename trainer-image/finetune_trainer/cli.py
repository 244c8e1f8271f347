"""`finetune-trainer`: the trainer pod's PID 1.

    finetune-trainer --config FILE --output-dir DIR [--resume auto|never|PATH]
                     [--run-id ID] [--resume-from PATH]
                     [--termination-message-path P] [--nproc-per-node N] [--attempt N]

DIR belongs to one run (DIR/RUN.json, identity.py): a DIR of another run id or another training spec is
refused with exit 78 and left as it was.

Exit codes (finetune_api.contract): 0 finished (DIR/final written), 75 stopped on SIGTERM after committing a
checkpoint, 76 CUDA out of memory, 78 config error, 65 committed checkpoints exist but none is intact
(nothing deleted; unless the config says `on_no_intact_checkpoint: restart`), 73 superseded (a newer
`--attempt` claimed DIR: nothing changed there after that), 1 other error. Every exit path
writes the termination message. Heavy imports (torch, transformers) happen after the signal handler is
installed and after the cheap config checks, so a bad config fails in about a second and a SIGTERM during
start-up exits 75 at once.

This module is the wiring: the arguments, the signal handler, the launcher for several processes, the exit.
The attempt itself is attempt.py; its endings and their exit codes exits.py; the resume choice resume.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from finetune_api.contract import EXIT_PREEMPTED

from finetune_trainer.attempt import Attempt
from finetune_trainer.exits import ExitProtocol
from finetune_trainer.logs import TerminationWriter, default_termination_path
from finetune_trainer.preemption import Preemption


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="finetune-trainer", description="Crash-safe LoRA fine-tuning (SFT)."
    )
    parser.add_argument("--config", required=True, help="FineTuneJob manifest or TrainerConfig (YAML/JSON)")
    parser.add_argument("--output-dir", required=True, help="checkpoint-N/ directories and final/ go here")
    parser.add_argument(
        "--resume",
        default="auto",
        help="auto: newest committed checkpoint in the output dir, else start fresh; never; or a checkpoint",
    )
    parser.add_argument(
        "--run-id",
        default=None,
        help="this run's id (the FineTuneJob's uid); DIR must be new or hold this run (default: DIR's own, "
        "else a new one)",
    )
    parser.add_argument(
        "--resume-from",
        default=None,
        help="with --resume auto, while DIR has no committed checkpoint: continue from this committed "
        "checkpoint, or from the newest intact one of this run directory (read only)",
    )
    parser.add_argument(
        "--termination-message-path",
        default=None,
        help="where to write the termination message (default: /dev/termination-log when writable)",
    )
    parser.add_argument(
        "--nproc-per-node",
        type=_positive,
        default=1,
        help="run N processes (one per GPU) under this process, which stays PID 1 and forwards SIGTERM",
    )
    parser.add_argument(
        "--attempt",
        type=_positive,
        default=None,
        help="this attempt's number (the operator's): recorded in DIR/ATTEMPT.json at start; a trainer that "
        "finds a newer one there stops (exit 73) before any commit, retention or deletion. Off when absent",
    )
    return parser.parse_args(argv)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _rank_info() -> tuple[int, int]:
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return rank, world


def main(argv: list[str] | None = None) -> int:
    preemption = Preemption()
    preemption.install()  # first: a SIGTERM during the imports below must already exit 75
    args = parse_args(argv)
    if args.nproc_per_node > 1 and "RANK" not in os.environ:
        from finetune_trainer.launcher import launch

        return launch(args.nproc_per_node, sys.argv[1:] if argv is None else argv, preemption)
    rank, world_size = _rank_info()
    path = args.termination_message_path or default_termination_path()
    exits = ExitProtocol(TerminationWriter(path if rank == 0 else None), preemption, Path(args.output_dir))
    preemption.on_early_exit = exits.early_exit_message
    attempt = Attempt(args, preemption, exits, rank, world_size)
    code = attempt.main()
    sys.stdout.flush()
    sys.stderr.flush()
    if code == EXIT_PREEMPTED:
        # Inside the notice every second counts and all is written: the checkpoint committed, the
        # termination message and the log flushed. The interpreter's teardown of a loaded model took 3-12 s
        # (2-core CPU VM, 85M-parameter GPT-2), during which the kubelet's SIGKILL would turn 75 into 137.
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())

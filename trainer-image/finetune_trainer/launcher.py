"""`finetune-trainer --nproc-per-node N`: run N ranks under one PID 1 that forwards SIGTERM to all of them.

Why not `accelerate launch`/`torchrun` as the container's command: their agent SIGKILLs the workers a fixed
30 s after SIGTERM (pytorch #119856), whatever the pod's grace period; and a worker error would otherwise be
seen by the kubelet only as the agent's exit code. Here each rank is `python -m finetune_trainer.cli` with
RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT set (torch.distributed's env:// rendezvous, which the HF
Trainer's accelerate state uses); all ranks agree on the stop step through an all-reduce, rank 0 commits.

Exit code: 76 if any rank ran out of CUDA memory, else the first failing rank's code, else rank 0's. The
termination message is rank 0's, or the deciding rank's when another rank decided the code.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from finetune_api.contract import EXIT_CUDA_OOM, EXIT_PREEMPTED, EXIT_SUCCEEDED

from finetune_trainer.logs import default_termination_path, log
from finetune_trainer.preemption import Preemption

# After one rank fails, the others would block in collectives: give them this long, then SIGKILL.
PEER_FAILURE_GRACE_SECONDS = 10.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _strip_nproc(argv: list[str]) -> tuple[list[str], str | None]:
    out: list[str] = []
    term: str | None = None
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--nproc-per-node":
            skip = True
            continue
        if arg.startswith("--nproc-per-node="):
            continue
        if arg == "--termination-message-path":
            term = argv[i + 1] if i + 1 < len(argv) else None
            skip = True
            continue
        if arg.startswith("--termination-message-path="):
            term = arg.split("=", 1)[1]
            continue
        out.append(arg)
    return out, term


def launch(nproc: int, argv: list[str], preemption: Preemption) -> int:
    args, term_path = _strip_nproc(list(argv))
    term_path = term_path or default_termination_path()
    tmpdir = Path(tempfile.mkdtemp(prefix="fto-ranks-"))
    port = _free_port()
    children: list[subprocess.Popen[bytes]] = []
    rank_terms: list[str | None] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        for child in children:
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    preemption.phase = "launcher"
    for rank in range(nproc):
        env = dict(os.environ)
        env.update(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(nproc),
            LOCAL_WORLD_SIZE=str(nproc),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        rank_term = term_path if rank == 0 else str(tmpdir / f"termination-{rank}")
        rank_terms.append(rank_term)
        cmd = [sys.executable, "-m", "finetune_trainer.cli", *args]
        if rank_term:
            cmd += ["--termination-message-path", rank_term]
        children.append(subprocess.Popen(cmd, env=env))
    log("launched", ranks=nproc, pids=[c.pid for c in children], master_port=port)

    first_failure: int | None = None
    failed_at: float | None = None
    while any(c.poll() is None for c in children):
        for rank, child in enumerate(children):
            code = child.poll()
            if code is not None and code not in (EXIT_SUCCEEDED, EXIT_PREEMPTED) and first_failure is None:
                first_failure, failed_at = rank, time.monotonic()
                log("rank_failed", level="error", rank=rank, exit_code=code)
        if failed_at is not None and time.monotonic() - failed_at > PEER_FAILURE_GRACE_SECONDS:
            for child in children:
                if child.poll() is None:
                    child.kill()
        time.sleep(0.1)
    codes = [c.returncode for c in children]
    deciding = 0
    if EXIT_CUDA_OOM in codes:
        deciding = codes.index(EXIT_CUDA_OOM)
    elif first_failure is not None:
        deciding = first_failure
    code = codes[deciding]
    if code < 0:  # killed by a signal
        code = 128 - code
    source = rank_terms[deciding]
    if deciding != 0 and source and term_path and os.path.exists(source):
        with contextlib.suppress(OSError):
            shutil.copyfile(source, term_path)
    shutil.rmtree(tmpdir, ignore_errors=True)
    log("ranks_exited", exit_codes=codes, exit_code=code, deciding_rank=deciding)
    return code

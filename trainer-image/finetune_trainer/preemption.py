"""SIGTERM (and SIGINT) handling for a trainer that runs as PID 1.

Before training starts (imports, model and dataset loading) a signal ends the process at once with exit 75:
nothing has been written yet, so nothing can be damaged. Once training runs, the handler only raises a flag;
the callbacks stop at the next step boundary (or right after a save in progress), commit a checkpoint
there and the CLI exits 75. With gradient accumulation a step can outlast the notice: at each micro-batch
`stop_at_micro_batch` compares the rest of the step plus the save with the time left before the deadline,
and when it does not fit training stops at once and commits the last completed step. A watchdog enforces
`save_deadline_seconds`: if the emergency checkpoint is not committed in time, the process exits 75 anyway,
pointing at the newest committed checkpoint, before the kubelet's SIGKILL would take the termination message
with it.

The handler itself never takes locks, logs or allocates much: the interrupted code may hold any lock.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from finetune_api.contract import EXIT_PREEMPTED

LOADING = "loading"
TRAINING = "training"
FINISHING = "finishing"

#: Kept free of the notice budget besides the save itself: the break out of the loop, the commit's barriers
#: and fsyncs, the termination message and the exit.
NOTICE_MARGIN_SECONDS = 1.0
#: A first save (none measured in this attempt yet) is estimated from its size at this write rate, plus a
#: fixed cost: slow network volumes write ~100-200 MB/s.
ESTIMATED_SAVE_BYTES_PER_SECOND = 100e6
ESTIMATED_SAVE_FIXED_SECONDS = 0.5


@dataclass(frozen=True)
class NoticeBudget:
    """One micro-batch decision after a signal: finish the optimizer step, or stop now."""

    micro_batches_left: int  # in this optimizer step, the one that would make the step complete included
    seconds_per_micro_batch: float
    save_seconds: float  # expected emergency save (the last measured one, else an estimate)
    margin_seconds: float
    seconds_left: float  # until the save deadline

    @property
    def needed_seconds(self) -> float:
        """To finish this step, then save and exit."""
        return (
            self.micro_batches_left * self.seconds_per_micro_batch + self.save_seconds + self.margin_seconds
        )

    @property
    def stop_now(self) -> bool:
        return self.needed_seconds > self.seconds_left


def stop_at_micro_batch(
    micro_batches_left: int,
    seconds_per_micro_batch: float,
    save_seconds: float,
    seconds_left: float,
    margin_seconds: float = NOTICE_MARGIN_SECONDS,
) -> NoticeBudget:
    """Whether to give up the optimizer step in progress: stop when the micro-batches it still needs, then
    the save and the margin, would not fit in the time left before the save deadline. A stopped step is
    redone on resume (its partial gradients are discarded; the checkpoint is the last completed step)."""
    return NoticeBudget(
        micro_batches_left=max(0, micro_batches_left),
        seconds_per_micro_batch=max(0.0, seconds_per_micro_batch),
        save_seconds=max(0.0, save_seconds),
        margin_seconds=margin_seconds,
        seconds_left=seconds_left,
    )


def estimated_save_seconds(checkpoint_bytes: int | None) -> float:
    """A save not measured yet: its size at a conservative write rate."""
    return ESTIMATED_SAVE_FIXED_SECONDS + (checkpoint_bytes or 0) / ESTIMATED_SAVE_BYTES_PER_SECOND


class Preemption:
    def __init__(self) -> None:
        self.phase = LOADING
        self.requested_at: float | None = None  # time.monotonic() of the first signal
        self.signal_name: str | None = None
        self.logged = False
        self.deadline_seconds: float | None = None  # save_deadline_seconds, once the watchdog runs
        # Called from the handler during LOADING, right before os._exit(75); must not take locks.
        self.on_early_exit: Callable[[], None] | None = None
        self._watchdog: threading.Thread | None = None
        self.done = threading.Event()  # set once the process is about to exit normally

    @property
    def requested(self) -> bool:
        return self.requested_at is not None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handler)
        signal.signal(signal.SIGINT, self._handler)

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.requested_at is None:
            self.requested_at = time.monotonic()
            self.signal_name = signal.Signals(signum).name
        if self.phase == LOADING:
            try:
                os.write(2, b'{"event":"preempted_before_training","level":"warning","exit_code":75}\n')
                if self.on_early_exit is not None:
                    self.on_early_exit()
            finally:
                os._exit(EXIT_PREEMPTED)

    def request(self, name: str = "test") -> None:
        """Simulate a signal (tests)."""
        if self.requested_at is None:
            self.requested_at = time.monotonic()
            self.signal_name = name

    def seconds_since_request(self) -> float | None:
        return None if self.requested_at is None else time.monotonic() - self.requested_at

    def seconds_until_deadline(self) -> float | None:
        """After a signal: what is left of save_deadline_seconds (None without a signal or a deadline)."""
        since = self.seconds_since_request()
        if since is None or self.deadline_seconds is None:
            return None
        return self.deadline_seconds - since

    def start_watchdog(self, deadline_seconds: float, on_deadline: Callable[[], None]) -> None:
        """After a signal, call `on_deadline` (it must end the process) if still running at the deadline."""
        self.deadline_seconds = deadline_seconds

        def run() -> None:
            while not self.done.is_set():
                if self.requested_at is not None:
                    remaining = deadline_seconds - (time.monotonic() - self.requested_at)
                    if remaining <= 0:
                        on_deadline()
                        return
                    self.done.wait(min(remaining, 0.2))
                else:
                    self.done.wait(0.2)

        self._watchdog = threading.Thread(target=run, name="save-deadline", daemon=True)
        self._watchdog.start()

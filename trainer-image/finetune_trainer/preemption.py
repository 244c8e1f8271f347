"""SIGTERM (and SIGINT) handling for a trainer that runs as PID 1.

Before training starts (imports, model and dataset loading) a signal ends the process at once with exit 75:
nothing has been written yet, so nothing can be damaged. Once training runs, the handler only raises a flag;
the callbacks stop at the next step boundary (or right after a save in progress), commit a checkpoint
there and the CLI exits 75. A watchdog enforces `save_deadline_seconds`: if the emergency checkpoint is not
committed in time, the process exits 75 anyway, pointing at the newest committed checkpoint, before the
kubelet's SIGKILL would take the termination message with it.

The handler itself never takes locks, logs or allocates much: the interrupted code may hold any lock.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

from finetune_api.contract import EXIT_PREEMPTED

LOADING = "loading"
TRAINING = "training"
FINISHING = "finishing"


class Preemption:
    def __init__(self) -> None:
        self.phase = LOADING
        self.requested_at: float | None = None  # time.monotonic() of the first signal
        self.signal_name: str | None = None
        self.logged = False
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

    def start_watchdog(self, deadline_seconds: float, on_deadline: Callable[[], None]) -> None:
        """After a signal, call `on_deadline` (it must end the process) if still running at the deadline."""

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

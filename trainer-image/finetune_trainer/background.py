"""One checkpoint write at a time in a background thread, its failure raised in the main thread.

The main thread copies the training state at the step boundary and hands a job (write the files, verify,
fsync, commit, retention) to `submit`; training goes on. Whoever needs that checkpoint committed (the next
save, the end of training, a SIGTERM stop) calls `wait`, which re-raises the job's exception (VolumeFull,
Superseded, ...) so the process ends with the same exit code as with a synchronous save; `poll` (every step)
raises it as soon as the job has failed, without blocking.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from finetune_trainer.logs import log


class BackgroundSaver:
    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.step: int | None = None  # the step of the save in flight (or of the last one submitted)
        self.waited_seconds = 0.0  # main-thread time spent waiting for a save in flight (all waits)

    @property
    def in_flight(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, step: int, job: Callable[[], None]) -> None:
        self.wait()  # one at a time: the caller already waited, this only guards the invariant
        self.step = step

        def run() -> None:
            try:
                job()
            except BaseException as error:  # raised again in the main thread at the next wait or poll
                self._error = error

        self._thread = threading.Thread(target=run, name=f"checkpoint-{step}", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Block until the save in flight is done; raise its error, if it failed."""
        thread = self._thread
        if thread is not None:
            if thread.is_alive():
                t0 = time.monotonic()
                thread.join()
                self.waited_seconds += time.monotonic() - t0
            self._thread = None
        self._raise()

    def poll(self) -> None:
        """Raise the error of a save that has already failed; never blocks."""
        if self._thread is not None and not self._thread.is_alive():
            self._thread = None
        self._raise()

    def drain(self) -> None:
        """The main thread is already failing: let a save in flight finish (its commit keeps work) and only
        log its own error."""
        try:
            self.wait()
        except BaseException as error:
            why = f"{type(error).__name__}: {error}"
            log("background_save_failed", level="error", step=self.step, error=why)

    def _raise(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

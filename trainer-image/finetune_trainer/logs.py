"""Structured logs (one JSON object per line on stderr) and the termination message."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from finetune_api.contract import TERMINATION_MESSAGE_PATH, TerminationMessage

_lock = threading.Lock()
_stream: TextIO | None = None  # default: sys.stderr at call time
_fields: dict[str, Any] = {}


def set_context(**fields: Any) -> None:
    """Fields added to every line (e.g. rank in multi-process runs)."""
    _fields.update({k: v for k, v in fields.items() if v is not None})


def log(event: str, level: str = "info", **fields: Any) -> None:
    record = {"ts": round(time.time(), 3), "level": level, "event": event, **_fields, **fields}
    line = json.dumps(record, default=str, separators=(",", ":"))
    with _lock:
        try:
            stream = _stream or sys.stderr
            stream.write(line + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass


def default_termination_path() -> str | None:
    """/dev/termination-log when it is writable (in a pod), else nothing."""
    path = TERMINATION_MESSAGE_PATH
    if os.path.exists(path) and os.access(path, os.W_OK):
        return path
    return None


class TerminationWriter:
    """Writes the termination message once (the first exit path wins); never raises."""

    def __init__(self, path: str | None):
        self.path = path
        self.written: TerminationMessage | None = None
        self._lock = threading.Lock()

    def write(self, message: TerminationMessage) -> None:
        with self._lock:
            if self.written is not None:
                return
            self.written = message
            if not self.path:
                return
            try:
                with open(self.path, "w") as fh:
                    fh.write(message.to_json())
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as error:
                log("termination_message_failed", level="warning", path=self.path, error=str(error))

    def write_raw_unlocked(self, message: TerminationMessage) -> None:
        """For the signal handler during start-up: no locks (the interrupted code may hold them)."""
        if self.written is not None or not self.path:
            return
        self.written = message
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, message.to_json().encode())
            finally:
                os.close(fd)
        except OSError:
            pass


def ensure_parent(path: str | None) -> None:
    if path and not path.startswith("/dev/"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def _seconds_since_process_start() -> float | None:
    """How long this process has existed (Linux: /proc/self/stat starttime, on the boot-time clock), so the
    first phase includes the interpreter's own start-up and the imports before any of our code ran."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat(5); 2 fields before ")"
        elapsed = time.clock_gettime(time.CLOCK_BOOTTIME) - started
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return elapsed if 0 <= elapsed < 3600 else None


class StartupPhases:
    """Where start-up goes, one `startup_phase` line per phase and one `startup` line (every phase, and the
    total from process start) when the first step begins. `mark(phase)` charges the time since the previous
    mark to `phase`; a phase marked twice adds up (e.g. trainer build before and after tokenization)."""

    def __init__(self) -> None:
        already = _seconds_since_process_start()
        self.process_start = time.monotonic() - (already if already is not None else 0.0)
        self._last = self.process_start
        self.phases: dict[str, float] = {}
        self.done = False

    def mark(self, phase: str, **fields: Any) -> None:
        if self.done:
            return
        now = time.monotonic()
        seconds = now - self._last
        self._last = now
        self.phases[phase] = self.phases.get(phase, 0.0) + seconds
        log("startup_phase", phase=phase, seconds=round(seconds, 3), **fields)

    def finish(self, phase: str, **fields: Any) -> None:
        """The last phase (the first step is reached): log the summary once."""
        if self.done:
            return
        self.mark(phase)
        self.done = True
        total = time.monotonic() - self.process_start
        log(
            "startup",
            seconds=round(total, 3),
            phases={name: round(value, 3) for name, value in self.phases.items()},
            **fields,
        )


#: This process's start-up (one per process: each rank of a multi-process run logs its own).
startup = StartupPhases()

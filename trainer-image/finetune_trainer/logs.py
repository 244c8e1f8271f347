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

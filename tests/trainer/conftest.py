"""Fixtures of the real-process trainer tests (helpers in trainer_harness.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from trainer_harness import reference, tiny, work  # noqa: F401  (fixtures)

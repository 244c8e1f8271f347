"""Fixtures of the real-process trainer tests (helpers in trainer_harness.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from trainer_harness import reference, tiny, work  # noqa: F401  (fixtures)

from tests.harness.object_store import object_store  # noqa: F401  (fixture: a real S3 server)

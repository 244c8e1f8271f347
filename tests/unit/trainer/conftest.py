"""Fixtures of the trainer unit tests; their helpers (checkpoint_files.py) are importable from the test
modules."""

import sys
from pathlib import Path

from tests.harness.object_store import object_store  # noqa: F401  (fixture: a real S3 server)

sys.path.insert(0, str(Path(__file__).resolve().parent))

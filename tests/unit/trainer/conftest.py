"""Helpers of the trainer unit tests (checkpoint_files.py) are importable from their test modules."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

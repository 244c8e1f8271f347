"""Fixtures of the harness tests."""

from tests.harness.object_store import object_store  # noqa: F401  (fixture: a real S3 server)

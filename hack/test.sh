#!/usr/bin/env bash
# The project's whole test run (README: `make test`): sets up what a fresh machine lacks, then lints and runs
# every test. Each set-up step is cached, so a second run spends its time on the tests.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
step() { printf '\n==> %s\n' "$*"; }

step "Python environment (hack/bootstrap.sh)"
hack/bootstrap.sh

step "Lint and types"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy

step "Tests"
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
exec .venv/bin/python -m pytest "$@"

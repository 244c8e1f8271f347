#!/usr/bin/env bash
# The project's whole test run (README: `make test`). On a fresh machine it first installs and builds what is
# missing — every step cached, so a second run spends its time on the tests — then lints and runs every test:
# unit, trainer (real processes, real signals), and integration tests on the local real cluster.
#
#   make test                      # everything
#   make test ARGS='-m "not cluster"'   # no cluster (pytest arguments pass through)
#   FTO_KEEP_CLUSTER=1 make test   # leave a cluster this run started up afterwards
#   FTO_KIND=off make test         # without the kind e2e subset (hack/e2e.sh --quick) at the end
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
started=$SECONDS
step() { printf '\n==> [%4ds] %s\n' "$((SECONDS - started))" "$*"; }

step "Python environment (hack/bootstrap.sh)"
hack/bootstrap.sh

step "Prometheus and promtool (tests/harness/install_prometheus.sh: the dashboard/alert tests use them)"
tests/harness/install_prometheus.sh

step "S3 server for the object-store tests (hack/objectstore/build.sh: cached; a cold build takes 5-20 min)"
hack/objectstore/build.sh >/dev/null

step "Lint and types"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/finetune-observability --check

export PATH=$repo/.venv/bin:$PATH OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
if [[ ${FTO_CLUSTER:-auto} != off ]]; then
  step "Local cluster prerequisites (hack/cluster.sh tools)"
  hack/cluster.sh tools
  step "Kubernetes components (hack/cluster.sh build: cached; a cold build takes 10-20 min)"
  hack/cluster.sh build
  if ! hack/cluster.sh status 2>/dev/null | grep -q '^node .*: Ready$'; then
    step "Start the local cluster (hack/cluster.sh up)"
    hack/cluster.sh up
    # Stop only a cluster this run started (a developer's running cluster is left alone).
    if [[ ${FTO_KEEP_CLUSTER:-0} != 1 ]]; then
      trap 'step "Stop the local cluster (hack/cluster.sh down)"; hack/cluster.sh down' EXIT
    fi
  fi
  step "Trainer and operator images (hack/cluster.sh images: incremental)"
  hack/cluster.sh images
  step "Kueue for tests/integration/kueue (hack/cluster/kueue/build.sh: cached, 0.1 s; cold ~13 CPU-min)"
  hack/cluster/kueue/build.sh >/dev/null
  export FTO_CLUSTER=existing
fi

step "Tests"
# --durations: the slowest tests are named at the end, to keep the run under its time goal.
if [[ ${FTO_CLUSTER:-off} == existing && $# -eq 0 && ${FTO_TEST_SERIAL:-0} != 1 ]]; then
  # Two pytest runs side by side: the cluster tests spend much of their time waiting on the apiserver, the
  # kubelet and the operator, which the tests without a cluster (unit, trainer processes) fill. They share
  # nothing but the CPU. The second run's output is printed when both are done. FTO_TEST_SERIAL=1: one run.
  beside=$(mktemp -t fto-tests-no-cluster.XXXXXX.log)
  .venv/bin/python -m pytest --durations=15 -p no:cacheprovider -m "not cluster and not kind" >"$beside" 2>&1 &
  beside_pid=$!
  cluster_rc=0
  .venv/bin/python -m pytest --durations=20 -m cluster || cluster_rc=$?
  beside_rc=0
  wait "$beside_pid" || beside_rc=$?
  step "Tests without a cluster (run beside the cluster tests): exit $beside_rc"
  cat "$beside"
  rm -f "$beside"
  if ((cluster_rc != 0 || beside_rc != 0)); then
    echo "tests failed: cluster tests exit $cluster_rc, tests without a cluster exit $beside_rc" >&2
    exit 1
  fi
else
  .venv/bin/python -m pytest --durations=30 "$@"
fi

if [[ ${FTO_CLUSTER:-off} == existing && $# -eq 0 ]]; then
  # Alone and last: it takes the cluster down (checking that nothing is left behind) and up again.
  step "Cluster teardown leaves no process, mount or rule behind (then up again)"
  FTO_TEST_DOWN=1 .venv/bin/python -m pytest -q -p no:randomly \
    tests/integration/test_cluster_harness.py -k test_down_leaves_no_process_or_mount_then_up_again
fi

if [[ ${FTO_CLUSTER:-off} == existing && $# -eq 0 && ${FTO_KIND:-on} != off ]]; then
  # Last: a kind cluster of three real nodes (kind-config.yaml) on a private Docker engine, the kind
  # subset of tests/e2e on it, then everything removed and the host compared with before (hack/e2e.sh;
  # `make e2e` runs the whole kind suite). FTO_KIND=off skips it.
  step "kind e2e subset (hack/e2e.sh --quick)"
  FTO_IMAGES_FRESH=1 hack/e2e.sh --quick
fi

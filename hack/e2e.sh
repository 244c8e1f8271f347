#!/usr/bin/env bash
# The kind e2e suite (tests/e2e) on a kind cluster built here without a registry (hack/kind.sh): build what
# is missing (cached), check the host's state, create the cluster from kind-config.yaml, stream the
# project's images into the nodes that need them, run the tests, delete everything, check that the host is
# as it was.
#
#   hack/e2e.sh              # make e2e: every kind test (the trainer image goes into both workers)
#   hack/e2e.sh --quick      # make test: the kind subset below (the trainer image in the on-demand worker)
#   FTO_KIND_KEEP=1 hack/e2e.sh   # leave the cluster up (hack/kind.sh down removes it)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
started=$SECONDS
step() { printf '\n==> [kind %4ds] %s\n' "$((SECONDS - started))" "$*"; }

# The subset `make test` runs: what the hand-built local cluster cannot show (real nodes, a node's
# container frozen like a vanished VM, a drained worker, the chart's operator pod killed), with the
# undisturbed run they are compared to. The other scenarios run on the local cluster in every test run.
QUICK='(test_happy_path or node-gone or drain or test_operator_pod_killed) and not spot'
pools=(on-demand spot) select=()
if [[ ${1:-} == --quick ]]; then pools=(on-demand) select=(-k "$QUICK"); shift; fi

if [[ ${FTO_IMAGES_FRESH:-0} != 1 ]]; then  # make test has just done all of this
  step "Python environment, Kubernetes build, project images (cached; see make test)"
  hack/bootstrap.sh
  hack/cluster.sh tools
  hack/cluster.sh build
  hack/cluster.sh images all --no-import
fi
step "kind tools (Debian's docker.io) and node image (hack/kind.sh tools, build: cached; cold ≈ 15 min)"
hack/kind.sh tools
# The host is recorded before the engine starts (build starts it), so that a leftover of an earlier run
# cannot hide what this one leaves: such a leftover is removed first.
[[ ${FTO_KIND_KEEP:-0} == 1 ]] || hack/kind.sh down >/dev/null
before=$(mktemp -t fto-kind-host-before.XXXXXX)
hack/kind/hoststate.sh >"$before"
hack/kind.sh build
if [[ ${FTO_KIND_KEEP:-0} != 1 ]]; then
  trap 'step "Delete the kind cluster and stop its engine (hack/kind.sh down)"; hack/kind.sh down' EXIT
fi
step "kind cluster from kind-config.yaml (hack/kind.sh up)"
hack/kind.sh up
step "Images into the nodes: operator -> control plane, trainer -> ${pools[*]} (hack/kind.sh load)"
hack/kind.sh load "${pools[@]}"
step "kind e2e tests"
eval "$(hack/kind.sh env)"
rc=0
FTO_KIND_IMAGES=loaded FTO_CLUSTER=off .venv/bin/python -m pytest --durations=10 -p no:cacheprovider -p no:randomly \
  -m kind tests/e2e "${select[@]}" "$@" || rc=$?
if [[ ${FTO_KIND_KEEP:-0} != 1 ]]; then
  trap - EXIT
  step "Delete the kind cluster and stop its engine (hack/kind.sh down)"
  hack/kind.sh down
  step "The host is as it was before 'up' (hack/kind/hoststate.sh)"
  if ! diff "$before" <(hack/kind/hoststate.sh); then
    echo "hack/kind.sh down left the host changed (above: < before up, > after down)" >&2
    rc=1
  fi
fi
rm -f "$before"
exit "$rc"

#!/usr/bin/env bash
# A kind cluster from kind-config.yaml for the e2e suite (tests/e2e), built and run without a registry.
# Usage: hack/kind.sh tools|build|up|load|down|status|env   (see README, "kind e2e suite")
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=kind/common.sh
source "$here/kind/common.sh"
for f in build engine cluster; do
  # shellcheck disable=SC1090
  [[ -f $here/kind/$f.sh ]] && source "$here/kind/$f.sh"
done

usage() {
  cat <<USAGE
usage: hack/kind.sh COMMAND
  tools    install Debian's docker.io (no service is started; the engine is private to this project)
  build    kind, the node image and the images it holds, from source (cached in $KIND_CACHE)
  up       start the private Docker engine and create the cluster '$CLUSTER_NAME' from kind-config.yaml
  load     put the project's images into the nodes: the operator into every node, the trainer only into
           the nodes given (default: the on-demand worker), e.g. hack/kind.sh load on-demand spot
  down     delete the cluster, stop the engine, remove every mount, cgroup and file it made
  status   show what runs
  env      print 'export DOCKER_HOST=...; export KUBECONFIG=...; export PATH=...' for a shell
USAGE
}

cmd=${1:-}; shift || true
case $cmd in
  tools|build|up|load|down|status|env) "kind_${cmd}" "$@" ;;
  -h|--help|help|"") usage ;;
  *) usage >&2; exit 2 ;;
esac

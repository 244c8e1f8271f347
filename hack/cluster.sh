#!/usr/bin/env bash
# Local single-node Kubernetes without Docker, built from source, for the tests and the demo.
# Usage: hack/cluster.sh tools|build|up|down|status|images|env   (see README, "Local cluster")
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=cluster/common.sh
source "$here/cluster/common.sh"
for f in build node images tools; do
  # shellcheck disable=SC1090
  [[ -f $here/cluster/$f.sh ]] && source "$here/cluster/$f.sh"
done

usage() {
  cat <<USAGE
usage: hack/cluster.sh COMMAND
  tools    install the Debian packages the cluster needs (etcd, containerd, runc, CNI, buildah, ...)
  build    build Kubernetes $K8S_VERSION components + helm into $BIN_DIR (cached)
  up       start etcd, apiserver, controller-manager, scheduler, containerd, kubelet (idempotent)
  down     stop what 'up' started and remove every mount, route, rule and file it made
           (--purge: also the node's image store in the cache)
  status   show what runs
  images   build the base, trainer and operator images and import them into the node
  env      print 'export KUBECONFIG=...; export PATH=...' for a shell
  node-stop [--kill-pods]   the node vanishes: kubelet SIGKILLed (and every pod process killed)
  node-start                the kubelet comes back
USAGE
}

cmd=${1:-}; shift || true
case $cmd in
  build|up|down|status|images|tools|env|node-stop|node-start) "cmd_${cmd//-/_}" "$@" ;;
  -h|--help|help|"") usage ;;
  *) usage >&2; exit 2 ;;
esac

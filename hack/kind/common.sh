# Shared settings for hack/kind/*.sh: paths, versions, the private Docker engine. Sourced, not run.
# shellcheck shell=bash disable=SC2034 # the variables are used by the scripts that source this

KIND_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../cluster/common.sh
source "$KIND_DIR/../cluster/common.sh"
# shellcheck source=versions.env
source "$KIND_DIR/versions.env"

# Cache (survives `down`): binaries, the rootfs tar, and the engine's data root, which keeps the node image
# between runs. State (removed by `down`): sockets, pid files, the engine's exec root, logs, kubeconfig.
KIND_CACHE=$FTO_CACHE/kind
KIND_BIN=$KIND_CACHE/bin
KIND_STATE=${FTO_KIND_STATE:-/var/tmp/finetune-operator/kind}
DOCKER_ROOT=$KIND_CACHE/docker
DOCKER_SOCK=$KIND_STATE/docker.sock
ENGINE_CONTAINERD_SOCK=$KIND_STATE/containerd/containerd.sock
# Every container of the engine (the kind nodes and everything in them) lives under this cgroup.
ENGINE_CGROUP=finetune-kind
CLUSTER_NAME=${FTO_KIND_CLUSTER:-finetune-e2e}
KIND_KUBECONFIG=${FTO_KIND_KUBECONFIG:-$KIND_STATE/kubeconfig}
NODE_IMAGE=localhost/kind-node:$K8S_VERSION
BASE_IMAGE=localhost/kind-base:bookworm
ROOTFS_IMAGE=localhost/kind-rootfs:bookworm
export DOCKER_HOST=unix://$DOCKER_SOCK
PATH=$KIND_BIN:$BIN_DIR:$PATH

# The docker.io package's own CLI (20.10, the engine's version) when there is one: a newer CLI prints a
# deprecation notice for every legacy-builder build (the engine has no BuildKit).
if [[ -x /usr/bin/docker ]]; then docker() { /usr/bin/docker "$@"; }; fi
docker_up() { docker info >/dev/null 2>&1; }

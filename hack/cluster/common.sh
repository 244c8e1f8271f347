# Shared settings for hack/cluster/*.sh: paths, versions, logging. Sourced, not run.
# shellcheck shell=bash disable=SC2034 # the variables are used by the scripts that source this

CLUSTER_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$CLUSTER_DIR/../.." && pwd)
# shellcheck source=versions.env
source "$CLUSTER_DIR/versions.env"

# Caches survive `down`; state does not.
FTO_CACHE=${FTO_CACHE:-$HOME/.cache/finetune-operator}
FTO_STATE=${FTO_STATE:-/var/tmp/finetune-operator/cluster}
K8S_CACHE=$FTO_CACHE/k8s/$K8S_VERSION
BIN_DIR=$K8S_CACHE/bin
KUBECONFIG_PATH=$FTO_STATE/kubeconfig

# Go builds use a GOPATH and GOCACHE inside the versioned cache so a warm rebuild takes seconds and
# nothing lands in the user's own Go directories.
go_env() {
  export GOTOOLCHAIN=${GOTOOLCHAIN:-local} GOPATH=$K8S_CACHE/go GOCACHE=$K8S_CACHE/go-build
  export GOFLAGS="-mod=mod -buildvcs=false" GOMODCACHE=$K8S_CACHE/go/pkg/mod
  PATH=/usr/local/go/bin:$PATH
}

# The Debian mirror apt already uses (so we name no host here): for debootstrap (hack/images, hack/kind).
debian_mirror() {
  local uri
  uri=$(grep -hE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null |
    grep -v security | head -1 | awk '{print $2}' || true)
  [[ -n $uri ]] || die "cannot find a Debian mirror in /etc/apt sources"
  echo "$uri"
}

# Where `hack/cluster.sh images` keeps an image as an OCI layout: what the local node and the kind nodes
# (hack/kind.sh load) import from.
oci_layout() { echo "$FTO_CACHE/images/oci/${1//[\/:]/_}"; }

# -ldflags for a Kubernetes command: without the version the binaries say v0.0.0 and the kubelet/kubectl
# version-skew checks misbehave (hack/cluster.sh build; hack/kind.sh build for kubeadm, kube-proxy, kubectl).
k8s_ldflags() {
  local minor=${K8S_VERSION#v1.} pkg=k8s.io/component-base/version
  minor=${minor%%.*}
  echo "-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
}

ts() { date +%H:%M:%S; }
log() { printf '[%s] %s\n' "$(ts)" "$*" >&2; }
die() { printf 'cluster: %s\n' "$*" >&2; exit 1; }

# One clear line and a non-zero exit when a prerequisite is missing.
require_cmds() {
  local missing=() c
  for c in "$@"; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
  ((${#missing[@]} == 0)) || die "missing prerequisite(s): ${missing[*]} (run: hack/cluster.sh tools)"
}
require_root() { [[ $(id -u) == 0 ]] || die "must run as root (it starts a kubelet, containerd and network namespaces)"; }

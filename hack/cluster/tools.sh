# `hack/cluster.sh tools`: the Debian packages the local cluster and the image build need.
# shellcheck shell=bash
TOOLS_PACKAGES=(etcd-server containerd runc containernetworking-plugins buildah skopeo debootstrap iptables
  iproute2 openssl curl util-linux ca-certificates)
cmd_tools() {
  require_root
  local missing=() p
  for p in "${TOOLS_PACKAGES[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p"); done
  if ((${#missing[@]})); then
    log "installing: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null ||
      { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; } ||
      die "apt-get install ${missing[*]} failed"
  fi
  # Debian's containerd package does not start a daemon here (no systemd); ours is started by `up`.
  command -v go >/dev/null || [[ -x /usr/local/go/bin/go ]] || die "Go >= 1.26 is required to build Kubernetes (expected at /usr/local/go)"
  log "tools present"
}

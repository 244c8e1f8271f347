#!/usr/bin/env bash
# What `hack/kind.sh up` may change on the host, printed in a stable order, so that a run can compare the
# state before `up` with the state after `down` (hack/e2e.sh does). Read-only.
#   network links, addresses, routes, network namespaces; mounts; iptables/ip6tables rules (nft and
#   legacy); the forwarding sysctls; top-level cgroups of every hierarchy; processes of the engine; paths
#   dockerd and kind create on first use.
# The local cluster (hack/cluster.sh), which may run beside kind, is left out: its pods' netns, mounts and
# CNI rules come and go on their own (hack/cluster.sh down has its own check), as do buildah's mounts.
set -uo pipefail
section() { printf '== %s\n' "$1"; }
local_cluster='/var/tmp/finetune-operator/cluster|finetune-operator/containerd|finetune-operator/buildah|/run/netns/cni-|^cni-|CNI-|KUBE-'
not_local() { grep -Ev "$local_cluster" || true; }
section links; ip -o link | awk -F': ' '{print $2}' | sed 's/@.*//' | sort
section addresses; ip -o addr | awk '{print $2, $4}' | sort
section routes; { ip route; ip -6 route; } | sort
section netns; ip netns list 2>/dev/null | not_local | sort
section mounts; awk '{print $2, $3}' /proc/mounts | not_local | sort
for t in iptables-nft-save iptables-legacy-save ip6tables-nft-save ip6tables-legacy-save; do
  section "$t"; command -v "$t" >/dev/null && "$t" 2>/dev/null | grep -v '^#' | sed 's/\[[0-9:]*\]//' | not_local
done
section sysctl; sysctl -n net.ipv4.ip_forward net.ipv6.conf.all.forwarding 2>/dev/null
section cgroups; for c in /sys/fs/cgroup/*/; do find "$c" -mindepth 1 -maxdepth 1 -type d | sort; done
section processes; pgrep -af 'dockerd|containerd' | awk '{$1=""; print}' | grep -e finetune-operator/kind -e finetune-kind | sort
section paths; ls -d /lib/modules /run/docker /run/containerd /etc/docker/key.json /var/run/docker.sock 2>/dev/null
exit 0

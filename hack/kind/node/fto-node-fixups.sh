# Sourced by the kind node's entrypoint (hack/kind/build.sh puts it in the base image): what a node needs on
# this project's machines, where the engine runs with --iptables=false --ip-forward=false and nothing may
# leave the machine.
# shellcheck shell=bash

# Before kind's network set-up: a new network namespace inherits the host's net.ipv4.ip_forward=0, and a
# node must forward pod traffic (this is the node's own netns; the host's setting is not touched). Docker's
# embedded DNS DNAT rules normally appear in this netns; when they do not (or not yet), install the same
# rules, so that kind's enable_network_magic finds what it expects.
fto_node_fixups() {
  sysctl -qw net.ipv4.ip_forward=1 || log_warn 'fto: could not enable net.ipv4.ip_forward'
  local rules i tcp udp ipt=iptables-nft
  for i in $(seq 30); do
    # a variable, not `| grep -q`: under pipefail grep's early exit can fail the pipeline
    rules=$( (iptables-nft-save -t nat; iptables-legacy-save -t nat) 2>/dev/null || true)
    [[ $rules == *DOCKER_OUTPUT* ]] && return 0
    sleep 0.1
  done
  tcp=$(ss -Hltn src 127.0.0.11 2>/dev/null | awk '{print $4}' | sed 's/.*://' | head -n1 || true)
  udp=$(ss -Hlun src 127.0.0.11 2>/dev/null | awk '{print $4}' | sed 's/.*://' | head -n1 || true)
  if [[ -z $tcp || -z $udp ]]; then
    log_warn "fto: no Docker DNS resolver on 127.0.0.11: node names will not resolve"
    return 0
  fi
  log_info "fto: installing Docker's DNS DNAT rules (tcp $tcp, udp $udp)"
  $ipt -t nat -N DOCKER_OUTPUT || return 0
  $ipt -t nat -N DOCKER_POSTROUTING || true
  $ipt -t nat -A OUTPUT -d 127.0.0.11/32 -j DOCKER_OUTPUT
  $ipt -t nat -A POSTROUTING -d 127.0.0.11/32 -j DOCKER_POSTROUTING
  $ipt -t nat -A DOCKER_OUTPUT -d 127.0.0.11/32 -p tcp -m tcp --dport 53 -j DNAT --to-destination "127.0.0.11:$tcp"
  $ipt -t nat -A DOCKER_OUTPUT -d 127.0.0.11/32 -p udp -m udp --dport 53 -j DNAT --to-destination "127.0.0.11:$udp"
  $ipt -t nat -A DOCKER_POSTROUTING -s 127.0.0.11/32 -p tcp -m tcp --sport "$tcp" -j SNAT --to-source :53
  $ipt -t nat -A DOCKER_POSTROUTING -s 127.0.0.11/32 -p udp -m udp --sport "$udp" -j SNAT --to-source :53
}

# After kind's network set-up (which reads the default gateway for its DNS): drop the default routes, so
# nothing from a node or a pod is ever routed off the machine and such an attempt fails at once. The nodes'
# own subnet stays directly connected.
fto_no_egress() {
  local family route
  for family in -4 -6; do
    while route=$(ip "$family" route show default 2>/dev/null | head -n1) && [[ -n $route ]]; do
      # shellcheck disable=SC2086 # the route's words are ip's arguments
      ip "$family" route del $route || { log_warn "fto: could not remove default route ($route)"; break; }
    done
  done
}

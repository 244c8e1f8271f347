# The private Docker engine kind runs on: Debian's dockerd and containerd with their own roots, sockets and
# cgroup, touching nothing else on the host. Sourced by hack/kind.sh.
#   no iptables rules, no ip_forward or masquerade change, no docker0 bridge (--bridge=none); container DNS
#   upstream 127.0.0.1 (nothing listens there: no name is ever resolved off the machine).
# shellcheck shell=bash

# `hack/kind.sh tools`: Debian's docker.io (dockerd 20.10, the CLI). No service is started: policy-rc.d
# tells the package scripts not to (one is written for the install when the host has none).
kind_tools() {
  require_root
  if ! command -v dockerd >/dev/null; then
    local ours=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && ours=1
    fi
    log "installing docker.io (Debian's dockerd 20.10; no service started)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker.io >/dev/null ||
      { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker.io >/dev/null; } ||
      { ((ours)) && rm -f /usr/sbin/policy-rc.d; die "apt-get install docker.io failed"; }
    ((ours)) && rm -f /usr/sbin/policy-rc.d
  fi
  require_cmds dockerd containerd runc ctr python3 debootstrap
  log "kind tools present ($(dockerd --version))"
}

engine_up() {
  require_root
  require_cmds dockerd containerd
  docker_up || record_host_paths
  mkdir -p "$DOCKER_ROOT" "$KIND_STATE/exec" "$KIND_STATE/containerd" "$KIND_STATE/logs"
  if ! ctr --address "$ENGINE_CONTAINERD_SOCK" version >/dev/null 2>&1; then
    cat >"$KIND_STATE/containerd/config.toml" <<TOML
version = 2
root = "$DOCKER_ROOT/containerd"
state = "$KIND_STATE/exec/containerd"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$ENGINE_CONTAINERD_SOCK"
[ttrpc]
  address = "$ENGINE_CONTAINERD_SOCK.ttrpc"
[debug]
  address = "$KIND_STATE/containerd/debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$DOCKER_ROOT/containerd-opt"
TOML
    setsid containerd --config "$KIND_STATE/containerd/config.toml" >"$KIND_STATE/logs/containerd.log" 2>&1 </dev/null &
    echo $! >"$KIND_STATE/containerd.pid"
    local _
    for _ in $(seq 50); do ctr --address "$ENGINE_CONTAINERD_SOCK" version >/dev/null 2>&1 && break; sleep 0.2; done
    ctr --address "$ENGINE_CONTAINERD_SOCK" version >/dev/null 2>&1 ||
      die "the engine's containerd did not start: $KIND_STATE/logs/containerd.log"
  fi
  docker_up && return 0
  # daemon.json: dockerd 20.10 writes /etc/docker/key.json unless told otherwise (config file only), and
  # the capability-filtering runc wrapper is the default runtime (see runc-capfilter).
  cat >"$KIND_STATE/daemon.json" <<JSON
{
  "deprecated-key-path": "$KIND_STATE/docker-key.json",
  "runtimes": {"fto-runc": {"path": "$KIND_DIR/runc-capfilter"}},
  "default-runtime": "fto-runc"
}
JSON
  setsid dockerd --config-file "$KIND_STATE/daemon.json" --data-root "$DOCKER_ROOT" \
    --exec-root "$KIND_STATE/exec" --pidfile "$KIND_STATE/docker.pid" --host "unix://$DOCKER_SOCK" \
    --containerd "$ENGINE_CONTAINERD_SOCK" --iptables=false --ip6tables=false --ip-forward=false \
    --ip-masq=false --bridge=none --storage-driver overlay2 --exec-opt native.cgroupdriver=cgroupfs \
    --cgroup-parent "/$ENGINE_CGROUP" --dns 127.0.0.1 --default-address-pool base=172.29.0.0/16,size=24 \
    >"$KIND_STATE/logs/dockerd.log" 2>&1 </dev/null &
  local launcher=$! _
  for _ in $(seq 100); do docker_up && break; kill -0 "$launcher" 2>/dev/null || break; sleep 0.3; done
  docker_up || { tail -5 "$KIND_STATE/logs/dockerd.log" >&2; die "dockerd did not start: $KIND_STATE/logs/dockerd.log"; }
  log "Docker engine up ($(docker info --format '{{.ServerVersion}}'), data root $DOCKER_ROOT)"
}

# Stop the engine and undo what it (and kind) left on the host. The data root (images) stays in the cache.
engine_down() {
  local pid m h
  if docker_up; then
    local c ids n
    for c in $(kind get clusters 2>/dev/null); do kind delete cluster --name "$c" >/dev/null 2>&1 || true; done
    ids=$(docker ps -aq)
    [[ -n $ids ]] && docker rm -f -v $ids >/dev/null
    for n in $(docker network ls --format '{{.Name}}' | grep -vx -e bridge -e host -e none); do docker network rm "$n" >/dev/null || true; done
  fi
  stop_pid_file "$KIND_STATE/docker.pid" dockerd 30
  # The shims started by our containerd outlive it by design; ours name our socket.
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $ENGINE_CONTAINERD_SOCK" || true); do kill -KILL "$pid" 2>/dev/null || true; done
  stop_pid_file "$KIND_STATE/containerd.pid" containerd 20
  # Mounts under our directories (overlays, netns, shm), deepest first.
  # (dockerd also bind-mounts its data root onto itself)
  for m in $(awk -v s="$KIND_STATE" -v r="$DOCKER_ROOT" '$2 == s || $2 == r || index($2, s "/") == 1 || index($2, r "/") == 1 {print $2}' /proc/mounts | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" || true
  done
  # The containers' cgroups (dockerd --cgroup-parent), deepest first; rmdir removes only empty ones.
  for h in /sys/fs/cgroup/*/"$ENGINE_CGROUP"; do
    [[ -d $h ]] && find "$h" -depth -type d -exec rmdir {} \; 2>/dev/null
    [[ -d $h ]] && log "WARN: could not remove cgroup $h"
  done
  # systemd inside a node makes cgroups at the top of the named "systemd" and cgroup2 hierarchies.
  remove_node_cgroups
  # Paths dockerd and containerd create on first start, and the /lib/modules that kind's bind mount makes.
  [[ -f $KIND_STATE/host-paths-before ]] && while IFS= read -r m; do
    grep -qx "$m" "$KIND_STATE/host-paths-before" && continue
    case $m in
      /lib/modules|/run/docker|/run/containerd) find "$m" -depth -type d -empty -delete 2>/dev/null || true ;;
    esac
  done < <(printf '%s\n' /lib/modules /run/docker /run/containerd)
  rm -rf "$KIND_STATE"
  return 0
}

stop_pid_file() {
  local file=$1 what=$2 wait=$3 pid _
  [[ -s $file ]] || return 0
  pid=$(cat "$file")
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid"
  for _ in $(seq $((wait * 2))); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
  log "$what $pid did not stop: KILL"; kill -KILL "$pid" 2>/dev/null || true
}

# kind nodes run systemd, which makes its own cgroups in hierarchies dockerd's cgroup parent does not cover
# (the named "systemd" one, cgroup2 "unified"): those named after a kind node container are removed.
remove_node_cgroups() {
  local d
  for d in /sys/fs/cgroup/systemd/"$ENGINE_CGROUP" /sys/fs/cgroup/unified/"$ENGINE_CGROUP"; do
    [[ -d $d ]] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}

# The host paths that exist before the engine first starts (engine_up), so `down` knows which of them the
# engine or kind made and may remove.
record_host_paths() {
  mkdir -p "$KIND_STATE"
  [[ -f $KIND_STATE/host-paths-before ]] && return 0
  local p
  for p in /lib/modules /run/docker /run/containerd; do
    if [[ -e $p ]]; then echo "$p"; fi
  done >"$KIND_STATE/host-paths-before"
}

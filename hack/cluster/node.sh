# `hack/cluster.sh up|down|status|env` and the node stop/start used by the disruption tests.
# shellcheck shell=bash

# --- addresses and ports ------------------------------------------------------------------------
# The node's address lives on the host end of a veth whose peer sits in a network namespace we create:
# the kubelet refuses a loopback node IP, and no traffic may go to the machine's real interface.
NODE_NAME=${FTO_NODE_NAME:-fto-node}
NETNS=fto-node0
VETH=fto-veth0
VETH_PEER=fto-veth0p
NODE_IP=10.89.0.1
NETNS_IP=10.89.0.2
BRIDGE=fto-cni0
POD_CIDR=10.88.0.0/16
SERVICE_CIDR=10.0.0.0/24
KUBERNETES_SVC_IP=10.0.0.1
API_PORT=16443
ETCD_PORT=12379
ETCD_PEER_PORT=12380
API_URL=https://$NODE_IP:$API_PORT
# The hostpath provisioner creates each volume directory (mode 0750) as the user that runs the
# controller-manager; running it as the trainer's uid/gid makes dynamic PVCs writable by the trainer.
PV_OWNER=${FTO_PV_OWNER:-1000:1000}
HOSTPATH_PV_DIR=/tmp/hostpath_pv
# How fast a vanished node is noticed, and how long pods tolerate a NotReady/unreachable node
# (clouds: 40-50 s and 300 s; short here so "node gone" tests take seconds).
NODE_GRACE=${FTO_NODE_GRACE:-8s}
TOLERATION_SECONDS=${FTO_TOLERATION_SECONDS:-15}

# Certificates and tokens are kept in the cache: a kubeconfig (and a test session's client) stays valid
# across down/up. The controller-manager gets copies it can read in $CM_DIR (it runs as PV_OWNER).
PKI=$FTO_CACHE/cluster-pki
CM_DIR=$FTO_STATE/controller-manager
LOG_DIR=$FTO_STATE/logs
RUN_DIR=$FTO_STATE/run
CTRD_DIR=$FTO_STATE/containerd
# containerd's content store is kept in the cache so the (large) images survive `down`.
CTRD_ROOT=$FTO_CACHE/containerd/root
CTRD_SOCK=$CTRD_DIR/containerd.sock
KUBELET_DIR=$FTO_STATE/kubelet
CNI_DIR=$FTO_STATE/cni
# Host paths the kubelet and containerd use whatever we configure; `down` removes the ones we created.
FIXED_HOST_PATHS=(/var/lib/kubelet /var/log/containers /var/log/pods /run/containerd /var/lib/cni "$HOSTPATH_PV_DIR" /run/netns)
COMPONENTS=(etcd kube-apiserver fto-node-heartbeat kube-controller-manager kube-scheduler containerd kubelet)
# A second, virtual node that is always Ready (heartbeat/main.go says why): so a vanished real node is
# an ordinary node failure, not "the whole cluster is down" (where Kubernetes stops evicting on purpose).
VIRTUAL_NODE=fto-virtual

ctr_() { ctr --address "$CTRD_SOCK" -n k8s.io "$@"; }

admin_token() { cat "$PKI/admin.token"; }
# A GET against the apiserver with the admin token (no kubectl needed by the script itself).
api() {
  curl -fsS --max-time 5 --cacert "$PKI/ca.crt" -H "Authorization: Bearer $(admin_token)" "$@"
}

# --- processes ----------------------------------------------------------------------------------
pid_of() { local f=$RUN_DIR/$1.pid; [[ -s $f ]] && cat "$f"; }

# Running = the recorded pid is alive AND is still the binary we started (pids get reused).
is_running() {
  local name=$1 pid exe
  pid=$(pid_of "$name") || return 1
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  [[ ${exe##*/} == "$name" || ${exe##*/} == "$name (deleted)" ]]
}

# Start a component in its own session (it must outlive the shell or pytest that called `up`).
start_proc() {
  local name=$1; shift
  is_running "$name" && return 0
  setsid "$@" >>"$LOG_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/$name.pid"
}

stop_proc() {
  local name=$1 sig=${2:-TERM} pid i
  is_running "$name" || { rm -f "$RUN_DIR/$name.pid"; return 0; }
  pid=$(pid_of "$name")
  kill "-$sig" "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do is_running "$name" || break; sleep 0.1; done
  if is_running "$name"; then log "$name did not stop in 10 s: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; sleep 0.2; fi
  rm -f "$RUN_DIR/$name.pid"
}

# wait_for DESCRIPTION SECONDS COMMAND...: poll every 0.2 s.
wait_for() {
  local what=$1 secs=$2 i; shift 2
  for ((i = 0; i < secs * 5; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "$what not ready after ${secs}s (logs: $LOG_DIR)"
}

# --- preflight ----------------------------------------------------------------------------------
preflight() {
  require_root
  require_cmds etcd containerd containerd-shim-runc-v2 runc ctr ip iptables openssl setpriv curl python3 mountpoint
  [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] ||
    die "missing prerequisite: CNI plugins in /usr/lib/cni (run: hack/cluster.sh tools)"
  local c
  for c in kube-apiserver kube-controller-manager kube-scheduler kubelet fto-node-heartbeat; do
    [[ -x $BIN_DIR/$c ]] || die "missing $BIN_DIR/$c (run: hack/cluster.sh build)"
  done
  [[ -s $BIN_DIR/pause-image.tar && -s $BIN_DIR/testbox-image.tar ]] || die "missing pause/testbox image (run: hack/cluster.sh build)"
  grep -q ' /sys/fs/cgroup/memory ' /proc/mounts || [[ -f /sys/fs/cgroup/cgroup.controllers ]] ||
    die "no memory cgroup controller: the kubelet cannot enforce limits"
}

# Remember which fixed host paths existed before our first `up`, so `down` removes only ours.
record_host_paths() {
  local f=$FTO_STATE/preexisting-paths p
  [[ -f $f ]] && return 0
  for p in "${FIXED_HOST_PATHS[@]}"; do [[ -e $p ]] && echo "$p"; done >"$f"
  # Pod network namespaces are made by containerd under /run/netns as cni-<uuid>.
  ls /run/netns 2>/dev/null >"$FTO_STATE/preexisting-netns" || true
  cat /proc/sys/net/ipv4/ip_forward >"$FTO_STATE/ip_forward.orig"
  # The kubelet makes KUBE-* chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY, ...) in iptables and ip6tables.
  { iptables-save; ip6tables-save; } 2>/dev/null | grep -c '^:KUBE-' >"$FTO_STATE/preexisting-kube-chains" || true
}

# Remove the kubelet's KUBE-* chains (and the jumps to them), when there were none before our first up.
remove_kubelet_chains() {
  [[ $(cat "$FTO_STATE/preexisting-kube-chains" 2>/dev/null) == 0 ]] || return 0
  local ipt table rule chain
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || continue
    for table in filter nat mangle; do
      while IFS= read -r rule; do
        # shellcheck disable=SC2086 # a saved rule, split into its words
        "$ipt" -t "$table" -D ${rule#-A } 2>/dev/null || true
      done < <("$ipt-save" -t "$table" 2>/dev/null | grep -E '^-A [^K][^ ]* .*-j KUBE-' || true)
      for chain in $("$ipt-save" -t "$table" 2>/dev/null | sed -n 's/^:\(KUBE-[^ ]*\) .*/\1/p'); do
        "$ipt" -t "$table" -F "$chain" 2>/dev/null || true
      done
      for chain in $("$ipt-save" -t "$table" 2>/dev/null | sed -n 's/^:\(KUBE-[^ ]*\) .*/\1/p'); do
        "$ipt" -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
}

# --- certificates, tokens, kubeconfigs ----------------------------------------------------------
# sign NAME CN ORG SANS: a leaf certificate signed by our CA.
sign() {
  local name=$1 cn=$2 org=$3 sans=$4 subj="/CN=$2"
  [[ -n $org ]] && subj="/O=$org/CN=$cn"
  openssl genrsa -out "$PKI/$name.key" 2048 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  local ext="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth"
  [[ -n $sans ]] && ext+=$'\n'"subjectAltName=$sans"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -sha256 -out "$PKI/$name.crt" -extfile <(printf '%s\n' "$ext") 2>/dev/null
  rm -f "$PKI/$name.csr"
}

make_kubeconfig() {
  local file=$1 user=$2 token=$3
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: fto
  cluster:
    server: $API_URL
    certificate-authority-data: $(base64 -w0 <"$PKI/ca.crt")
users:
- name: $user
  user:
    token: $token
contexts:
- name: fto
  context: {cluster: fto, user: $user, namespace: default}
current-context: fto
EOF
  chmod 600 "$file"
}

make_pki() {
  [[ -s $PKI/done ]] && return 0
  log "generating certificates and tokens"
  mkdir -p "$PKI"; chmod 700 "$PKI"
  openssl genrsa -out "$PKI/ca.key" 2048 2>/dev/null
  openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=fto-local-ca" -days 3650 -sha256 -out "$PKI/ca.crt" 2>/dev/null
  sign apiserver kube-apiserver "" \
    "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:$KUBERNETES_SVC_IP,IP:$NODE_IP,IP:127.0.0.1"
  # The apiserver's client certificate for kubelet logs/exec (system:masters passes the kubelet's webhook authz).
  sign apiserver-kubelet-client kube-apiserver-kubelet-client system:masters ""
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  # Static tokens: the admin (system:masters) and one identity per component, so RBAC and the Node
  # authorizer see the same users as on a real cluster.
  local t_admin t_cm t_sched t_node
  t_admin=$(openssl rand -hex 24); t_cm=$(openssl rand -hex 24); t_sched=$(openssl rand -hex 24); t_node=$(openssl rand -hex 24)
  cat >"$PKI/tokens.csv" <<EOF
$t_admin,admin,admin-uid,system:masters
$t_cm,system:kube-controller-manager,kcm-uid
$t_sched,system:kube-scheduler,sched-uid
$t_node,system:node:$NODE_NAME,node-uid,system:nodes
EOF
  echo "$t_admin" >"$PKI/admin.token"
  make_kubeconfig "$PKI/controller-manager.kubeconfig" system:kube-controller-manager "$t_cm"
  make_kubeconfig "$PKI/scheduler.kubeconfig" system:kube-scheduler "$t_sched"
  make_kubeconfig "$PKI/kubelet.kubeconfig" "system:node:$NODE_NAME" "$t_node"
  make_kubeconfig "$PKI/admin.kubeconfig" admin "$t_admin"
  chmod 600 "$PKI"/*.key "$PKI/tokens.csv" "$PKI/admin.token"
  echo ok >"$PKI/done"
}

# Per-`up` files derived from the PKI: the admin kubeconfig at its documented path, and the
# controller-manager's readable copies (binary included: the cache may sit under root's 0700 home).
install_pki() {
  install -m 600 "$PKI/admin.kubeconfig" "$KUBECONFIG_PATH"
  mkdir -p "$CM_DIR"
  install -m 755 "$BIN_DIR/kube-controller-manager" "$CM_DIR/kube-controller-manager"
  install -m 600 -o "${PV_OWNER%:*}" -g "${PV_OWNER#*:}" \
    "$PKI/controller-manager.kubeconfig" "$PKI/sa.key" "$PKI/ca.key" "$PKI/ca.crt" "$CM_DIR/"
}

# --- network ------------------------------------------------------------------------------------
net_up() {
  if [[ ! -e /run/netns/$NETNS ]]; then ip netns add "$NETNS"; fi
  if ! ip link show "$VETH" >/dev/null 2>&1; then
    ip link add "$VETH" type veth peer name "$VETH_PEER" netns "$NETNS"
    ip addr add "$NODE_IP/24" dev "$VETH"
    ip link set "$VETH" up
    ip -n "$NETNS" addr add "$NETNS_IP/24" dev "$VETH_PEER"
    ip -n "$NETNS" link set "$VETH_PEER" up
    ip -n "$NETNS" link set lo up
  fi
  # Service ClusterIPs are virtual: without kube-proxy nothing answers them, and a packet to an
  # unrouted 10.x address would leave through the default route. So: the rest of the service range is
  # unreachable, and only the `kubernetes` Service IP is translated (DNAT) to the apiserver, which is
  # what in-cluster clients (KUBERNETES_SERVICE_HOST=10.0.0.1, port 443) dial.
  ip route replace unreachable "$SERVICE_CIDR"
  # Host-network clients route first and translate after (OUTPUT), so they need a route for the IP.
  ip route replace "$KUBERNETES_SVC_IP/32" dev "$VETH" src "$NODE_IP"
  iptables -t nat -N FTO-SERVICES 2>/dev/null || iptables -t nat -F FTO-SERVICES
  iptables -t nat -A FTO-SERVICES -d "$KUBERNETES_SVC_IP/32" -p tcp --dport 443 \
    -j DNAT --to-destination "$NODE_IP:$API_PORT"
  local chain
  for chain in PREROUTING OUTPUT; do
    iptables -t nat -C "$chain" -j FTO-SERVICES 2>/dev/null || iptables -t nat -I "$chain" -j FTO-SERVICES
  done
  # The CNI bridge turns on ip_forward; keep pod traffic from being forwarded anywhere off the node.
  iptables -N FTO-FORWARD 2>/dev/null || iptables -F FTO-FORWARD
  iptables -A FTO-FORWARD -s "$POD_CIDR" ! -d "$POD_CIDR" -j REJECT
  iptables -A FTO-FORWARD -d "$POD_CIDR" ! -s "$POD_CIDR" -j REJECT
  iptables -C FORWARD -j FTO-FORWARD 2>/dev/null || iptables -I FORWARD -j FTO-FORWARD
}

net_down() {
  local chain
  for chain in PREROUTING OUTPUT; do
    while iptables -t nat -D "$chain" -j FTO-SERVICES 2>/dev/null; do :; done
  done
  iptables -t nat -F FTO-SERVICES 2>/dev/null && iptables -t nat -X FTO-SERVICES 2>/dev/null || true
  while iptables -D FORWARD -j FTO-FORWARD 2>/dev/null; do :; done
  iptables -F FTO-FORWARD 2>/dev/null && iptables -X FTO-FORWARD 2>/dev/null || true
  ip route del "$KUBERNETES_SVC_IP/32" 2>/dev/null || true
  ip route del unreachable "$SERVICE_CIDR" 2>/dev/null || true
  ip link del "$VETH" 2>/dev/null || true
  ip link del "$BRIDGE" 2>/dev/null || true
  [[ -e /run/netns/$NETNS ]] && ip netns del "$NETNS" 2>/dev/null || true
  if [[ -s $FTO_STATE/ip_forward.orig ]]; then cat "$FTO_STATE/ip_forward.orig" >/proc/sys/net/ipv4/ip_forward; fi
}

# --- configuration files ------------------------------------------------------------------------
write_configs() {
  mkdir -p "$CTRD_DIR" "$CTRD_ROOT" "$CNI_DIR/net.d" "$KUBELET_DIR" "$FTO_STATE/pod-logs"
  cat >"$CNI_DIR/net.d/10-fto.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "fto-pods",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$CNI_DIR/ipam",
              "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "loopback"}
  ]
}
EOF
  cat >"$CTRD_DIR/config.toml" <<EOF
# containerd for the local node only: its own root, state and socket, so it never meets another one.
version = 2
root = "$CTRD_ROOT"
state = "$CTRD_DIR/state"
[grpc]
  address = "$CTRD_SOCK"
[ttrpc]
  address = "$CTRD_DIR/containerd-ttrpc.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$CTRD_DIR/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # Required here: root lacks CAP_SYS_RESOURCE, and runc fails ("can't get final child's PID from
  # pipe: EOF") when asked to lower a container's oom_score_adj below ours.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$CNI_DIR/net.d"
EOF
  # Pods get a resolver that fails at once (no DNS here, and none may be queried off the machine).
  printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' >"$FTO_STATE/resolv.conf"
  cat >"$KUBELET_DIR/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine has cgroup v1 (required: the kubelet refuses it otherwise).
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://$CTRD_SOCK
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
resolvConf: $FTO_STATE/resolv.conf
podLogsDir: $FTO_STATE/pod-logs
# Renew the node lease every 2 s so the controller-manager's short grace period is safe.
nodeLeaseDurationSeconds: 8
nodeStatusUpdateFrequency: 2s
# A test machine's disk may be fuller than a real node's: never evict pods or GC our images for it.
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
EOF
}

# --- components ---------------------------------------------------------------------------------
start_etcd() {
  start_proc etcd etcd --name fto --data-dir "$FTO_STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "fto=http://127.0.0.1:$ETCD_PEER_PORT" --listen-metrics-urls "" --logger zap
  wait_for etcd 30 curl -fsS --max-time 1 "http://127.0.0.1:$ETCD_PORT/health"
}

start_apiserver() {
  start_proc kube-apiserver "$BIN_DIR/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port "$API_PORT" \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" --client-ca-file "$PKI/ca.crt" \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --token-auth-file "$PKI/tokens.csv" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --allow-privileged=true \
    --kubelet-preferred-address-types InternalIP \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --default-not-ready-toleration-seconds "$TOLERATION_SECONDS" \
    --default-unreachable-toleration-seconds "$TOLERATION_SECONDS"
  wait_for kube-apiserver 60 api "$API_URL/readyz"
}

start_heartbeat() {
  start_proc fto-node-heartbeat "$BIN_DIR/fto-node-heartbeat" --server "$API_URL" \
    --token-file "$PKI/admin.token" --ca-file "$PKI/ca.crt" --node "$VIRTUAL_NODE"
}

start_controllers() {
  local kc=$CM_DIR/controller-manager.kubeconfig
  start_proc kube-controller-manager setpriv --reuid "${PV_OWNER%:*}" --regid "${PV_OWNER#*:}" --clear-groups \
    "$CM_DIR/kube-controller-manager" \
    --kubeconfig "$kc" --authentication-kubeconfig "$kc" --authorization-kubeconfig "$kc" \
    --leader-elect=false --bind-address 127.0.0.1 \
    --service-account-private-key-file "$CM_DIR/sa.key" --root-ca-file "$CM_DIR/ca.crt" \
    --use-service-account-credentials \
    --cluster-signing-cert-file "$CM_DIR/ca.crt" --cluster-signing-key-file "$CM_DIR/ca.key" \
    --enable-hostpath-provisioner \
    --node-monitor-period 2s --node-monitor-grace-period "$NODE_GRACE"
  kc=$PKI/scheduler.kubeconfig
  start_proc kube-scheduler "$BIN_DIR/kube-scheduler" \
    --kubeconfig "$kc" --authentication-kubeconfig "$kc" --authorization-kubeconfig "$kc" \
    --leader-elect=false --bind-address 127.0.0.1
}

start_containerd() {
  start_proc containerd containerd --config "$CTRD_DIR/config.toml"
  wait_for containerd 30 ctr_ version
  # Re-imported on every start: a few MB, and a rebuilt one replaces the old.
  ctr_ images import "$BIN_DIR/pause-image.tar" >/dev/null
  ctr_ images import "$BIN_DIR/testbox-image.tar" >/dev/null
}

start_kubelet() {
  start_proc kubelet "$BIN_DIR/kubelet" \
    --config "$KUBELET_DIR/config.yaml" --kubeconfig "$PKI/kubelet.kubeconfig" \
    --root-dir "$KUBELET_DIR" --cert-dir "$KUBELET_DIR/pki" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP"
}

node_ready() {
  api "$API_URL/api/v1/nodes/$NODE_NAME" | python3 -c '
import json, sys
conds = json.load(sys.stdin)["status"].get("conditions", [])
sys.exit(0 if any(c["type"] == "Ready" and c["status"] == "True" for c in conds) else 1)'
}

ensure_storage_class() {
  api "$API_URL/apis/storage.k8s.io/v1/storageclasses/standard" >/dev/null 2>&1 && return 0
  api -X POST -H 'Content-Type: application/json' "$API_URL/apis/storage.k8s.io/v1/storageclasses" -d '{
    "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
    "metadata": {"name": "standard", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
    "provisioner": "kubernetes.io/host-path", "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate"}' >/dev/null
}

all_running() { local c; for c in "${COMPONENTS[@]}"; do is_running "$c" || return 1; done; }

cmd_up() {
  preflight
  local start=$SECONDS
  if all_running && api "$API_URL/readyz" >/dev/null 2>&1; then
    log "cluster already up (KUBECONFIG=$KUBECONFIG_PATH)"
    cmd_status
    return 0
  fi
  mkdir -p "$FTO_STATE" "$LOG_DIR" "$RUN_DIR"
  record_host_paths
  make_pki
  install_pki
  write_configs
  net_up
  mkdir -p "$HOSTPATH_PV_DIR"
  # Only re-own it if we created it (see PV_OWNER).
  grep -qx "$HOSTPATH_PV_DIR" "$FTO_STATE/preexisting-paths" || chown "$PV_OWNER" "$HOSTPATH_PV_DIR"
  log "starting etcd"; start_etcd
  log "starting kube-apiserver"; start_apiserver
  log "starting controller-manager, scheduler, containerd"
  start_heartbeat
  start_controllers
  start_containerd
  log "starting kubelet"; start_kubelet
  ensure_storage_class
  wait_for "node $NODE_NAME Ready" 90 node_ready
  # Pods are refused until the namespace's default ServiceAccount exists.
  wait_for "default ServiceAccount" 30 api "$API_URL/api/v1/namespaces/default/serviceaccounts/default"
  log "node $NODE_NAME Ready; cluster up in $((SECONDS - start)) s"
  echo "export KUBECONFIG=$KUBECONFIG_PATH"
}

# --- the node "vanishing" (spot reclaim) and coming back, for the disruption tests ---------------
kubepods_pids() {
  local d
  for d in /sys/fs/cgroup/pids/kubepods /sys/fs/cgroup/memory/kubepods /sys/fs/cgroup/kubepods.slice /sys/fs/cgroup/kubepods; do
    [[ -d $d ]] && { find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null; return 0; }
  done
}

# Kill every process of every pod at once (what a reclaimed machine does to them).
kill_pod_processes() {
  local pids
  pids=$(kubepods_pids | sort -u)
  # shellcheck disable=SC2086 # one pid per word
  [[ -n $pids ]] && kill -KILL $pids 2>/dev/null || true
}

# node-stop [--kill-pods]: the kubelet dies without a word (SIGKILL); with --kill-pods every pod's
# processes die too. The Node object stays; the controller-manager marks it unreachable.
cmd_node_stop() {
  require_root
  stop_proc kubelet KILL
  [[ ${1:-} == --kill-pods ]] && kill_pod_processes
  log "kubelet stopped${1:+ and pod processes killed}"
}

cmd_node_start() {
  require_root
  start_kubelet
  wait_for "node $NODE_NAME Ready" 90 node_ready
  log "kubelet started; node $NODE_NAME Ready"
}

# --- down ---------------------------------------------------------------------------------------
# Mount points under a directory, deepest first.
mounts_under() {
  local dir
  for dir in "$@"; do
    awk -v d="$dir" '{ m = $5; gsub(/\\040/, " ", m); if (m == d || index(m, d "/") == 1) print m }' /proc/self/mountinfo
  done | awk '{ print length($0) " " $0 }' | sort -rn | cut -d' ' -f2- | uniq
}

unmount_under() {
  local m
  while IFS= read -r m; do
    [[ -n $m ]] || continue
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
  done < <(mounts_under "$@")
}

# Remove the kubelet's cgroups (kubepods hierarchy) once nothing runs in them.
remove_kubepods_cgroups() {
  local ctrl
  for ctrl in /sys/fs/cgroup/*/; do
    [[ -d ${ctrl}kubepods ]] && find "${ctrl}kubepods" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
}

cmd_down() {
  require_root
  local purge=${1:-}
  [[ -d $FTO_STATE ]] || { log "cluster not up (no $FTO_STATE)"; return 0; }
  local start=$SECONDS
  stop_proc kubelet
  if is_running containerd; then
    # Pods' processes first (the kubelet is gone, nobody would stop them), then containerd's records
    # of them, so the images kept in the cache are all that survives.
    kill_pod_processes
    local t c
    for t in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true; done
    sleep 0.3
    for t in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$t" >/dev/null 2>&1 || true; done
    for c in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$c" >/dev/null 2>&1 || true; done
  fi
  stop_proc containerd
  # Shims outlive containerd by design; ours are the ones pointing at our socket.
  local pid
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $CTRD_SOCK" || true); do kill -KILL "$pid" 2>/dev/null || true; done
  kill_pod_processes
  stop_proc kube-scheduler
  stop_proc kube-controller-manager
  stop_proc fto-node-heartbeat
  # The apiserver must stop before etcd (the reverse hangs the apiserver's shutdown).
  stop_proc kube-apiserver
  stop_proc etcd
  # Pod network namespaces that our containerd made (cni-*), not ones that were there before.
  local nspath ns
  for nspath in /run/netns/cni-*; do
    [[ -e $nspath ]] || continue
    ns=${nspath##*/}
    grep -qx "$ns" "$FTO_STATE/preexisting-netns" 2>/dev/null && continue
    ip netns del "$ns" 2>/dev/null || { umount -l "/run/netns/$ns" 2>/dev/null; rm -f "/run/netns/$ns"; }
  done
  unmount_under "$FTO_STATE" "$CTRD_ROOT" /var/lib/kubelet /run/containerd
  net_down
  remove_kubelet_chains
  remove_kubepods_cgroups
  # `ip netns add` bind-mounts /run/netns onto itself the first time: undo that if it was us and it is empty.
  if ! grep -qx /run/netns "$FTO_STATE/preexisting-paths" 2>/dev/null && [[ -d /run/netns && -z $(ls -A /run/netns) ]]; then
    while mountpoint -q /run/netns; do umount /run/netns 2>/dev/null || umount -l /run/netns || break; done
    rmdir /run/netns 2>/dev/null || true
  fi
  local p
  for p in "${FIXED_HOST_PATHS[@]}"; do
    [[ $p == /run/netns ]] && continue
    grep -qx "$p" "$FTO_STATE/preexisting-paths" 2>/dev/null && continue
    [[ -e $p ]] && { mountpoint -q "$p" || rm -rf "$p"; }
  done
  # /var/lib/kubelet/device-plugins is made even with another --root-dir; remove it if it was ours.
  [[ -d /var/lib/kubelet/device-plugins ]] && ! grep -qx /var/lib/kubelet "$FTO_STATE/preexisting-paths" 2>/dev/null &&
    rm -rf /var/lib/kubelet/device-plugins
  [[ -z $(mounts_under "$FTO_STATE") ]] || die "mounts left under $FTO_STATE: $(mounts_under "$FTO_STATE" | tr '\n' ' ')"
  rm -rf "$FTO_STATE"
  if [[ $purge == --purge ]]; then
    unmount_under "$FTO_CACHE/containerd"
    rm -rf "$FTO_CACHE/containerd" "$PKI"
    log "removed the node's image store ($FTO_CACHE/containerd) and certificates ($PKI)"
  fi
  log "cluster down in $((SECONDS - start)) s"
}

# --- status -------------------------------------------------------------------------------------
cmd_status() {
  local c pid any=0
  for c in "${COMPONENTS[@]}"; do
    if is_running "$c"; then
      pid=$(pid_of "$c"); any=1
      printf '%-24s running  pid %-7s rss %s MiB\n' "$c" "$pid" "$(($(awk '/VmRSS/ {print $2}' "/proc/$pid/status") / 1024))"
    else
      printf '%-24s stopped\n' "$c"
    fi
  done
  ((any)) || { echo "cluster: down"; return 0; }
  if [[ -s $PKI/admin.token ]] && api "$API_URL/readyz" >/dev/null 2>&1; then
    echo "apiserver: $API_URL ready"
    if node_ready 2>/dev/null; then echo "node $NODE_NAME: Ready"; else echo "node $NODE_NAME: not Ready"; fi
  else
    echo "apiserver: not ready"
  fi
  echo "kubeconfig: $KUBECONFIG_PATH"
}

cmd_env() {
  local kubectl_dir=""
  for d in "$REPO_ROOT/.venv/bin" "${VIRTUAL_ENV:-/nonexistent}/bin"; do [[ -x $d/kubectl ]] && kubectl_dir=$d && break; done
  echo "export KUBECONFIG=$KUBECONFIG_PATH"
  echo "export PATH=$BIN_DIR${kubectl_dir:+:$kubectl_dir}:\$PATH"
}

# `hack/kind.sh up|load|down|status|env`: the kind cluster the e2e suite runs on. Sourced by hack/kind.sh.
# shellcheck shell=bash

OPERATOR_IMAGE=${FTO_KIND_OPERATOR_IMAGE:-localhost/finetune-operator:dev}
TRAINER_IMAGE=${FTO_KIND_TINY_IMAGE:-localhost/finetune-trainer:tiny}

# kind-config.yaml, plus what this host needs: kubelet >= 1.35 refuses cgroup v1 unless told not to.
kind_config() {
  local out=$KIND_STATE/kind-config.yaml
  cp "$REPO_ROOT/kind-config.yaml" "$out"
  if [[ ! -f /sys/fs/cgroup/cgroup.controllers ]]; then
    grep -q '^kubeadmConfigPatches:' "$out" && die "kind-config.yaml has top-level kubeadmConfigPatches: merge the cgroup v1 patch in hack/kind/cluster.sh"
    printf '%s\n' "# added by hack/kind/cluster.sh: this host has cgroup v1" "kubeadmConfigPatches:" "  - |" \
      "    kind: KubeletConfiguration" "    failCgroupV1: false" >>"$out"
  fi
  echo "$out"
}

kind_up() {
  require_root
  engine_up
  [[ $(image_key "$NODE_IMAGE") ]] || die "no node image: run hack/kind.sh build first"
  if kind get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
    kind export kubeconfig --name "$CLUSTER_NAME" --kubeconfig "$KIND_KUBECONFIG" >/dev/null 2>&1
    log "kind cluster $CLUSTER_NAME: already up"; return 0
  fi
  local start=$SECONDS
  kind create cluster --name "$CLUSTER_NAME" --config "$(kind_config)" --image "$NODE_IMAGE" \
    --kubeconfig "$KIND_KUBECONFIG" --wait 300s >"$KIND_STATE/logs/create.log" 2>&1 ||
    { tail -30 "$KIND_STATE/logs/create.log" >&2; die "kind create cluster failed: $KIND_STATE/logs/create.log"; }
  kubectl --kubeconfig "$KIND_KUBECONFIG" wait --for=condition=Ready pods --all -A --timeout=240s >/dev/null ||
    die "the kind cluster's system pods are not Ready"
  log "kind cluster $CLUSTER_NAME up in $((SECONDS - start)) s ($(kubectl --kubeconfig "$KIND_KUBECONFIG" get nodes --no-headers | wc -l) nodes)"
}

# The node (container) of a pool, from kind-config.yaml's finetune.dev/pool labels, or control-plane.
pool_node() {
  local sel="finetune.dev/pool=$1"
  [[ $1 == control-plane ]] && sel=node-role.kubernetes.io/control-plane
  kubectl --kubeconfig "$KIND_KUBECONFIG" get nodes -l "$sel" -o jsonpath='{.items[0].metadata.name}'
}

# import_into NODE IMAGE: stream the image from the OCI layout hack/cluster.sh images wrote (uncompressed
# layers) into the node's containerd, sending only the blobs it lacks; then drop the layer blobs that were
# unpacked, as kind's own containerd config does for pulled images (discard_unpacked_layers): the unpacked
# snapshots are what containers run from, and keeping both would double the 6.5 GB trainer on the node.
import_into() {
  local node=$1 image=$2 layout start=$SECONDS have
  layout=$(oci_layout "$image")
  [[ -f $layout/index.json ]] || die "$image is not built: run hack/cluster.sh images"
  have=$(mktemp)
  docker exec "$node" sh -c 'ctr -n k8s.io content ls -q; cat /var/lib/fto-discarded-layers 2>/dev/null || true' >"$have"
  python3 "$REPO_ROOT/hack/images/oci_delta.py" --layout "$layout" --ref "$image" --have "$have" \
    --zstd-over 67108864 --stats "$KIND_STATE/last-import.txt" | docker exec -i "$node" ctr -n k8s.io images import - >/dev/null ||
    { rm -f "$have"; die "importing $image into $node failed"; }
  rm -f "$have"
  docker exec "$node" sh -c "$(discard_layers_sh "$image")" || die "discarding $image's unpacked layers on $node failed"
  log "$image -> $node: $(cat "$KIND_STATE/last-import.txt") in $((SECONDS - start)) s"
}

# A shell loop over the manifest's layers, in the node (jq is in its rootfs).
discard_layers_sh() {
  cat <<SH
set -e
m=\$(ctr -n k8s.io images ls name=="$1" | awk 'NR == 2 {print \$3}')
have=\$(ctr -n k8s.io content ls -q)
ctr -n k8s.io content get "\$m" | jq -r '.layers[].digest' | while read -r d; do
  case "\$have" in *"\$d"*) ctr -n k8s.io content rm "\$d" >/dev/null; echo "\$d" >>/var/lib/fto-discarded-layers ;; esac
done
SH
}

# `hack/kind.sh load [POOL...]`: the operator into the control plane (where the e2e suite runs it), the
# trainer only into the workers of the pools given (default on-demand): each copy is ~6 GB of disk.
kind_load() {
  local pools=("$@") p
  docker_up && [[ -s $KIND_KUBECONFIG ]] || die "no kind cluster: run hack/kind.sh up first"
  ((${#pools[@]})) || pools=(on-demand)
  import_into "$(pool_node control-plane)" "$OPERATOR_IMAGE"
  for p in "${pools[@]}"; do import_into "$(pool_node "$p")" "$TRAINER_IMAGE"; done
}

kind_down() {
  require_root
  docker_up || [[ -d $KIND_STATE ]] || { log "kind: nothing to stop"; return 0; }
  engine_down
  log "kind: cluster deleted, engine stopped, host cleaned (images stay in $DOCKER_ROOT)"
}

kind_status() {
  docker_up || { echo "engine: down"; return 0; }
  echo "engine: up ($DOCKER_HOST)"
  kind get clusters 2>/dev/null | sed 's/^/cluster: /'
  docker ps --format 'node {{.Names}}: {{.Status}}'
}

kind_env() {
  echo "export DOCKER_HOST=$DOCKER_HOST KUBECONFIG=$KIND_KUBECONFIG PATH=$KIND_BIN:$BIN_DIR:\$PATH"
}

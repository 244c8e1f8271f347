# `hack/cluster.sh build`: Kubernetes binaries, helm and the pause image, cached by version.
# shellcheck shell=bash

K8S_COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler kubelet)

# go build with a progress line every 100 packages compiled (the cold build compiles ~2,500 packages and
# takes 10-20 min on 2 cores; silence that long looks like a hang).
go_build_progress() {
  local name=$1 out=$2; shift 2
  local start=$SECONDS n=0 line
  log "building $name ..."
  # -v prints each package as it is compiled (cached packages are not printed).
  if ! nice -n 10 go build -v -trimpath -o "$out.tmp" "$@" 2> >(
      while IFS= read -r line; do
        if [[ $line == *" "* || $line == *:* ]]; then printf '%s\n' "$line" >&2; continue; fi
        n=$((n + 1)); ((n % 100 == 0)) && log "  $name: $n packages compiled ($((SECONDS - start)) s)"
      done); then
    rm -f "$out.tmp"; die "building $name failed"
  fi
  mv "$out.tmp" "$out"
  log "built $name in $((SECONDS - start)) s"
}

build_k8s() {
  local version=$K8S_VERSION ldflags c
  ldflags=$(k8s_ldflags)
  for c in "${K8S_COMPONENTS[@]}"; do
    [[ -x $BIN_DIR/$c ]] && { log "$c $version: cached"; continue; }
    (cd "$CLUSTER_DIR/k8s" && CGO_ENABLED=0 go_build_progress "$c $version" "$BIN_DIR/$c" \
      -ldflags "$ldflags" "k8s.io/kubernetes/cmd/$c")
  done
}

build_helm() {
  # The stamp records how the binary was built: a cached helm from an older recipe is rebuilt once.
  local stamp="$HELM_VERSION capabilities-from-client-go"
  [[ -x $BIN_DIR/helm && $(cat "$BIN_DIR/helm.stamp" 2>/dev/null) == "$stamp" ]] &&
    { log "helm $HELM_VERSION: cached"; return; }
  local tmp; tmp=$(mktemp -d)
  # A throwaway module so the helm build does not touch the Kubernetes wrapper's go.mod. Like helm's own
  # Makefile, tell it which Kubernetes it was built against (from its client-go): otherwise `helm template`
  # and `helm lint` assume v1.20 and refuse charts that declare a newer kubeVersion.
  (cd "$tmp" && go mod init helm-build >/dev/null 2>&1 && go get "helm.sh/helm/v3@$HELM_VERSION" >/dev/null 2>&1 &&
    minor=$(go list -m -f '{{.Version}}' k8s.io/client-go | cut -d. -f2) &&
    flags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" &&
    for pkg in chartutil lint/rules; do
      flags+=" -X helm.sh/helm/v3/pkg/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/$pkg.k8sVersionMinor=$minor"
    done &&
    CGO_ENABLED=0 go_build_progress "helm $HELM_VERSION" "$BIN_DIR/helm" -ldflags "$flags" helm.sh/helm/v3/cmd/helm) \
    || { rm -rf "$tmp"; die "building helm failed"; }
  rm -rf "$tmp"
  echo "$stamp" > "$BIN_DIR/helm.stamp"
}

# Two one-file images, imported into containerd by every `up` (a few MB; no registry here):
#   the pod sandbox ("pause") image, and the testbox the harness tests run. Rebuilt when their source changes.
PAUSE_IMAGE=localhost/fto-pause:1
TESTBOX_IMAGE=localhost/fto-testbox:1
build_go_image() {
  local name=$1 tag=$2 tar=$BIN_DIR/$1-image.tar key
  key=$(cat "$CLUSTER_DIR/$name"/*.go "$CLUSTER_DIR/$name/go.mod" "$CLUSTER_DIR/docker_archive.py" | sha256sum | cut -c1-16)
  [[ -s $tar && $(cat "$tar.key" 2>/dev/null) == "$key" ]] && { log "$tag: cached"; return; }
  local tmp; tmp=$(mktemp -d)
  (cd "$CLUSTER_DIR/$name" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp/$name" .) || die "building $name failed"
  python3 "$CLUSTER_DIR/docker_archive.py" --tag "$tag" --entrypoint "/$name" \
    --file "$tmp/$name:$name:0755" --out "$tar.tmp" && mv "$tar.tmp" "$tar"
  echo "$key" >"$tar.key"
  rm -rf "$tmp"
  log "$tag built"
}

# The virtual node's heartbeat (see heartbeat/main.go); rebuilt when its source changes.
build_heartbeat() {
  local out=$BIN_DIR/fto-node-heartbeat key
  key=$(cat "$CLUSTER_DIR/heartbeat/main.go" "$CLUSTER_DIR/heartbeat/go.mod" | sha256sum | cut -c1-16)
  [[ -x $out && $(cat "$out.key" 2>/dev/null) == "$key" ]] && { log "fto-node-heartbeat: cached"; return; }
  (cd "$CLUSTER_DIR/heartbeat" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out" .) || die "building heartbeat failed"
  echo "$key" >"$out.key"
  log "fto-node-heartbeat built"
}

cmd_build() {
  require_cmds go python3
  go_env
  mkdir -p "$BIN_DIR"
  local start=$SECONDS
  log "Kubernetes $K8S_VERSION, helm $HELM_VERSION -> $BIN_DIR"
  build_go_image pause "$PAUSE_IMAGE"
  build_go_image testbox "$TESTBOX_IMAGE"
  build_heartbeat
  build_k8s
  build_helm
  log "build done in $((SECONDS - start)) s"
}

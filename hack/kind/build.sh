# `hack/kind.sh build`: everything a kind node image needs, built here from source and Debian packages (no
# container registry, no GitHub), cached in $KIND_CACHE. Sourced by hack/kind.sh.
# shellcheck shell=bash

# kind's own files (node entrypoint, systemd units, containerd config; the kindnetd and local-path
# manifests) come from the sigs.k8s.io/kind module zip in the Go module cache.
kind_module_dir() {
  go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])'
}

kind_go_env() {
  export GOTOOLCHAIN=${GOTOOLCHAIN:-local} GOPATH=$KIND_CACHE/go GOCACHE=$KIND_CACHE/go-build
  export GOMODCACHE=$KIND_CACHE/go/pkg/mod GOFLAGS="-mod=mod -buildvcs=false -modcacherw" CGO_ENABLED=0
  PATH=/usr/local/go/bin:$PATH
}

# built_or NAME CMD...: run the build (a command or a function) only when $KIND_BIN/NAME is missing.
built_or() {
  local name=$1; shift
  [[ -x $KIND_BIN/$name ]] && return 0
  local start=$SECONDS
  log "building $name ..."
  "$@" || die "building $name failed"
  [[ -x $KIND_BIN/$name ]] || die "building $name left no $KIND_BIN/$name"
  log "built $name in $((SECONDS - start)) s"
}

build_go_tools() {
  ( kind_go_env
    renice -n 10 -p "$BASHPID" >/dev/null
    local ld="-s -w"
    built_or kind env GOBIN="$KIND_BIN" go install -trimpath -ldflags "$ld" "sigs.k8s.io/kind@$KIND_VERSION"
    built_or crictl env GOBIN="$KIND_BIN" go install -trimpath \
      -ldflags "$ld -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
    built_or coredns env GOBIN="$KIND_BIN" go install -trimpath -ldflags "$ld" "github.com/coredns/coredns@$COREDNS_VERSION"
    # etcd's server module has replace directives, so it cannot be `go install`ed: a wrapper module.
    build_etcd() {
      local src=$KIND_CACHE/src/etcd; rm -rf "$src"; mkdir -p "$src"
      (cd "$src" && go mod init fto-kind/etcd >/dev/null 2>&1 &&
        for m in server/v3 api/v3 client/pkg/v3 client/v3 pkg/v3; do go get "go.etcd.io/etcd/$m@$ETCD_VERSION" >/dev/null 2>&1 || exit 1; done &&
        go build -trimpath -ldflags "$ld" -o "$KIND_BIN/etcd" go.etcd.io/etcd/server/v3)
    }
    built_or etcd build_etcd
    build_kindnetd() { (cd "$KIND_DIR/kindnetd" && go build -trimpath -ldflags "$ld" -o "$KIND_BIN/kindnetd" ./cmd/kindnetd); }
    built_or kindnetd build_kindnetd
    build_lpp() {
      local v=$LOCAL_PATH_PROVISIONER_VERSION src=$KIND_CACHE/src/local-path-provisioner dir
      dir=$(go mod download -json "github.com/rancher/local-path-provisioner@$v" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])') || return 1
      rm -rf "$src" && cp -r "$dir" "$src" && chmod -R u+w "$src" &&
        (cd "$src" && go build -trimpath -ldflags "$ld -X main.VERSION=$v" -o "$KIND_BIN/local-path-provisioner" .)
    }
    built_or local-path-provisioner build_lpp
    build_pause() { (cd "$CLUSTER_DIR/pause" && go build -trimpath -ldflags "$ld" -o "$KIND_BIN/pause" .); }
    built_or pause build_pause
    # Disk is the scarce resource on these machines, and the binaries are what is cached: the Go build and
    # module caches of these builds (≈ 6 GB) go. kind's module zip (base files, manifests) is fetched again
    # when needed: a few MB.
    if [[ -d $GOCACHE || -d $KIND_CACHE/src/etcd ]]; then
      go clean -modcache && rm -rf "$GOCACHE" "$KIND_CACHE/src/etcd" "$KIND_CACHE/src/local-path-provisioner"
    fi )
}

# kubeadm, kube-proxy and kubectl: the same Kubernetes version, module graph and ldflags as hack/cluster.sh
# build (whose module and build caches they share, so most packages are already compiled), from a copy of
# hack/cluster/k8s so the project's go.mod is not touched.
build_k8s_extra() {
  ( go_env
    renice -n 10 -p "$BASHPID" >/dev/null
    local src=$KIND_CACHE/src/k8s ld
    ld=$(k8s_ldflags)
    mkdir -p "$src"
    cp "$CLUSTER_DIR/k8s/go.mod" "$CLUSTER_DIR/k8s/go.sum" "$src/"
    sed -i 's|^module .*|module fto-kind/k8s|' "$src/go.mod"
    printf '//go:build tools\n\npackage tools\n\nimport (\n\t_ "k8s.io/kubernetes/cmd/kubeadm/app"\n\t_ "k8s.io/kubernetes/cmd/kube-proxy/app"\n\t_ "k8s.io/kubectl/pkg/cmd"\n)\n' >"$src/tools.go"
    export CGO_ENABLED=0
    local c
    for c in kubeadm kube-proxy kubectl; do
      build_one() { (cd "$src" && go build -trimpath -ldflags "$ld" -o "$KIND_BIN/$c" "k8s.io/kubernetes/cmd/$c"); }
      built_or "$c" build_one
    done )
}

# kind's base files with what this project's machines need (each change says why):
prepare_base_files() {
  local dest=$1 kd
  kd=$( (kind_go_env; kind_module_dir) ) || die "cannot download sigs.k8s.io/kind@$KIND_VERSION"
  rm -rf "$dest" && mkdir -p "$dest" && cp -r "$kd/images/base/files" "$dest/files" && chmod -R u+w "$dest"
  python3 - "$dest/files" "$PAUSE_TAG" <<'PY'
import pathlib, re, sys
files, pause = pathlib.Path(sys.argv[1]), sys.argv[2]
def edit(rel, old, new, count=1):
    p = files / rel
    text = p.read_text()
    if text.count(old) != count:
        sys.exit(f"kind base file {rel}: expected {count} x {old!r}; kind changed, revisit hack/kind/build.sh")
    p.write_text(text.replace(old, new))
cfg = "etc/containerd/config.toml"
# no fuse-overlayfs here (it is for rootless kind)
p = files / cfg
p.write_text(re.sub(r'\[proxy_plugins\]\n#[^\n]*\n\[proxy_plugins\."fuse-overlayfs"\]\n(  [^\n]*\n)+\n', "", p.read_text()))
(files / "etc/systemd/system/containerd-fuse-overlayfs.service").unlink()
# kubeadm 1.37's pause image (the node image holds that tag)
edit(cfg, 'sandbox_image = "registry.k8s.io/pause:3.10"', f'sandbox_image = "registry.k8s.io/pause:{pause}"')
# root here lacks CAP_SYS_RESOURCE: nothing may lower an oom_score_adj (the kubelet asks -997 for critical
# pods and runc would fail), so containerd clamps it instead, as rootless kind does
edit(cfg, "restrict_oom_score_adj = false", "restrict_oom_score_adj = true")
unit = "etc/systemd/system/containerd.service"
edit(unit, "ExecStart=/usr/local/bin/containerd", "ExecStart=/usr/bin/containerd")  # Debian's package
edit(unit, "OOMScoreAdjust=-999\n", "")  # same reason as restrict_oom_score_adj
# the node's own fix-ups (hack/kind/node/fto-node-fixups.sh) around kind's network set-up
ep = "usr/local/bin/entrypoint"
edit(ep, "# validate state\n", "source /usr/local/bin/fto-node-fixups.sh\n\n# validate state\n")
edit(ep, "select_iptables\nenable_network_magic\n", "fto_node_fixups\nselect_iptables\nenable_network_magic\nfto_no_egress\n")
PY
  cp "$KIND_DIR/node/fto-node-fixups.sh" "$dest/files/usr/local/bin/fto-node-fixups.sh"
  cp "$KIND_DIR/node/Dockerfile" "$KIND_BIN/crictl" "$dest/"
}

# Image labels record what an image was built from, so a changed input rebuilds it and nothing else.
image_key() { docker image inspect -f '{{index .Config.Labels "fto.key"}}' "$1" 2>/dev/null || true; }

# Bump ROOTFS_RECIPE when changing how the rootfs is made (it is part of the cache key with the packages).
ROOTFS_RECIPE=1
ROOTFS_PACKAGES=systemd,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,bash,ca-certificates,curl,jq,procps,e2fsprogs,containerd,runc,containernetworking-plugins,busybox-static,iputils-ping

# Step 1: the node's root filesystem, debootstrap from the Debian mirror apt already uses (a cached tar).
build_rootfs() {
  local key tar
  key=$(printf '%s\n' "$ROOTFS_RECIPE" "$ROOTFS_PACKAGES" | sha256sum | cut -c1-16)
  tar=$KIND_CACHE/rootfs-bookworm-$key.tar
  if [[ ! -s $tar ]]; then
    local root start=$SECONDS mirror
    mirror=$(debian_mirror)
    root=$(mktemp -d "$KIND_CACHE/rootfs.XXXXXX")
    log "debootstrap bookworm for the kind node (minbase + $ROOTFS_PACKAGES) ..."
    nice -n 10 debootstrap --variant=minbase --include="$ROOTFS_PACKAGES" bookworm "$root" "$mirror" \
      >"$KIND_CACHE/debootstrap.log" 2>&1 || { rm -rf "$root"; die "debootstrap failed: $KIND_CACHE/debootstrap.log"; }
    grep -q " $root/" /proc/mounts && die "something is still mounted under $root"
    chroot "$root" apt-get clean
    rm -rf "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/* \
      "$root"/var/log/* "$root"/var/cache/debconf/*-old "$root"/tmp/* "$root"/var/tmp/*
    : >"$root/etc/machine-id"
    tar --numeric-owner --xattrs -C "$root" -cf "$tar.tmp" . && mv "$tar.tmp" "$tar"
    rm -rf "$root"
    log "kind node rootfs $(du -h "$tar" | cut -f1) in $((SECONDS - start)) s"
  fi
  [[ $(image_key "$ROOTFS_IMAGE") == "$key" ]] && return 0
  docker import --change "LABEL fto.key=$key" "$tar" "$ROOTFS_IMAGE" >/dev/null
  log "$ROOTFS_IMAGE imported"
}

# Step 2: kind's base image on that root filesystem.
build_base() {
  local ctx=$KIND_CACHE/src/base key
  prepare_base_files "$ctx"
  key=$( (cd "$ctx" && find . -type f -print0 | sort -z | xargs -0 sha256sum; image_key "$ROOTFS_IMAGE") | sha256sum | cut -c1-16)
  [[ $(image_key "$BASE_IMAGE") == "$key" ]] && return 0
  docker build -q --network none --label "fto.key=$key" --build-arg "ROOTFS_IMAGE=$ROOTFS_IMAGE" \
    -t "$BASE_IMAGE" "$ctx" >"$KIND_CACHE/build-base.log" 2>&1 || { tail -20 "$KIND_CACHE/build-base.log" >&2; die "building $BASE_IMAGE failed"; }
  log "$BASE_IMAGE built"
}

# Step 3: the images a node preloads, each built from a binary, under the names kubeadm and kind use.
NODE_PRELOAD=()
build_preload_images() {
  local ctx=$KIND_CACHE/src/preload r=registry.k8s.io
  rm -rf "$ctx" && mkdir -p "$ctx/static/etc/ssl/certs" "$ctx/static/tmp" && chmod 1777 "$ctx/static/tmp"
  # static: what distroless gives the control plane's binaries (users, nsswitch, CA bundle, /tmp)
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$ctx/static/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$ctx/static/etc/group"
  printf 'hosts: files dns\n' >"$ctx/static/etc/nsswitch.conf"
  cp /etc/ssl/certs/ca-certificates.crt "$ctx/static/etc/ssl/certs/"
  printf 'FROM scratch\nCOPY static/ /\nENV PATH=/usr/local/bin:/usr/bin:/bin\n' >"$ctx/Dockerfile.static"
  docker build -q --network none -f "$ctx/Dockerfile.static" -t localhost/kind-static:1 "$ctx" >/dev/null || die "building the static base failed"
  # net: kube-proxy and kindnetd run iptables; like kubernetes-sigs/iptables-wrappers, use the backend
  # (legacy or nft) the node already uses
  cat >"$ctx/iptables-wrapper" <<'SH'
#!/bin/sh
legacy=$( (iptables-legacy-save || true; ip6tables-legacy-save || true) 2>/dev/null | grep -c '^-' || true)
nft=$( (timeout 5 sh -c "iptables-nft-save; ip6tables-nft-save" || true) 2>/dev/null | grep -c '^-' || true)
if [ "${legacy:-0}" -ge "${nft:-0}" ]; then mode=legacy; else mode=nft; fi
for c in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
  ln -sf /usr/sbin/xtables-$mode-multi /usr/local/sbin/$c.new && mv -f /usr/local/sbin/$c.new /usr/local/sbin/$c
done
exec /usr/local/sbin/$(basename "$0") "$@"
SH
  chmod 0755 "$ctx/iptables-wrapper"
  printf 'FROM %s\nCOPY iptables-wrapper /usr/local/sbin/iptables-wrapper\nRUN for c in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do ln -s iptables-wrapper /usr/local/sbin/$c; done\nENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n' \
    "$ROOTFS_IMAGE" >"$ctx/Dockerfile.net"
  docker build -q --network none -f "$ctx/Dockerfile.net" -t localhost/kind-net:1 "$ctx" >/dev/null || die "building the iptables base failed"
  one() {  # one TAG BASE BINARY DEST [EXTRA DOCKERFILE LINES]
    local tag=$1 base=$2 bin=$3 dest=$4 extra=${5:-} d src
    d=$ctx/$(echo "$tag" | tr '/:' '__'); mkdir -p "$d"
    src=$KIND_BIN/$bin; [[ -x $src ]] || src=$BIN_DIR/$bin; [[ -x $src ]] || die "missing binary $bin"
    cp "$src" "$d/$bin"
    printf 'FROM %s\nCOPY %s %s\n%b\n' "$base" "$bin" "$dest" "$extra" >"$d/Dockerfile"
    docker build -q --network none -t "$tag" "$d" >/dev/null || die "building $tag failed"
    NODE_PRELOAD+=("$tag")
  }
  NODE_PRELOAD=()
  one "$r/kube-apiserver:$K8S_VERSION" localhost/kind-static:1 kube-apiserver /usr/local/bin/kube-apiserver
  one "$r/kube-controller-manager:$K8S_VERSION" localhost/kind-static:1 kube-controller-manager /usr/local/bin/kube-controller-manager
  one "$r/kube-scheduler:$K8S_VERSION" localhost/kind-static:1 kube-scheduler /usr/local/bin/kube-scheduler
  one "$r/kube-proxy:$K8S_VERSION" localhost/kind-net:1 kube-proxy /usr/local/bin/kube-proxy
  one "$r/etcd:$ETCD_TAG" localhost/kind-static:1 etcd /usr/local/bin/etcd
  one "$r/coredns/coredns:$COREDNS_TAG" localhost/kind-static:1 coredns /coredns 'EXPOSE 53 53/udp\nENTRYPOINT ["/coredns"]'
  one "$r/pause:$PAUSE_TAG" scratch pause /pause 'ENTRYPOINT ["/pause"]'
  one "$KINDNETD_IMAGE" localhost/kind-net:1 kindnetd /bin/kindnetd 'CMD ["/bin/kindnetd"]'
  one "$LOCAL_PATH_PROVISIONER_IMAGE" localhost/kind-static:1 local-path-provisioner /usr/local/bin/local-path-provisioner 'ENTRYPOINT ["/usr/local/bin/local-path-provisioner"]'
  # local-path's helper pod runs sh, mkdir and rm: the rootfs has them
  docker tag "$ROOTFS_IMAGE" "$LOCAL_PATH_HELPER_IMAGE"
  NODE_PRELOAD+=("$LOCAL_PATH_HELPER_IMAGE")
}

# Step 4: the node image, doing what `kind build node-image` does minus its pulls (it always fetches etcd,
# coredns, pause, kindnetd and local-path from registries): the base image with kubeadm, kubelet and
# kubectl, kind's manifests, and the preloaded images imported (pinned) into the node's containerd.
build_node() {
  local key manifests=$KIND_CACHE/src/manifests
  key=$( (sha256sum "$KIND_BIN"/* "$BIN_DIR"/kube-apiserver "$BIN_DIR"/kube-controller-manager "$BIN_DIR"/kube-scheduler "$BIN_DIR"/kubelet;
    image_key "$BASE_IMAGE"; cat "$KIND_DIR/versions.env"; declare -f build_node build_preload_images) | sha256sum | cut -c1-16)
  [[ $(image_key "$NODE_IMAGE") == "$key" ]] && { log "$NODE_IMAGE: cached ($key)"; return 0; }
  local start=$SECONDS
  build_preload_images
  local kd; kd=$( (kind_go_env; kind_module_dir) )
  python3 "$KIND_DIR/kind_manifests.py" "$kd" "$manifests" || die "cannot read kind's default manifests"
  local id=fto-kind-node-build
  docker rm -f -v "$id" >/dev/null 2>&1 || true
  docker run -d --name "$id" --entrypoint=sleep --security-opt seccomp=unconfined --network none "$BASE_IMAGE" infinity >/dev/null
  x() { docker exec -i "$id" "$@"; }
  local b
  for b in kubeadm kubelet kubectl; do
    local f=$KIND_BIN/$b; [[ -x $f ]] || f=$BIN_DIR/$b
    docker cp "$f" "$id:/usr/bin/$b" && x chmod 0755 "/usr/bin/$b"
  done
  echo -n "$K8S_VERSION" | x cp /dev/stdin /kind/version
  x mkdir -p /kind/manifests
  for b in default-cni default-storage; do x cp /dev/stdin "/kind/manifests/$b.yaml" <"$manifests/$b.yaml"; done
  x bash -c 'nohup containerd >/var/log/containerd-build.log 2>&1 &'
  x bash -c 'for i in $(seq 50); do ctr version >/dev/null 2>&1 && exit 0; sleep 0.2; done; cat /var/log/containerd-build.log; exit 1' ||
    die "containerd in the node image build did not start"
  docker save "${NODE_PRELOAD[@]}" | x ctr --namespace=k8s.io images import --all-platforms --no-unpack --digests - >/dev/null ||
    die "importing the preloaded images failed"
  # pinned: never garbage-collected by the kubelet (containerd 1.6 `ctr import` has no --label)
  for b in "${NODE_PRELOAD[@]}"; do x ctr --namespace=k8s.io images label "$b" io.cri-containerd.pinned=pinned >/dev/null; done
  local missing
  missing=$(comm -23 <(x kubeadm config images list --kubernetes-version "$K8S_VERSION" 2>/dev/null | sort) \
    <(x ctr --namespace=k8s.io images list -q | sort))
  [[ -z $missing ]] || die "kubeadm's images missing from the node image: $missing"
  x pkill containerd; sleep 1
  x rm -rf /var/log/containerd-build.log /tmp/* 2>/dev/null || true
  docker commit --change 'ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]' \
    --change 'ENV HTTP_PROXY="" HTTPS_PROXY="" NO_PROXY=""' --change "LABEL fto.key=$key" "$id" "$NODE_IMAGE" >/dev/null
  docker rm -f -v "$id" >/dev/null
  # the intermediate images are not needed once their layers are in the node image
  docker rmi "${NODE_PRELOAD[@]}" localhost/kind-static:1 localhost/kind-net:1 >/dev/null 2>&1 || true
  docker image prune -f >/dev/null
  log "$NODE_IMAGE built in $((SECONDS - start)) s ($(docker image inspect -f '{{.Size}}' "$NODE_IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
}

kind_build() {
  require_root
  mkdir -p "$KIND_BIN"
  [[ -x $BIN_DIR/kubelet ]] || die "Kubernetes is not built: run hack/cluster.sh build first"
  build_go_tools
  build_k8s_extra
  engine_up
  build_rootfs
  build_base
  build_node
}

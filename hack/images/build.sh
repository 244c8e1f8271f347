#!/usr/bin/env bash
# Build the project's container images without Docker or a registry, and load them into the local
# node's containerd. Usage: hack/images/build.sh [base|trainer|tiny|operator|standin|all] [--no-import]
#                           hack/images/build.sh import IMAGE...   (built by buildah with our --root)
#
#   base      Debian bookworm minbase + python3, python3-venv, ca-certificates (debootstrap), cached as a
#             tar keyed by its inputs, imported into buildah as localhost/debian:bookworm
#   trainer   trainer-image/Dockerfile  -> localhost/finetune-trainer:dev
#   tiny      trainer-image/Dockerfile.tiny (trainer + tiny offline model) -> localhost/finetune-trainer:tiny
#   operator  operator/Dockerfile       -> localhost/finetune-operator:dev
#   standin   bench/scale/standin/Dockerfile (the bench's sleeping stand-in trainer, on top of the operator
#             image, which is built first only if buildah lacks it) -> localhost/finetune-standin-trainer:dev;
#             not part of `all`
#
# Each Dockerfile is built by Debian's buildah (`bud --layers`), so an unchanged layer is reused; the
# image is then copied (skopeo) into a persistent OCI layout (unchanged blobs are not rewritten) and only the blobs
# containerd does not have yet are streamed to `ctr images import`: a code-only change sends one small layer.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../cluster/common.sh
source "$here/../cluster/common.sh"

IMAGES_CACHE=$FTO_CACHE/images
BUILDAH_ROOT=$FTO_CACHE/buildah/root
BUILDAH_RUNROOT=$FTO_CACHE/buildah/runroot
WHEELHOUSE=${FTO_WHEELHOUSE:-$FTO_CACHE/wheelhouse}
BASE_IMAGE=localhost/debian:bookworm
TAG=${FTO_IMAGE_TAG:-dev}
CTRD_SOCK=$FTO_STATE/containerd/containerd.sock
SUITE=bookworm
BASE_PACKAGES=python3,python3-venv,ca-certificates
BASE_RECIPE=1

bah() { buildah --root "$BUILDAH_ROOT" --runroot "$BUILDAH_RUNROOT" --storage-driver overlay "$@"; }

# --- base image --------------------------------------------------------------------------------
build_base() {
  require_cmds debootstrap buildah
  # The cache key covers what decides the rootfs: suite, packages, the trimming, and a recipe version
  # (bump BASE_RECIPE when changing how debootstrap is called).
  local key tar
  key=$(printf '%s\n' "$BASE_RECIPE" "$SUITE" "$BASE_PACKAGES" "$(declare -f trim_rootfs)" | sha256sum | cut -c1-16)
  tar=$IMAGES_CACHE/debian-$SUITE-$key.tar
  if [[ ! -s $tar ]]; then
    local root start=$SECONDS mirror
    mirror=$(debian_mirror)
    root=$(mktemp -d "$IMAGES_CACHE/rootfs.XXXXXX")
    log "debootstrap $SUITE (minbase + $BASE_PACKAGES) from the configured Debian mirror ..."
    nice -n 10 debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$root" "$mirror" \
      >"$IMAGES_CACHE/debootstrap.log" 2>&1 || { rm -rf "$root"; die "debootstrap failed: see $IMAGES_CACHE/debootstrap.log"; }
    [[ -d $root && $root == "$IMAGES_CACHE"/rootfs.* ]] || die "bad rootfs dir '$root'"
    trim_rootfs "$root"
    tar --numeric-owner --xattrs -C "$root" -cf "$tar.tmp" . && mv "$tar.tmp" "$tar"
    rm -rf "$root"
    log "base rootfs $(du -h "$tar" | cut -f1) in $((SECONDS - start)) s -> $tar"
  fi
  if [[ $(bah inspect --format '{{index .ImageAnnotations "fto.base.key"}}' "$BASE_IMAGE" 2>/dev/null) == "$key" ]]; then
    log "$BASE_IMAGE: cached ($key)"; return 0
  fi
  local ctr
  ctr=$(bah from scratch)
  bah add "$ctr" "$tar" / >/dev/null
  bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd /bin/bash \
    --annotation "fto.base.key=$key" "$ctr"
  bah commit -q --rm "$ctr" "$BASE_IMAGE" >/dev/null
  log "$BASE_IMAGE imported into buildah ($key)"
}

# Docs, man pages, locales, apt lists and logs are 40% of a minbase rootfs and never used in a pod.
# shellcheck disable=SC2115 # build_base checks the directory before calling this
trim_rootfs() {
  local r=$1
  rm -rf "$r"/usr/share/doc/* "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/usr/share/locale/* \
    "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/* "$r"/var/cache/debconf/*-old "$r"/var/log/* "$r"/dev/* \
    "$r"/etc/resolv.conf "$r"/etc/hostname
}

# --- pip settings passed into the build ---------------------------------------------------------
# pip inside the build must see what pip on the host sees (find-links, index URLs, CA bundle) plus the
# project's wheelhouse, but none of it may be baked into an image. So: a pip.conf written to a temp
# dir, with each local path bind-mounted read-only, and only its path given as a build ARG.
# With `offline` (1), pip may use only the wheelhouse and find-links: pip's resolver prefers an index over
# find-links for the same version, so without it every wheel of the wheelhouse is downloaded again.
PIP_MOUNTS=()
prepare_pip_config() {
  local dir=$1 offline=${2:-0} n=0 key value links=() cert="" index="" extra="" opts=()
  PIP_MOUNTS=()
  while IFS= read -r line; do
    key=${line%%=*}; value=${line#*=}; value=${value#\'}; value=${value%\'}
    case ${key##*.} in
      find-links) for p in $value; do links+=("$p"); done ;;
      cert) cert=$value ;;
      index-url) index=$value ;;
      extra-index-url) extra=$value ;;
      default-timeout|timeout|retries) opts+=("${key##*.} = $value") ;;
    esac
  done < <(pip config list 2>/dev/null || true)
  [[ -d $WHEELHOUSE ]] && links=("$WHEELHOUSE" "${links[@]}")
  local mounted=()
  for p in "${links[@]}"; do
    if [[ -d $p ]]; then
      PIP_MOUNTS+=(-v "$p:/mnt/pip/links$n:ro"); mounted+=("/mnt/pip/links$n"); n=$((n + 1))
    elif [[ $p == http* ]]; then mounted+=("$p"); fi
  done
  {
    echo "[global]"
    ((${#mounted[@]})) && echo "find-links = ${mounted[*]}"
    ((offline)) && echo "no-index = true"
    [[ -n $index ]] && echo "index-url = $index"
    [[ -n $extra ]] && echo "extra-index-url = $extra"
    if [[ -n $cert && -f $cert ]]; then PIP_MOUNTS+=(-v "$cert:/mnt/pip/ca.crt:ro"); echo "cert = /mnt/pip/ca.crt"; fi
    printf '%s\n' "${opts[@]}" "disable-pip-version-check = true" "no-cache-dir = true"
  } >"$dir/pip.conf"
  PIP_MOUNTS+=(-v "$dir/pip.conf:/mnt/pip/pip.conf:ro")
}

# --- Dockerfile builds --------------------------------------------------------------------------
build_dockerfile() {
  local name=$1 dockerfile=$2 image=$3
  [[ -f $REPO_ROOT/$dockerfile ]] || die "missing $dockerfile"
  local start=$SECONDS offline=0
  # Wheelhouse first (offline); if something is missing there, again with the index (layers are cached).
  [[ -n $(ls -A "$WHEELHOUSE" 2>/dev/null) && ${FTO_PIP_OFFLINE:-auto} != 0 ]] && offline=1
  log "building $image from $dockerfile (buildah, layers cached) ..."
  while ! bud_once "$name" "$dockerfile" "$image" "$offline"; do
    if ((offline)) && [[ ${FTO_PIP_OFFLINE:-auto} == auto ]]; then
      log "  the wheelhouse lacks something: building again with the package index"; offline=0; continue
    fi
    tail -20 "$IMAGES_CACHE/$name-build.log" >&2; die "building $image failed (log: $IMAGES_CACHE/$name-build.log)"
  done
  log "built $image in $((SECONDS - start)) s"
}

EXTRA_BUILD_ARGS=()
bud_once() {
  local name=$1 dockerfile=$2 image=$3 offline=$4 tmp rc=0
  tmp=$(mktemp -d)
  prepare_pip_config "$tmp" "$offline"
  nice -n 10 buildah --root "$BUILDAH_ROOT" --runroot "$BUILDAH_RUNROOT" --storage-driver overlay \
    bud --isolation chroot --network host --layers --pull=false \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg PIP_CONFIG_FILE=/mnt/pip/pip.conf \
    "${PIP_MOUNTS[@]}" "${EXTRA_BUILD_ARGS[@]}" -f "$REPO_ROOT/$dockerfile" -t "$image" "${FTO_BUILD_CONTEXT:-$REPO_ROOT}" \
    >"$IMAGES_CACHE/$name-build.log" 2>&1 || rc=$?
  rm -rf "$tmp"
  return "$rc"
}

# --- import into the node's containerd, sending only the blobs it lacks --------------------------
# The image as an OCI layout in the cache (oci_layout): what the local node and the kind nodes import from.
write_layout() {
  local image=$1 layout
  layout=$(oci_layout "$image")
  mkdir -p "$layout"
  # skopeo, not `buildah push`: buildah re-exports and gzips every layer on each push (2.5 min for the
  # trainer even when nothing changed); skopeo reads the stored layers, keeps them uncompressed (so a
  # blob's digest is its diffID) and skips the blobs the layout already has.
  skopeo copy --quiet --dest-oci-accept-uncompressed-layers \
    "containers-storage:[overlay@$BUILDAH_ROOT+$BUILDAH_RUNROOT]$image" "oci:$layout:$image" >/dev/null
}

import_image() {
  local image=$1 layout start=$SECONDS
  write_layout "$image"
  [[ -S $CTRD_SOCK ]] || { log "node not up: $image built but not imported (run hack/cluster.sh up, then images)"; return 0; }
  layout=$(oci_layout "$image")
  local have
  have=$(ctr --address "$CTRD_SOCK" -n k8s.io content ls -q 2>/dev/null || true)
  python3 "$here/oci_delta.py" --layout "$layout" --ref "$image" --have <(printf '%s\n' "$have") \
    --stats "$IMAGES_CACHE/last-import.txt" |
    ctr --address "$CTRD_SOCK" -n k8s.io images import --no-unpack=false - >/dev/null
  dedupe_layout "$layout"
  log "imported $image into the node ($(cat "$IMAGES_CACHE/last-import.txt")) in $((SECONDS - start)) s"
}

# The layout's blobs are byte-identical to containerd's (uncompressed, same digest): hard-link them to
# containerd's read-only copies instead of keeping a second copy of a multi-GB image.
dedupe_layout() {
  local layout=$1 blob ours
  local content=$FTO_CACHE/containerd/root/io.containerd.content.v1.content/blobs/sha256
  [[ -d $content ]] || return 0
  for blob in "$layout"/blobs/sha256/*; do
    ours=$content/${blob##*/}
    [[ -f $ours && ! $blob -ef $ours ]] && ln -f "$ours" "$blob"
  done
  return 0
}

main() {
  require_root
  require_cmds buildah skopeo ctr python3 pip
  local what=${1:-all} import=1
  if [[ $what == import ]]; then
    # hack/images/build.sh import IMAGE...: import images built elsewhere into the same buildah storage.
    shift; local i; for i in "$@"; do import_image "$i"; done; return 0
  fi
  [[ ${2:-} == --no-import || ${1:-} == --no-import ]] && import=0
  [[ $what == --no-import ]] && what=all
  mkdir -p "$IMAGES_CACHE" "$BUILDAH_ROOT" "$BUILDAH_RUNROOT"
  local start=$SECONDS
  build_base
  if [[ $what == trainer || $what == all ]]; then
    build_dockerfile trainer trainer-image/Dockerfile "localhost/finetune-trainer:$TAG"
    if ((import)); then import_image "localhost/finetune-trainer:$TAG"; else write_layout "localhost/finetune-trainer:$TAG"; fi
  fi
  if [[ $what == tiny || $what == all ]]; then
    # The demo/test image: the trainer + the tiny offline model, one small layer (cached) on top. Built
    # whenever the trainer is, so tests never run an old trainer under a new tag.
    EXTRA_BUILD_ARGS=(--build-arg "TRAINER_IMAGE=localhost/finetune-trainer:$TAG")
    build_dockerfile tiny trainer-image/Dockerfile.tiny "localhost/finetune-trainer:tiny"
    EXTRA_BUILD_ARGS=()
    if ((import)); then import_image "localhost/finetune-trainer:tiny"; else write_layout "localhost/finetune-trainer:tiny"; fi
  fi
  if [[ $what == operator || $what == all ]]; then
    build_dockerfile operator operator/Dockerfile "localhost/finetune-operator:$TAG"
    if ((import)); then import_image "localhost/finetune-operator:$TAG"; else write_layout "localhost/finetune-operator:$TAG"; fi
  fi
  if [[ $what == standin ]]; then
    # On the operator image as it is (another checkout's build of that tag is left alone): the stand-in
    # needs only its python, kubernetes client and finetune_api.status.
    if ! bah inspect "localhost/finetune-operator:$TAG" >/dev/null 2>&1; then
      build_dockerfile operator operator/Dockerfile "localhost/finetune-operator:$TAG"
    fi
    EXTRA_BUILD_ARGS=(--build-arg "OPERATOR_IMAGE=localhost/finetune-operator:$TAG")
    build_dockerfile standin bench/scale/standin/Dockerfile "localhost/finetune-standin-trainer:$TAG"
    EXTRA_BUILD_ARGS=()
    if ((import)); then import_image "localhost/finetune-standin-trainer:$TAG"; else write_layout "localhost/finetune-standin-trainer:$TAG"; fi
  fi
  log "images done in $((SECONDS - start)) s"
}

main "$@"

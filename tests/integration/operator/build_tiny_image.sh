#!/usr/bin/env bash
# Build localhost/finetune-trainer:tiny (the trainer image + the tiny model, Containerfile.tiny) with the same
# buildah storage as hack/images/build.sh and import only the blobs the node lacks (hack/images/oci_delta.py).
# Needs: hack/cluster.sh up && hack/cluster.sh images. Cached: seconds when nothing changed.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../../.." && pwd)
cache=${FTO_CACHE:-$HOME/.cache/finetune-operator}
state=${FTO_STATE:-/var/tmp/finetune-operator/cluster}
base=${FTO_TRAINER_IMAGE:-localhost/finetune-trainer:dev}
image=${FTO_TINY_IMAGE:-localhost/finetune-trainer:tiny}
sock=$state/containerd/containerd.sock
bah() { buildah --root "$cache/buildah/root" --runroot "$cache/buildah/runroot" --storage-driver overlay "$@"; }
start=$SECONDS
bah inspect "$base" >/dev/null 2>&1 || { echo "missing $base: run hack/cluster.sh images" >&2; exit 1; }
nice -n 10 buildah --root "$cache/buildah/root" --runroot "$cache/buildah/runroot" --storage-driver overlay \
  bud --isolation chroot --network host --layers --pull=false --build-arg "TRAINER_IMAGE=$base" \
  -f "$here/Containerfile.tiny" -t "$image" "$here" >"$cache/images/tiny-build.log" 2>&1 ||
  { tail -20 "$cache/images/tiny-build.log" >&2; exit 1; }
layout=$cache/images/oci/${image//[\/:]/_}
mkdir -p "$layout"
bah push -D --quiet "$image" "oci:$layout:$image" >/dev/null
have=$(ctr --address "$sock" -n k8s.io content ls -q 2>/dev/null || true)
python3 "$repo/hack/images/oci_delta.py" --layout "$layout" --ref "$image" --have <(printf '%s\n' "$have") \
  --stats "$cache/images/tiny-import.txt" |
  ctr --address "$sock" -n k8s.io images import --no-unpack=false - >/dev/null
echo "$image ready in $((SECONDS - start)) s ($(cat "$cache/images/tiny-import.txt"))"

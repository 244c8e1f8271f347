#!/usr/bin/env bash
# Build the pinned Kueue manager from the Go module proxy (sigs.k8s.io/kueue has no replace directives,
# so `go install module@version` builds exactly the released sources, checked against the checksum
# database). Cached by version and by this script's hash: a warm call prints the path and returns.
#
#   hack/cluster/kueue/build.sh        -> prints the cache dir: bin/kueue, crds/, webhooks.yaml, VERSION
#
# Cache: $FTO_CACHE/kueue/<version>/ (binary, the CRDs copied from the module), with the Go module and
# build caches in $FTO_CACHE/kueue/go{,-build} so nothing lands in the user's own Go directories.
set -euo pipefail
KUEUE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$KUEUE_DIR/versions.env"
FTO_CACHE=${FTO_CACHE:-$HOME/.cache/finetune-operator}
out=$FTO_CACHE/kueue/$KUEUE_VERSION
key=$(cat "$KUEUE_DIR/build.sh" "$KUEUE_DIR/versions.env" | sha256sum | cut -c1-16)
log() { printf '[%s] kueue: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [[ -x $out/bin/kueue && -s $out/crds/kueue-crds.yaml && -s $out/webhooks.yaml && $(cat "$out/key" 2>/dev/null) == "$key" ]]; then
  echo "$out"; exit 0
fi

export GOTOOLCHAIN=${GOTOOLCHAIN:-local} GOPATH=$FTO_CACHE/kueue/go GOCACHE=$FTO_CACHE/kueue/go-build
export GOMODCACHE=$FTO_CACHE/kueue/go/pkg/mod GOFLAGS=-buildvcs=false GOBIN=$out/bin.tmp CGO_ENABLED=0
PATH=/usr/local/go/bin:$PATH
mkdir -p "$out"
start=$SECONDS

# The proxy answers bursts of downloads with 429 Too Many Requests; a retry after a pause picks up where
# the last try stopped (downloaded modules and compiled packages are cached).
retry_go() {
  local try errlog; errlog=$(mktemp)
  for try in 1 2 3 4 5 6; do
    if nice -n 10 "$@" 2>"$errlog"; then rm -f "$errlog"; return 0; fi
    if grep -qiE '429|too many requests|timeout|connection reset|TLS handshake' "$errlog" && ((try < 6)); then
      log "proxy refused (try $try), retrying in $((try * 10)) s: $(grep -iE '429|too many|timeout|reset|TLS' "$errlog" | head -1)"
      sleep $((try * 10)); continue
    fi
    cat "$errlog" >&2; rm -f "$errlog"; return 1
  done
}

log "building sigs.k8s.io/kueue $KUEUE_VERSION (cold: downloads + compile, minutes) ..."
retry_go go mod download "sigs.k8s.io/kueue@$KUEUE_VERSION"
# Version stamp like upstream's Makefile, so `kueue --version`/the logs say what runs.
ldflags="-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION"
rm -rf "$out/bin.tmp"
retry_go go install -trimpath -ldflags "$ldflags" "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION"
rm -rf "$out/bin" && mv "$out/bin.tmp" "$out/bin"

# The CRDs ship inside the module (config/components/crd/bases); one file, applied by the harness.
src=$(go list -m -f '{{.Dir}}' "sigs.k8s.io/kueue@$KUEUE_VERSION" 2>/dev/null || echo "$GOMODCACHE/sigs.k8s.io/kueue@$KUEUE_VERSION")
mkdir -p "$out/crds"
for f in "$src"/config/components/crd/bases/*.yaml; do printf -- '---\n'; cat "$f"; done >"$out/crds/kueue-crds.yaml.tmp"
mv "$out/crds/kueue-crds.yaml.tmp" "$out/crds/kueue-crds.yaml"
# Kueue's webhook configurations (service-based); the harness points the ones it needs at 127.0.0.1.
cp "$src/config/components/webhook/manifests.yaml" "$out/webhooks.yaml"
echo "$KUEUE_VERSION" >"$out/VERSION"
echo "$key" >"$out/key"
log "built $KUEUE_VERSION in $((SECONDS - start)) s -> $out"
echo "$out"

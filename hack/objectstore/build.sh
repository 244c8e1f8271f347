#!/usr/bin/env bash
# Build the S3 server the tests run (Versity Gateway, posix backend) from the Go module proxy, cached by
# version: ~/.cache/finetune-operator/objectstore/<version>/bin/versitygw. Prints the binary's path.
# A warm call is instant; a cold one downloads the modules and compiles (see docs/object-store.md).
set -euo pipefail

VERSITYGW_VERSION=${VERSITYGW_VERSION:-v1.8.0}
CACHE=${FTO_CACHE:-$HOME/.cache/finetune-operator}/objectstore/$VERSITYGW_VERSION
BIN=$CACHE/bin/versitygw

log() { printf '[%s] objectstore: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [[ -x $BIN ]]; then echo "$BIN"; exit 0; fi

export GOTOOLCHAIN=${GOTOOLCHAIN:-local} GOPATH=$CACHE/go GOCACHE=$CACHE/go-build
export GOMODCACHE=$CACHE/go/pkg/mod GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0
PATH=/usr/local/go/bin:$PATH
mkdir -p "$CACHE/bin"

# The proxy answers bursts with 429 Too Many Requests: retry the download with backoff.
retry() {
  local attempt delay=5
  for attempt in 1 2 3 4 5 6; do
    "$@" && return 0
    log "attempt $attempt failed: $*; retrying in ${delay}s"
    sleep "$delay"; delay=$((delay * 2))
  done
  return 1
}

start=$SECONDS
log "building versitygw $VERSITYGW_VERSION -> $BIN"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
go mod init versitygw-build >/dev/null 2>&1
retry go get "github.com/versity/versitygw@$VERSITYGW_VERSION" >/dev/null
retry go mod download >/dev/null
nice -n 10 go build -trimpath -ldflags "-s -w" -o "$BIN.tmp" github.com/versity/versitygw/cmd/versitygw
mv "$BIN.tmp" "$BIN"
log "built versitygw $VERSITYGW_VERSION in $((SECONDS - start)) s"
echo "$BIN"

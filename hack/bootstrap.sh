#!/usr/bin/env bash
# Prepare the Python side of a fresh machine: a wheelhouse of every pinned package and a virtual
# environment built from it, both cached outside the repo so a second run (or a fresh clone) takes seconds.
#
#   hack/bootstrap.sh            # ensure wheelhouse + venv, link it as ./.venv, install the project (editable)
#   hack/bootstrap.sh --relock   # resolve again from pyproject.toml and rewrite constraints.txt
#
# Why a wheelhouse: the trainer image is built from the same wheels (no second 3 GB download), and PyPI's
# Linux torch wheel is the CUDA build whose nvidia-* dependencies are ≈3 GB.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${FTO_CACHE:-$HOME/.cache/finetune-operator}
wheelhouse=$cache/wheelhouse
python=${PYTHON:-python3}
extras="operator,trainer,dev"

log() { printf '[bootstrap] %s\n' "$*" >&2; }

"$python" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' \
  || { log "Python >= 3.11 is required (found $("$python" --version 2>&1)); set PYTHON=..."; exit 1; }

mkdir -p "$wheelhouse"
cd "$repo"

if [[ "${1:-}" == "--relock" ]]; then
  tmp=$(mktemp -d)
  log "resolving .[$extras] from scratch into $tmp"
  "$python" -m venv "$tmp/venv"
  "$tmp/venv/bin/pip" install -q --find-links "$wheelhouse" ".[$extras]"
  "$tmp/venv/bin/pip" freeze --exclude finetune-operator | sort > constraints.txt
  rm -rf "$tmp"
  log "wrote constraints.txt ($(wc -l < constraints.txt) pins)"
fi

# The venv is keyed by the lock and the interpreter: change either and a new one is built beside the old.
key=$( (cat constraints.txt; "$python" -c 'import sys; print(sys.version)'; echo "$extras") | sha256sum | cut -c1-16)
venv=$cache/venvs/$key
if [[ ! -x $venv/bin/python || ! -f $venv/.complete ]]; then
  log "downloading pinned wheels into $wheelhouse (cached; the first time is ≈3 GB)"
  "$python" -m pip download -q --disable-pip-version-check -d "$wheelhouse" -r constraints.txt
  log "building venv $venv from the wheelhouse"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check --no-index --find-links "$wheelhouse" \
    -r constraints.txt
  touch "$venv/.complete"
fi
ln -sfn "$venv" .venv
# Editable install of this checkout (seconds): re-pointed on every run, so any clone can use the cached venv.
.venv/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . >/dev/null
log "ready: $(readlink .venv) ($(.venv/bin/python --version))"

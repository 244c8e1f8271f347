#!/usr/bin/env bash
# Build localhost/finetune-trainer:tiny (trainer image + tiny offline model) and import it into the node.
# Kept for callers that build only this image; `hack/cluster.sh images` builds it too. Cached: seconds when
# nothing changed (buildah reuses the layer; only blobs the node lacks are sent).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
start=$SECONDS
"$repo/hack/images/build.sh" tiny
echo "localhost/finetune-trainer:tiny ready in $((SECONDS - start)) s"

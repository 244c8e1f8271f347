# `hack/cluster.sh images [base|trainer|operator|all] [--no-import]`: see hack/images/build.sh.
# shellcheck shell=bash
cmd_images() { "$REPO_ROOT/hack/images/build.sh" "$@"; }

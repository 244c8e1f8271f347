#!/usr/bin/env bash
# The README's first command. On a fresh machine (root, Debian, Go; no Docker needed) it:
#   1. builds what is missing, cached: Python venv, Kubernetes + helm from source, trainer/operator images
#   2. starts the local real cluster (hack/cluster.sh up)
#   3. installs the operator with real helm from charts/finetune-operator
#   4. applies examples/tiny-job.yaml (LoRA on the tiny offline GPT-2, CPU)
#   5. preempts it mid-run: `kubectl drain` evicts the trainer pod (SIGTERM -> emergency checkpoint)
#   6. uncordons the node (there is only one) and shows the next attempt resume from the last committed
#      checkpoint and the job succeed, printing `kubectl get ftj` as it goes
#   7. prints the operator's metrics
#
# Usage: hack/demo.sh          run the demo (again: reuses the running cluster and every cache)
#        hack/demo.sh down     stop the local cluster and remove what it put on this machine
# Environment: FTO_CACHE (caches, default ~/.cache/finetune-operator), DEMO_TIMEOUT (s per wait, 600).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

RELEASE=finetune-operator
OP_NS=finetune-system
NS=finetune-demo
JOB=tiny
MANIFEST=examples/tiny-job.yaml
TIMEOUT=${DEMO_TIMEOUT:-600}
FTO_CACHE_DIR=${FTO_CACHE:-$HOME/.cache/finetune-operator}
FTO_STATE_DIR=${FTO_STATE:-/var/tmp/finetune-operator/cluster}
DRAIN_AFTER_STEP=${DEMO_DRAIN_AFTER_STEP:-100} # preempt once a checkpoint at or after this step is committed

bold=$'\033[1m' dim=$'\033[2m' off=$'\033[0m'
[[ -t 1 ]] || bold="" dim="" off=""
T0=$SECONDS
step() { printf '\n%s==> [%4ds] %s%s\n' "$bold" $((SECONDS - T0)) "$*" "$off"; }
info() { printf '    %s\n' "$*"; }
die() {
  printf '\ndemo: %s\n' "$*" >&2
  diagnose >&2 || true
  printf '\nThe cluster is still up for a look (KUBECONFIG=%s). Clean up: hack/demo.sh down\n' "${KUBECONFIG:-?}" >&2
  exit 1
}

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }

case ${1:-run} in
  run) ;;
  down)
    step "Stopping the local cluster and cleaning the host (caches stay in ${FTO_CACHE:-~/.cache/finetune-operator})"
    exec hack/cluster.sh down
    ;;
  -h | --help | help) usage; exit 0 ;;
  *) usage >&2; exit 2 ;;
esac

[[ $(id -u) == 0 ]] || { echo "demo: run as root (the local cluster starts a kubelet, containerd and network namespaces)" >&2; exit 1; }

# ------------------------------------------------------------------------------------------- helpers
kc() { kubectl "$@"; }
ftj_line() { kc -n "$NS" get ftj "$JOB" --no-headers -o wide 2>/dev/null || true; }
jpath() { kc -n "$NS" get ftj "$JOB" -o "jsonpath=$1" 2>/dev/null || true; }

# Print `kubectl get ftj` (and the trainer pod) whenever it changes, until "$@" succeeds or TIMEOUT.
watch_until() {
  local what=$1; shift
  local deadline=$((SECONDS + TIMEOUT)) last="" line pods
  while ! "$@"; do
    line=$(ftj_line)
    pods=$(kc -n "$NS" get pods --no-headers 2>/dev/null | awk '{printf "%s %s %s; ", $1, $2, $3}')
    # print when something other than the AGE column changed
    if [[ "${line% *}|$pods" != "$last" ]]; then
      printf '    %s[%4ds]%s %s   %s%s%s\n' "$dim" $((SECONDS - T0)) "$off" "$line" "$dim" "${pods%; }" "$off"
      last="${line% *}|$pods"
    fi
    [[ $(jpath '{.status.phase}') == Failed && $what != *Failed* ]] && die "the job Failed: $(jpath '{.status.message}')"
    ((SECONDS < deadline)) || die "timed out after ${TIMEOUT}s waiting for: $what"
    sleep 1
  done
  printf '    %s[%4ds]%s %s\n' "$dim" $((SECONDS - T0)) "$off" "$(ftj_line)"
}

checkpoint_at_least() {
  local s; s=$(jpath '{.status.lastCheckpointStep}')
  [[ $(jpath '{.status.phase}') == Running && -n $s && $s -ge $1 ]]
}
attempt_above() { local a; a=$(jpath '{.status.attempt}'); [[ -n $a && $a -gt $1 ]]; }
phase_is() { [[ $(jpath '{.status.phase}') == "$1" ]]; }
attempt_training_after() {
  # the new attempt runs and has reported a step beyond the checkpoint it resumed from
  local a s; a=$(jpath '{.status.attempt}'); s=$(jpath '{.status.step}')
  [[ -n $a && $a -gt $1 && -n $s && $s -gt $2 ]] || phase_is Succeeded
}

diagnose() {
  [[ -n ${KUBECONFIG:-} ]] || return 0
  echo "---- kubectl get ftj,pods -n $NS"
  kc -n "$NS" get ftj,pods -o wide 2>&1 | sed 's/^/    /'
  echo "---- events in $NS (last 15)"
  kc -n "$NS" get events --sort-by=.lastTimestamp 2>&1 | tail -15 | sed 's/^/    /'
  echo "---- operator log (last 25 lines)"
  kc -n "$OP_NS" logs "deploy/$RELEASE" --tail=25 2>&1 | sed 's/^/    /'
}

operator_metrics() {
  # The operator image has Python: read /metrics from inside the pod (no Service routing or port-forward
  # needed on the local cluster, which has no kube-proxy).
  kc -n "$OP_NS" exec "deploy/$RELEASE" -- python3 -c \
    "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:8080/metrics',timeout=10).read().decode())"
}

# ------------------------------------------------------------------------------------------- build
step "1/8 Python environment (hack/bootstrap.sh; cached)"
hack/bootstrap.sh
export PATH=$repo/.venv/bin:$PATH

step "2/8 Host packages (etcd, containerd, runc, CNI, buildah; hack/cluster.sh tools)"
hack/cluster.sh tools

step "3/8 Kubernetes and helm from source (hack/cluster.sh build; cached; cold: 10-20 min on 2 cores)"
hack/cluster.sh build

step "4/8 Start the local cluster (hack/cluster.sh up)"
hack/cluster.sh up
eval "$(hack/cluster.sh env)"
command -v helm >/dev/null || die "helm missing after hack/cluster.sh build"
info "KUBECONFIG=$KUBECONFIG"
kc get nodes -o wide | sed 's/^/    /'

step "5/8 Trainer, tiny-model and operator images (hack/cluster.sh images: buildah, imported into the node; cached layers)"
hack/cluster.sh images
# (this also builds localhost/finetune-trainer:tiny: the trainer + the tiny offline model, a thin layer)

# ------------------------------------------------------------------------------------------- install
step "6/8 helm install the operator (charts/finetune-operator)"
kc create namespace "$NS" --dry-run=client -o yaml | kc apply -f - >/dev/null
upgrade=0
helm status "$RELEASE" -n "$OP_NS" >/dev/null 2>&1 && upgrade=1
# Scoped to the demo's namespace, so it never meets another operator (e.g. a test run's) on this cluster.
# For every namespace: --set operator.watchNamespaces=null
helm upgrade --install "$RELEASE" charts/finetune-operator -n "$OP_NS" --create-namespace \
  --set image.repository=localhost/finetune-operator --set image.tag=dev --set image.pullPolicy=Never \
  --set "operator.watchNamespaces={$NS}" --wait --timeout 5m | sed 's/^/    /'
if ((upgrade)); then
  # Same tag, maybe a rebuilt image: restart so the demo runs the code in this checkout.
  kc -n "$OP_NS" rollout restart "deployment/$RELEASE" >/dev/null
fi
kc -n "$OP_NS" rollout status "deployment/$RELEASE" --timeout=180s | sed 's/^/    /'
kc -n "$OP_NS" get pods -o wide | sed 's/^/    /'

# ------------------------------------------------------------------------------------------- the job
step "7/8 Fine-tune: apply $MANIFEST, preempt it mid-run, watch it resume"
if kc -n "$NS" get ftj "$JOB" >/dev/null 2>&1; then
  info "deleting the previous demo job"
  kc -n "$NS" delete ftj "$JOB" --wait=true --timeout=120s >/dev/null
fi
kc -n "$NS" apply -f "$MANIFEST" | sed 's/^/    /'
info "kubectl -n $NS get ftj -o wide   (printed whenever it changes)"
printf '    %s%s%s\n' "$dim" "$(kc -n "$NS" get ftj -o wide | head -1)" "$off"

watch_until "a committed checkpoint at step >= $DRAIN_AFTER_STEP" checkpoint_at_least "$DRAIN_AFTER_STEP"
pod=$(jpath '{.status.podName}')
attempt=$(jpath '{.status.attempt}')
ckpt=$(jpath '{.status.lastCheckpointStep}')
node=$(kc -n "$NS" get pod "$pod" -o jsonpath='{.spec.nodeName}')
info "trainer pod $pod (attempt $attempt) on node $node; last committed checkpoint: step $ckpt"

step "    Preempting: kubectl drain $node (only the trainer pod; Eviction API, like a node upgrade or spot rebalance)"
# --pod-selector keeps the operator itself on the node (the local cluster has one node); the trainer gets
# SIGTERM, writes an emergency checkpoint and exits 75; the operator classifies the end as a preemption.
kc drain "$node" --pod-selector="finetune.dev/job=$JOB" --ignore-daemonsets --delete-emptydir-data \
  --timeout=180s 2>&1 | sed 's/^/    /'
info "node cordoned: the next attempt waits (Pending) until the node is back"
watch_until "the operator to create the next attempt" attempt_above "$attempt"
step "    kubectl uncordon $node (the 'new node' arrives)"
kc uncordon "$node" | sed 's/^/    /'
resumed_from=$(jpath '{.status.lastCheckpointStep}')
watch_until "the next attempt to train past step $resumed_from" attempt_training_after "$attempt" "$resumed_from"
watch_until "Succeeded" phase_is Succeeded

# ------------------------------------------------------------------------------------------- results
step "8/8 Result"
kc -n "$NS" get ftj "$JOB" -o wide | sed 's/^/    /'
echo
info "restarts by cause: $(jpath '{.status.restarts}')   lost steps: $(jpath '{.status.lostSteps}')"
info "last checkpoint:   $(jpath '{.status.lastCheckpoint}')"
echo
info "what the operator decided (kubectl -n $NS get events --field-selector involvedObject.name=$JOB):"
uid=$(jpath '{.metadata.uid}')
kc -n "$NS" get events --field-selector "involvedObject.uid=$uid" --sort-by=.metadata.resourceVersion \
  -o custom-columns=REASON:.reason,MESSAGE:.message --no-headers 2>/dev/null | sed 's/^/      /'
last_pod=$(jpath '{.status.podName}')
if [[ -n $last_pod ]]; then
  echo
  info "the resumed trainer ($last_pod) says:"
  kc -n "$NS" logs "$last_pod" 2>/dev/null | grep -E '^\{' | grep -E '"event":"(resume_from|checkpoint_committed|final_written|exit)"' \
    | head -6 | cut -c1-180 | sed 's/^/      /' || true
fi
echo
info "operator metrics (finetune_*; histogram buckets left out):"
operator_metrics 2>/dev/null | grep -E '^finetune_' | grep -vE '_created|_bucket' | sed 's/^/      /' \
  || info "(could not read the operator's /metrics)"

cat <<EOF

${bold}Done in $((SECONDS - T0)) s.${off} The job was preempted by a drain, resumed from its last committed checkpoint and succeeded.

Explore:   eval "\$(hack/cluster.sh env)"; kubectl get ftj -A; kubectl describe ftj -n $NS $JOB
Clean up:  hack/demo.sh down        (stops the local cluster, removes what it put on this machine;
                                     caches stay in ${FTO_CACHE:-~/.cache/finetune-operator})
EOF

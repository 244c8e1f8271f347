{{/* Chart name, truncated to a DNS label. */}}
{{- define "finetune-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart>, or the release name when it already contains the chart name.
Truncated to 55 characters so suffixes such as "-metrics" keep names within 63.
*/}}
{{- define "finetune-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 55 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 55 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 55 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "finetune-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator pod (never change them in an upgrade: Deployment selectors are immutable). */}}
{{- define "finetune-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "finetune-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Common labels on every object. */}}
{{- define "finetune-operator.labels" -}}
helm.sh/chart: {{ include "finetune-operator.chart" . }}
{{ include "finetune-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: finetune-operator
{{- end }}

{{/* The operator's ServiceAccount name. */}}
{{- define "finetune-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "finetune-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create=false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The metrics Service's name and port name (ServiceMonitor selects the Service by labels, the port by name). */}}
{{- define "finetune-operator.metricsServiceName" -}}
{{- printf "%s-metrics" (include "finetune-operator.fullname" .) }}
{{- end }}
{{- define "finetune-operator.metricsPortName" -}}metrics{{- end }}

{{/* The operator image reference: repository@digest, else repository:tag (tag defaults to appVersion). */}}
{{- define "finetune-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Arguments of `finetune-operator` (the image's entrypoint; see operator/finetune_operator/main.py). */}}
{{- define "finetune-operator.args" -}}
{{- include "finetune-operator.scopeArgs" . }}
{{- with .Values.operator }}
- --metrics-port={{ .metricsPort }}
- --health-port={{ .healthPort }}
- --log-level={{ .logLevel }}
- --log-format={{ .logFormat }}
- --node-lost-seconds={{ .nodeLostSeconds }}
- --unreachable-toleration-seconds={{ .unreachableTolerationSeconds }}
{{- with .extraArgs }}
{{ toYaml . }}
{{- end }}
{{- end }}
{{- include "finetune-operator.leaderArgs" . }}
{{- end }}

{{/* Leader election flags (shared by the operator and the uninstall hook, which takes the lease first). */}}
{{- define "finetune-operator.leaderArgs" -}}
{{- if .Values.leaderElection.enabled }}
- --leader-election
- --leader-election-namespace={{ .Release.Namespace }}
- --leader-election-id={{ include "finetune-operator.leaseName" . }}
{{- end }}
{{- end }}

{{/* The coordination.k8s.io Lease the replicas elect their leader with. */}}
{{- define "finetune-operator.leaseName" -}}
{{- printf "%s-leader" (include "finetune-operator.fullname" .) }}
{{- end }}

{{/* --namespace flags (or --all-namespaces) for the scope the chart serves. */}}
{{- define "finetune-operator.scopeArgs" -}}
{{- if .Values.operator.watchNamespaces }}
{{- range .Values.operator.watchNamespaces }}
- --namespace={{ . }}
{{- end }}
{{- else }}
- --all-namespaces
{{- end }}
{{- end }}

{{/*
RBAC rules for objects in the namespaces whose FineTuneJobs the operator serves: a ClusterRole's rules in a
cluster-wide install, a Role's in each watched namespace otherwise. Each rule is used by the operator, and
tests/integration/chart/test_rbac.py fails when a rule (or a verb) has no use in operator/finetune_operator/
or kopf, or when the code uses an API the chart does not grant. No Secrets: trainer pods reference the HF
token Secret by name (secretKeyRef), which the kubelet resolves; the operator never reads it.
*/}}
{{- define "finetune-operator.jobNamespaceRules" -}}
# The FineTuneJobs: kopf lists and watches them (handlers, daemons) and patches its finalizer and
# bookkeeping annotations onto them; the reconcile loop reads each one.
- apiGroups: [finetune.dev]
  resources: [finetunejobs]
  verbs: [get, list, watch, patch]
# Phase, attempt, counters and budgets live in status. `get` is also needed because the per-job Role the
# operator creates grants the trainer get/patch on its job's status, and RBAC lets a subject grant only
# what it holds itself (no `escalate`).
- apiGroups: [finetune.dev]
  resources: [finetunejobs/status]
  verbs: [get, patch]
# Owned objects carry blockOwnerDeletion: where the OwnerReferencesPermissionEnforcement admission
# plugin is on (e.g. OpenShift), setting it needs update on the owner's finalizers subresource.
- apiGroups: [finetune.dev]
  resources: [finetunejobs/finalizers]
  verbs: [update]
# Trainer pods <job>-<attempt>: watched (kopf) and listed by label to classify how each ended (and to
# release orphans of deleted jobs); created per attempt (read back on 409 to adopt); deleted on
# suspend/node loss; patched for the last-checkpoint annotation and to release the pod finalizer.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, delete, patch]
# The checkpoint volume: read (whose is it?) and created; listed and watched into the operator's cache
# (a job waiting for the previous job's claim to go wakes on its deletion). Deleted with the job by the
# garbage collector (owner reference) when spec.checkpoint.deleteWithJob, never by the operator.
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get, list, watch, create]
# The trainer config rendered from the spec: created, replaced when an OOM changes the batch.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [create, update]
# The per-job ServiceAccount/Role/RoleBinding that let a trainer patch only its own job's status
# (created with the first attempt; a 409 means it exists). Listed and watched into the operator's cache
# (the slow resync lists them by the job label): a replacement pod whose three objects the cache shows
# does not send three creates that would each get a 409.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [list, watch, create]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [list, watch, create]
# Kubernetes Events for every decision (why a pod was replaced, what changed); kopf posts its warnings.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
# Kueue (jobs labelled kueue.x-k8s.io/queue-name; harmless where Kueue is not installed): one Workload per
# queued job, watched into the operator's cache (admission and eviction wake the job) and listed by its slow
# resync, read before a pass acts, created, deleted on suspend or when the next attempt needs other
# resources; its status patched to hand the quota back after an eviction and to mark it Finished.
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads]
  verbs: [get, list, watch, create, delete]
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads/status]
  verbs: [patch]
{{- end }}

{{/* What stays cluster-scoped in every install: reads of cluster-scoped objects only. */}}
{{- define "finetune-operator.clusterRules" -}}
# The trainer's node: NotReady/Unknown for too long means lost (counted as a preemption). Listed and
# watched into the operator's cache (readiness, the out-of-service taint, deletion wake the jobs there).
- apiGroups: [""]
  resources: [nodes]
  verbs: [get, list, watch]
# kopf's resource observer watches CRDs (to notice resources added at runtime); without this it retries
# the 403 with error logs at every start. Read-only; drop it if the operator sets scanning.disabled.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
# Kueue: the value of a job's kueue.x-k8s.io/priority-class (WorkloadPriorityClass), copied into its Workload;
# the admitted ResourceFlavors' node labels and tolerations, added to the trainer pod.
- apiGroups: [kueue.x-k8s.io]
  resources: [workloadpriorityclasses, resourceflavors]
  verbs: [get]
# Namespaces: a namespace being deleted wakes its jobs' loops (kopf stops watching a terminating namespace,
# so no job or pod event would); in a namespaced install kopf also matches its patterns against them.
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}

{{/* The uninstall hook's rules where the jobs live: release the finalizers of trainer pods and jobs. */}}
{{- define "finetune-operator.uninstallRules" -}}
- apiGroups: [""]
  resources: [pods]
  verbs: [list, patch]
- apiGroups: [finetune.dev]
  resources: [finetunejobs]
  verbs: [list, patch]
{{- end }}

{{/* Leader election: read, renew and (first time) create the Lease, in the release namespace. */}}
{{- define "finetune-operator.leaseRules" -}}
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [create]
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  resourceNames: [{{ include "finetune-operator.leaseName" . }}]
  verbs: [get, update]
{{- end }}

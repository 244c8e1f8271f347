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
{{- with .Values.operator }}
{{- if .watchNamespaces }}
{{- range .watchNamespaces }}
- --namespace={{ . }}
{{- end }}
{{- else }}
- --all-namespaces
{{- end }}
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
{{- end }}

{{/* Names ------------------------------------------------------------------------------- */}}

{{- define "kinfer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Fully qualified name. A release called "kinfer" gives "kinfer-operator"; a release whose name
already contains the chart name is used as is.
*/}}
{{- define "kinfer.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Release.Name $name -}}
{{- $name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kinfer.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kinfer.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kinfer.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The metrics Service's name; also the Prometheus "job" label when scraped by the ServiceMonitor. */}}
{{- define "kinfer.metricsServiceName" -}}
{{- printf "%s-metrics" (include "kinfer.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kinfer.leaseNamespace" -}}
{{- default .Release.Namespace .Values.leaderElection.namespace -}}
{{- end -}}

{{/* Labels --------------------------------------------------------------------------------- */}}

{{- define "kinfer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kinfer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "kinfer.labels" -}}
helm.sh/chart: {{ include "kinfer.chart" . }}
{{ include "kinfer.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kinfer
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Images --------------------------------------------------------------------------------- */}}

{{/* "repo:tag" or "repo@digest" (the digest wins); the tag defaults to the chart's appVersion. */}}
{{- define "kinfer.imageRef" -}}
{{- $img := .image -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default .root.Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

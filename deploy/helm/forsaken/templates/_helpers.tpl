{{/* The release's base name: the release name when it already contains the chart's. */}}
{{- define "forsaken.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "forsaken.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "forsaken.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "forsaken.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: forsaken
{{- end -}}

{{/* Selector labels of one component: server or client. */}}
{{- define "forsaken.selectorLabels" -}}
app.kubernetes.io/name: {{ include "forsaken.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "forsaken.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "forsaken.serverAddress" -}}
{{- if .Values.clients.serverAddress -}}
{{- .Values.clients.serverAddress -}}
{{- else -}}
{{- printf "%s-server:%d" (include "forsaken.fullname" .) (int .Values.server.service.port) -}}
{{- end -}}
{{- end -}}

{{- define "forsaken.minClients" -}}
{{- if kindIs "invalid" .Values.server.minClients -}}
{{- .Values.clients.replicas | int -}}
{{- else -}}
{{- .Values.server.minClients | int -}}
{{- end -}}
{{- end -}}

{{- define "forsaken.minCompleted" -}}
{{- if kindIs "invalid" .Values.server.minCompleted -}}
{{- max 1 (sub (int .Values.clients.replicas) 1) -}}
{{- else -}}
{{- .Values.server.minCompleted | int -}}
{{- end -}}
{{- end -}}

{{/* The health probe both daemons' pods run (python -m forsaken.health). */}}
{{- define "forsaken.probe" -}}
exec:
  command: {{ toJson .command }}
timeoutSeconds: 5
periodSeconds: {{ .period }}
failureThreshold: {{ .failures }}
{{- end -}}

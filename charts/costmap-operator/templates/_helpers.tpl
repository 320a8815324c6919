{{/*
The chart name, or nameOverride.
*/}}
{{- define "costmap-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The fully qualified name of the resources (also the Service's name). It is the
release name when that already contains the chart name, so `helm install
costmap-operator` gives the Service costmap-operator.
Truncated to 63 characters: some Kubernetes name fields are limited to that.
*/}}
{{- define "costmap-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "costmap-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every resource.
*/}}
{{- define "costmap-operator.labels" -}}
helm.sh/chart: {{ include "costmap-operator.chart" . }}
{{ include "costmap-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels: the operator's pods (Deployment, Service, PodDisruptionBudget,
anti-affinity). Never change them: a Deployment's selector is immutable.
*/}}
{{- define "costmap-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "costmap-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The image: repository:tag, the tag defaulting to the chart's appVersion.
*/}}
{{- define "costmap-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
The operator's ServiceAccount.
*/}}
{{- define "costmap-operator.serviceAccountName" -}}
{{- include "costmap-operator.fullname" . }}
{{- end }}

{{/*
The Lease through which the replicas elect a leader. Fixed by the operator (not
configurable): the RBAC grants get/update/patch on exactly this name.
*/}}
{{- define "costmap-operator.leaseName" -}}
costmap-operator
{{- end }}

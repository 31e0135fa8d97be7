{{/* Names and labels shared by every template. */}}

{{/* The chart's name, or nameOverride. */}}
{{- define "vmguard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* fullnameOverride, else <release>-<name> (just <release> when it contains the name). */}}
{{- define "vmguard.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "vmguard.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "vmguard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vmguard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "vmguard.labels" -}}
{{ include "vmguard.selectorLabels" . }}
app.kubernetes.io/part-of: vmguard
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The operator's ServiceAccount: serviceAccount.name, else the full name (created
with serviceAccount.create, else expected to exist). */}}
{{- define "vmguard.serviceAccountName" -}}
{{- default (include "vmguard.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* Whether the PodDisruptionBudget is rendered: podDisruptionBudget.enabled, or when
it is null, with more than one replica. */}}
{{- define "vmguard.pdb" -}}
{{- if kindIs "bool" .Values.podDisruptionBudget.enabled -}}
{{- ternary "true" "" .Values.podDisruptionBudget.enabled -}}
{{- else -}}
{{- ternary "true" "" (gt (int .Values.replicas) 1) -}}
{{- end -}}
{{- end -}}

{{/* The namespaces the operator watches, one per line (not with allNamespaces). */}}
{{- define "vmguard.namespaces" -}}
{{- $ns := .Values.watch.namespaces | default (list .Release.Namespace) -}}
{{- range $ns }}
{{ . }}
{{- end -}}
{{- end -}}

{{- define "vmguard.peering" -}}
{{- if kindIs "bool" .Values.peering.enabled -}}
{{- ternary "true" "" .Values.peering.enabled -}}
{{- else -}}
{{- ternary "true" "" (gt (int .Values.replicas) 1) -}}
{{- end -}}
{{- end -}}

{{/* Cluster-scoped objects carry the release namespace: two releases never collide. */}}
{{- define "vmguard.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "vmguard.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* An image reference from {repository, tag, digest} and the chart's appVersion:
repository@digest when a digest is given, else repository:tag (tag defaults to appVersion). */}}
{{- define "vmguard.image" -}}
{{- $img := index . 0 -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository ($img.tag | default (index . 1)) -}}
{{- end -}}
{{- end }}

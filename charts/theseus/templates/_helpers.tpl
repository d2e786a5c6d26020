{{/*
Names and labels shared by every template.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "theseus.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object name: fullnameOverride, or RELEASE-NAME, or
RELEASE when it already contains the chart name. 52 characters leave room
for the component suffixes ("-operator", "-halt-token").
*/}}
{{- define "theseus.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart label: NAME-VERSION */}}
{{- define "theseus.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; include with (dict "ctx" $ "component" "operator"). */}}
{{- define "theseus.labels" -}}
helm.sh/chart: {{ include "theseus.chart" .ctx }}
{{ include "theseus.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: theseus
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels; stable across upgrades. */}}
{{- define "theseus.selectorLabels" -}}
app.kubernetes.io/name: {{ include "theseus.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The image both components run. */}}
{{- define "theseus.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "theseus.operator.fullname" -}}
{{- printf "%s-operator" (include "theseus.fullname" .) }}
{{- end }}

{{- define "theseus.agent.fullname" -}}
{{- printf "%s-agent" (include "theseus.fullname" .) }}
{{- end }}

{{- define "theseus.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "theseus.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "theseus.agent.serviceAccountName" -}}
{{- if .Values.agent.serviceAccount.create }}
{{- default (include "theseus.agent.fullname" .) .Values.agent.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.agent.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding the halt token (key `token`). */}}
{{- define "theseus.haltSecretName" -}}
{{- default (printf "%s-halt-token" (include "theseus.fullname" .)) .Values.halt.secretName }}
{{- end }}

{{/* The halt ConfigMap the operator writes in its namespace (src/operator/halt.rs). */}}
{{- define "theseus.haltConfigMapName" -}}
theseus-halt
{{- end }}

{{/* Environment shared by both components: log level. */}}
{{- define "theseus.logEnv" -}}
{{- with .Values.logLevel }}
- name: RUST_LOG
  value: {{ . | quote }}
{{- end }}
{{- end }}

{{/*
The identities agents act as: the DaemonSet's ServiceAccount and, for
agents outside the cluster, each node's own client-certificate user or
ServiceAccount (agent.identity), confined by the admission policy.
*/}}
{{- define "theseus.agent.subjects" -}}
{{- if .Values.agent.enabled }}
- kind: ServiceAccount
  name: {{ include "theseus.agent.serviceAccountName" . }}
  namespace: {{ .Release.Namespace }}
{{- end }}
- kind: Group
  apiGroup: rbac.authorization.k8s.io
  name: {{ .Values.agent.identity.group | quote }}
- kind: Group
  apiGroup: rbac.authorization.k8s.io
  name: {{ printf "system:serviceaccounts:%s" .Values.agent.identity.serviceAccountNamespace | quote }}
{{- end }}

{{/*
The prefix of the cluster-wide objects tenants are bound to: ClusterRoles
PREFIX-admin, PREFIX-user, PREFIX-catalog and the policy PREFIX (the
operator's --tenant-prefix). Per release, so two releases never share them.
*/}}
{{- define "theseus.tenantPrefix" -}}
{{- printf "%s-tenant" (include "theseus.fullname" .) | trunc 200 | trimSuffix "-" }}
{{- end }}

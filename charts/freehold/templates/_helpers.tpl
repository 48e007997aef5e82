{{- define "freehold.name" -}}freehold-operator{{- end -}}

{{- define "freehold.labels" -}}
app.kubernetes.io/name: {{ include "freehold.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: freehold
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- with .Values.extraLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "freehold.selector" -}}
app.kubernetes.io/name: {{ include "freehold.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "freehold.annotations" -}}
{{- with .Values.extraAnnotations -}}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end -}}
{{- end -}}

{{/* registry/repository:tag or @digest, the digest winning */}}
{{- define "freehold.image" -}}
{{- $tag := default .root.Chart.AppVersion .image.tag -}}
{{- if .image.digest -}}
{{ .image.registry }}/{{ .image.repository }}@{{ .image.digest }}
{{- else -}}
{{ .image.registry }}/{{ .image.repository }}:{{ $tag }}
{{- end -}}
{{- end -}}

{{- define "freehold.namespaces" -}}
{{- if eq .Values.watch.mode "cluster" -}}
{{- list | toJson -}}
{{- else -}}
{{- default (list .Release.Namespace) .Values.watch.namespaces | toJson -}}
{{- end -}}
{{- end -}}

{{/*
The API calls the operator makes, and nothing more. tests/integration/operator
derives the calls from a real run and checks these rules cover exactly those.
*/}}
{{- define "freehold.rules" -}}
- apiGroups: [freehold.dev]
  resources: [modeldeployments]
  verbs: [list, watch, patch]
- apiGroups: [freehold.dev]
  resources: [modeldeployments/status]
  verbs: [patch]
# ownerReferences with blockOwnerDeletion need this where the
# OwnerReferencesPermissionEnforcement admission plugin is on (no API call is made).
- apiGroups: [freehold.dev]
  resources: [modeldeployments/finalizers]
  verbs: [update]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
# Always wanted, so never deleted by the operator (garbage collection does that).
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get, create, patch]
- apiGroups: [""]
  resources: [services]
  verbs: [get, create, patch, delete]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, create, patch, delete]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, create, patch, delete]
- apiGroups: [ray.io]
  resources: [rayservices]
  verbs: [get, create, patch]
{{- end -}}

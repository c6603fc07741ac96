{{/* The name every object of the release starts with. */}}
{{- define "vwire.fullname" -}}
{{- if contains "vwire" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-vwire" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "vwire.labels" -}}
app.kubernetes.io/name: vwire
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* selector COMPONENT: the labels that select one component's pods. */}}
{{- define "vwire.selector" -}}
app.kubernetes.io/name: vwire
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "vwire.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}

{{- define "vwire.trustDomain" -}}
{{ .Values.domain.trustDomain | default .Values.domain.name }}
{{- end -}}

{{/* The etcd client URLs the proxies use. */}}
{{- define "vwire.etcdEndpoints" -}}
{{- if eq .Values.etcd.mode "external" -}}
{{ join "," .Values.etcd.external.endpoints }}
{{- else -}}
{{- $name := printf "%s-etcd" (include "vwire.fullname" .) -}}
{{- $urls := list -}}
{{- range $i := until (int .Values.etcd.replicas) -}}
{{- $urls = append $urls (printf "https://%s-%d.%s.%s.svc:2379" $name $i $name $.Release.Namespace) -}}
{{- end -}}
{{ join "," $urls }}
{{- end -}}
{{- end -}}

{{/* The proxies' Service, in cluster DNS: where gateways reach them. */}}
{{- define "vwire.proxyAddress" -}}
{{ include "vwire.fullname" . }}-proxy.{{ .Release.Namespace }}.svc:{{ .Values.proxy.service.grpcPort }}
{{- end -}}

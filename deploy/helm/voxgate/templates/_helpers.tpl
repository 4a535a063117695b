{{/* Names and labels. */}}
{{- define "voxgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "voxgate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "voxgate.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "voxgate.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "voxgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "voxgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component (api, worker, redis): pass (list $ "api"). */}}
{{- define "voxgate.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "voxgate.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "voxgate.secretName" -}}
{{- default (include "voxgate.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "voxgate.redisHost" -}}
{{- printf "%s-redis" (include "voxgate.fullname" .) -}}
{{- end -}}

{{- define "voxgate.claimName" -}}
{{- default (printf "%s-data" (include "voxgate.fullname" .)) .Values.persistence.existingClaim -}}
{{- end -}}

{{/*
Environment of API and worker containers: VOXGATE_* settings as plain values, every secret
through secretKeyRef. A settings entry whose name looks like a secret fails the render.
*/}}
{{- define "voxgate.env" -}}
{{- $secret := include "voxgate.secretName" . -}}
{{- $keys := .Values.secrets.keys -}}
- name: VOXGATE_DATA_DIR
  value: {{ .Values.persistence.mountPath | quote }}
- name: VOXGATE_INPROCESS_WORKER
  value: "off"
{{- if .Values.redis.enabled }}
- name: VOXGATE_REDIS_URL
  value: {{ printf "redis://%s:6379/0" (include "voxgate.redisHost" .) | quote }}
{{- else }}
- name: VOXGATE_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $keys.redisUrl }}
{{- end }}
{{- if .Values.modelCache.enabled }}
- name: VOXGATE_CACHE_DIR
  value: {{ .Values.modelCache.mountPath | quote }}
{{- end }}
{{- with .Values.riva.uri }}
- name: VOXGATE_RIVA__URI
  value: {{ . | quote }}
{{- end }}
{{- if .Values.riva.useSsl }}
- name: VOXGATE_RIVA__USE_SSL
  value: "true"
{{- end }}
{{- with .Values.riva.ttsVoice }}
- name: VOXGATE_RIVA__TTS_VOICE
  value: {{ . | quote }}
{{- end }}
{{- with .Values.llm.baseUrl }}
- name: VOXGATE_LLM__BASE_URL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.llm.model }}
- name: VOXGATE_LLM__MODEL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.storage.url }}
- name: VOXGATE_STORAGE__URL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.storage.endpointUrl }}
- name: VOXGATE_STORAGE__ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.storage.region }}
- name: VOXGATE_STORAGE__REGION
  value: {{ . | quote }}
{{- end }}
{{- with .Values.metrics.openNetworks }}
- name: VOXGATE_METRICS_OPEN_NETWORKS
  value: {{ join "," . | quote }}
{{- end }}
{{- range $name, $value := .Values.settings }}
{{- if regexMatch "(API_KEYS?|SECRET|PASSWORD|REDIS_URL|ACCESS_KEY|KEY_ID|TOKEN)$" $name }}
{{- fail (printf "settings.%s looks like a secret: set it through `secrets` (a Secret), not as a plain value" $name) }}
{{- end }}
{{- if not (hasPrefix "VOXGATE_" $name) }}
{{- fail (printf "settings.%s: setting names start with VOXGATE_ (README \"Configuration\")" $name) }}
{{- end }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
- name: VOXGATE_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $keys.apiKeys }}
- name: VOXGATE_WEBHOOK_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $keys.webhookSecret }}
      optional: true
- name: VOXGATE_LLM__API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $keys.llmApiKey }}
      optional: true
- name: VOXGATE_RIVA__API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $keys.rivaApiKey }}
      optional: true
{{- if .Values.storage.url }}
- name: VOXGATE_STORAGE__ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $keys.s3AccessKeyId }}
      optional: true
- name: VOXGATE_STORAGE__SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $keys.s3SecretAccessKey }}
      optional: true
- name: VOXGATE_STORAGE__SESSION_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $keys.s3SessionToken }}
      optional: true
{{- end }}
{{- end -}}

{{/* Volumes and mounts shared by API and workers. */}}
{{- define "voxgate.volumes" -}}
- name: data
  {{- if .Values.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ include "voxgate.claimName" . }}
  {{- else }}
  emptyDir: {}
  {{- end }}
- name: tmp
  emptyDir: {}
- name: home-cache
  emptyDir: {}
{{- if .Values.modelCache.enabled }}
- name: model-cache
  {{- if .Values.modelCache.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ .Values.modelCache.existingClaim }}
  {{- else }}
  emptyDir:
    sizeLimit: {{ .Values.modelCache.sizeLimit }}
  {{- end }}
{{- end }}
{{- end -}}

{{- define "voxgate.volumeMounts" -}}
- name: data
  mountPath: {{ .Values.persistence.mountPath }}
- name: tmp
  mountPath: /tmp
- name: home-cache
  mountPath: /home/voxgate/.cache
{{- if .Values.modelCache.enabled }}
- name: model-cache
  mountPath: {{ .Values.modelCache.mountPath }}
{{- end }}
{{- end -}}

{{- define "voxgate.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/*
Names and labels.
*/}}
{{- define "genesys-kafka-bridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "genesys-kafka-bridge.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "genesys-kafka-bridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "genesys-kafka-bridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "genesys-kafka-bridge.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "genesys-kafka-bridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "genesys-kafka-bridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "genesys-kafka-bridge.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "genesys-kafka-bridge.secretName" -}}
{{- default (include "genesys-kafka-bridge.fullname" .) .Values.credentials.existingSecret -}}
{{- end -}}

{{- define "genesys-kafka-bridge.configDir" -}}/etc/genesys-kafka-bridge{{- end -}}
{{- define "genesys-kafka-bridge.secretDir" -}}/var/run/secrets/genesys-kafka-bridge{{- end -}}

{{/*
Checks that fail the render with the fix, rather than a pod that crash-loops.
*/}}
{{- define "genesys-kafka-bridge.validate" -}}
{{- if not (has .Values.mode (list "standalone" "sidecar")) -}}
{{- fail (printf "mode must be \"standalone\" or \"sidecar\", not %q" .Values.mode) -}}
{{- end -}}
{{- if not (has .Values.credentials.secretAs (list "env" "file")) -}}
{{- fail (printf "credentials.secretAs must be \"env\" or \"file\", not %q" .Values.credentials.secretAs) -}}
{{- end -}}
{{- $genesys := (.Values.config | default dict).genesys | default dict -}}
{{- if or $genesys.client_secret $genesys.client_id -}}
{{- fail "config.genesys.client_id / client_secret: set credentials.clientId and credentials.clientSecret (or credentials.existingSecret) instead; the ConfigMap is not secret" -}}
{{- end -}}
{{- if and (not .Values.topics) (not $genesys.topics) (not $genesys.topics_file) -}}
{{- fail "no topics: set `topics` (a list) or config.genesys.topics" -}}
{{- end -}}
{{- $grace := toString ((.Values.config | default dict).shutdown_grace | default "20s") -}}
{{- $secs := -1 -}}
{{- if regexMatch "^[0-9]+s$" $grace -}}
{{- $secs = trimSuffix "s" $grace | atoi -}}
{{- else if regexMatch "^[0-9]+m$" $grace -}}
{{- $secs = mul (trimSuffix "m" $grace | atoi) 60 -}}
{{- end -}}
{{- if ge $secs (int .Values.terminationGracePeriodSeconds) -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be above config.shutdown_grace (%s), or Kubernetes kills the bridge before it has flushed" (int .Values.terminationGracePeriodSeconds) $grace) -}}
{{- end -}}
{{- end -}}

{{/*
bridge.toml. Helm reads every number as a float, and the bridge's integer
keys refuse "6.0" (so does toToml's output), hence this small writer: whole
numbers as integers, strings JSON-quoted (a JSON string is a TOML basic
string), lists as arrays, maps below a section as inline tables.
*/}}
{{- define "genesys-kafka-bridge.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{- define "genesys-kafka-bridge.tomlValue" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}
{{- toJson $v -}}
{{- else if kindIs "bool" $v -}}
{{- $v -}}
{{- else if or (kindIs "float64" $v) (kindIs "float32" $v) -}}
{{- if eq (float64 (int64 $v)) (float64 $v) -}}{{ int64 $v }}{{- else -}}{{ $v }}{{- end -}}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) (kindIs "uint64" $v) -}}
{{- $v -}}
{{- else if kindIs "slice" $v -}}
[{{ range $i, $e := $v }}{{ if $i }}, {{ end }}{{ include "genesys-kafka-bridge.tomlValue" $e }}{{ end }}]
{{- else if kindIs "map" $v -}}
{ {{- range $i, $k := keys $v | sortAlpha }}{{ if $i }},{{ end }} {{ include "genesys-kafka-bridge.tomlKey" $k }} = {{ include "genesys-kafka-bridge.tomlValue" (index $v $k) }}{{ end }} }
{{- else -}}
{{- fail (printf "config: cannot write %v (%s) as TOML" $v (kindOf $v)) -}}
{{- end -}}
{{- end -}}

{{/* The effective config: the user's, plus the keys the chart owns. */}}
{{- define "genesys-kafka-bridge.config" -}}
{{- $cfg := deepCopy (.Values.config | default dict) -}}
{{- $genesys := $cfg.genesys | default dict -}}
{{- if .Values.topics -}}
{{- $_ := set $genesys "topics_file" (printf "%s/topics.txt" (include "genesys-kafka-bridge.configDir" .)) -}}
{{- end -}}
{{- if eq .Values.credentials.secretAs "file" -}}
{{- $_ := set $genesys "client_secret_file" (printf "%s/client-secret" (include "genesys-kafka-bridge.secretDir" .)) -}}
{{- end -}}
{{- $_ := set $cfg "genesys" $genesys -}}
{{- $admin := $cfg.admin | default dict -}}
{{- $_ := set $admin "listen" (printf "%s:%d" .Values.admin.address (int .Values.admin.port)) -}}
{{- $_ := set $cfg "admin" $admin -}}
{{- toJson $cfg -}}
{{- end -}}

{{- define "genesys-kafka-bridge.toml" -}}
{{- $cfg := include "genesys-kafka-bridge.config" . | fromJson -}}
# Written by the genesys-kafka-bridge Helm chart from .Values.config.
{{- range $k := keys $cfg | sortAlpha }}
{{- $v := index $cfg $k }}
{{- if not (kindIs "map" $v) }}
{{ include "genesys-kafka-bridge.tomlKey" $k }} = {{ include "genesys-kafka-bridge.tomlValue" $v }}
{{- end }}
{{- end }}
{{- range $k := keys $cfg | sortAlpha }}
{{- $section := index $cfg $k }}
{{- if kindIs "map" $section }}

[{{ include "genesys-kafka-bridge.tomlKey" $k }}]
{{- range $key := keys $section | sortAlpha }}
{{ include "genesys-kafka-bridge.tomlKey" $key }} = {{ include "genesys-kafka-bridge.tomlValue" (index $section $key) }}
{{- end }}
{{- end }}
{{- end }}
{{ end -}}

{{/*
The bridge's container: used by the Deployment, and printed by NOTES.txt for
sidecar use, so the two never differ. Volumes are named with the chart's
prefix so that they do not clash with a host pod's.
*/}}
{{- define "genesys-kafka-bridge.container" -}}
- name: genesys-kafka-bridge
  image: "{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}"
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args:
    - --config
    - {{ include "genesys-kafka-bridge.configDir" . }}/bridge.toml
    - run
  env:
    - name: GENESYS_CLIENT_ID
      valueFrom:
        secretKeyRef:
          name: {{ include "genesys-kafka-bridge.secretName" . }}
          key: {{ .Values.credentials.clientIdKey }}
    {{- if eq .Values.credentials.secretAs "env" }}
    - name: GENESYS_CLIENT_SECRET
      valueFrom:
        secretKeyRef:
          name: {{ include "genesys-kafka-bridge.secretName" . }}
          key: {{ .Values.credentials.clientSecretKey }}
    {{- end }}
    - name: RUST_LOG
      value: {{ .Values.logLevel | quote }}
    {{- with .Values.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: admin
      containerPort: {{ .Values.admin.port }}
      protocol: TCP
  {{- with .Values.livenessProbe }}
  livenessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.readinessProbe }}
  readinessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: genesys-kafka-bridge-config
      mountPath: {{ include "genesys-kafka-bridge.configDir" . }}
      readOnly: true
    {{- if eq .Values.credentials.secretAs "file" }}
    - name: genesys-kafka-bridge-credentials
      mountPath: {{ include "genesys-kafka-bridge.secretDir" . }}
      readOnly: true
    {{- end }}
    {{- with .Values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{- define "genesys-kafka-bridge.volumes" -}}
- name: genesys-kafka-bridge-config
  configMap:
    name: {{ include "genesys-kafka-bridge.fullname" . }}
{{- if eq .Values.credentials.secretAs "file" }}
- name: genesys-kafka-bridge-credentials
  secret:
    secretName: {{ include "genesys-kafka-bridge.secretName" . }}
    # Readable by the bridge's non-root user without an fsGroup on the pod.
    defaultMode: 0444
    items:
      - key: {{ .Values.credentials.clientSecretKey }}
        path: client-secret
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

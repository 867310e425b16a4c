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
{{- /* Fixed: the ServiceMonitor's jobLabel, so the scrape job is always
"genesys-kafka-bridge", the name the alert rules expect. */}}
app.kubernetes.io/part-of: genesys-kafka-bridge
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
The full name before any truncation: the checks refuse a name Kubernetes
would not take rather than cut it (a cut name can collide or end in "-").
*/}}
{{- define "genesys-kafka-bridge.untruncatedFullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
A duration as the bridge reads it (humantime, see src/config.rs: one or more
<number>[.<fraction>]<unit>, optionally spaced: "30s", "1m30s", "25000ms",
"1.5h", "2 min"), in seconds as a decimal string. `key` names the value in
the error. A form the bridge would refuse is refused here too.
*/}}
{{- define "genesys-kafka-bridge.durationSeconds" -}}
{{- $key := .key -}}
{{- $text := .value -}}
{{- if not (kindIs "string" $text) -}}
{{- fail (printf "%s must be a duration string such as \"20s\" or \"1m30s\", not %v (a bare number has no unit)" $key $text) -}}
{{- end -}}
{{- $units := dict "nanos" 0.000000001 "nsec" 0.000000001 "ns" 0.000000001 "usec" 0.000001 "us" 0.000001 "µs" 0.000001 "millis" 0.001 "msec" 0.001 "ms" 0.001 "seconds" 1 "second" 1 "secs" 1 "sec" 1 "s" 1 "minutes" 60 "minute" 60 "min" 60 "mins" 60 "m" 60 "hours" 3600 "hour" 3600 "hr" 3600 "hrs" 3600 "h" 3600 "days" 86400 "day" 86400 "d" 86400 "weeks" 604800 "week" 604800 "wk" 604800 "wks" 604800 "w" 604800 "months" 2630016 "month" 2630016 "M" 2630016 "years" 31557600 "year" 31557600 "yr" 31557600 "yrs" 31557600 "y" 31557600 -}}
{{- $total := 0.0 -}}
{{- if ne (trim $text) "0" -}}
{{- if not (regexMatch "^\\s*([0-9]+(\\.[0-9]+)?\\s*[A-Za-zµ]+\\s*)+$" $text) -}}
{{- fail (printf "%s: cannot read %q as a duration; write it like \"30s\", \"1m30s\" or \"25000ms\"" $key $text) -}}
{{- end -}}
{{- range $part := regexFindAll "[0-9]+(\\.[0-9]+)?\\s*[A-Za-zµ]+" $text -1 -}}
{{- $unit := regexFind "[A-Za-zµ]+$" $part -}}
{{- if not (hasKey $units $unit) -}}
{{- fail (printf "%s: unknown time unit %q in %q; use ms, s, m, h (or ns, us, d, w, M, y)" $key $unit $text) -}}
{{- end -}}
{{- $n := regexFind "^[0-9]+(\\.[0-9]+)?" $part | float64 -}}
{{- $total = addf $total (mulf $n (index $units $unit)) -}}
{{- end -}}
{{- end -}}
{{- $total -}}
{{- end -}}

{{/*
Topics the chart can count (`topics` and config.genesys.topics, trimmed and
without duplicates, as the bridge does), or "" when they come from where the
chart cannot see: a topics_file of the user's, or the environment.
*/}}
{{- define "genesys-kafka-bridge.topicCount" -}}
{{- $genesys := (.Values.config | default dict).genesys | default dict -}}
{{- $hidden := and (not .Values.topics) $genesys.topics_file -}}
{{- range .Values.extraEnv | default list -}}
{{- if regexMatch "(?i)^GENESYS_BRIDGE_GENESYS__(TOPICS|TOPICS_FILE|REDUNDANCY)$" (toString .name) -}}
{{- $hidden = true -}}
{{- end -}}
{{- end -}}
{{- if not $hidden -}}
{{- $all := list -}}
{{- range concat (.Values.topics | default list) ($genesys.topics | default list) -}}
{{- $t := trim (toString .) -}}
{{- if $t }}{{ $all = append $all $t }}{{ end -}}
{{- end -}}
{{- len (uniq $all) -}}
{{- end -}}
{{- end -}}

{{/*
The channels one pod of the bridge can hold at once, as
src/connection/supervisor.rs runs it: shards of 1,000 topics times
`redundancy` slots, each with a receiving channel, plus the make-before-break
standbys of planned moves. Those take permits from a pool of
20 - slots (at least 1) and at most one per slot, so all slots can move at
once (a token refresh moves every slot; Genesys' "socket closing" can too).
"" when the chart cannot count the topics.
*/}}
{{- define "genesys-kafka-bridge.channelsPerPod" -}}
{{- $count := include "genesys-kafka-bridge.topicCount" . -}}
{{- if $count -}}
{{- $genesys := (.Values.config | default dict).genesys | default dict -}}
{{- $redundancy := int ($genesys.redundancy | default 1) -}}
{{- $shards := div (add (int $count) 999) 1000 -}}
{{- $slots := mul $shards $redundancy -}}
{{- $spare := min $slots (max 1 (sub 20 $slots)) -}}
{{- printf "%d %d %d %d" (add $slots $spare) $slots $shards $redundancy -}}
{{- end -}}
{{- end -}}

{{/* Does a rolling update run the old and the new pod side by side? */}}
{{- define "genesys-kafka-bridge.surges" -}}
{{- $strategy := .Values.strategy | default dict -}}
{{- if ne ($strategy.type | default "RollingUpdate") "Recreate" -}}
{{- $surge := ($strategy.rollingUpdate | default dict).maxSurge -}}
{{- if kindIs "invalid" $surge }}true{{ else if not (regexMatch "^0+%?$" (toString $surge)) }}true{{ end -}}
{{- end -}}
{{- end -}}

{{/*
Checks that fail the render with the value to change, rather than a pod that
crash-loops or a setup that loses or duplicates events.
*/}}
{{- define "genesys-kafka-bridge.validate" -}}
{{- if not (has .Values.mode (list "standalone" "sidecar")) -}}
{{- fail (printf "mode must be \"standalone\" or \"sidecar\", not %q" .Values.mode) -}}
{{- end -}}
{{- if not (has .Values.credentials.secretAs (list "env" "file")) -}}
{{- fail (printf "credentials.secretAs must be \"env\" or \"file\", not %q" .Values.credentials.secretAs) -}}
{{- end -}}
{{- if gt (int .Values.replicaCount) 1 -}}
{{- fail (printf "replicaCount is %d: it must be 0 or 1. Two bridges with the same topics publish every event twice (dedup is per process); the rolling update already overlaps old and new pod make-before-break" (int .Values.replicaCount)) -}}
{{- end -}}
{{- /* Names Kubernetes would refuse or cut. */ -}}
{{- $fullname := include "genesys-kafka-bridge.untruncatedFullname" . -}}
{{- $suffixes := list "" -}}
{{- if or (eq .Values.mode "standalone") .Values.sidecar.podSelector -}}
{{- $suffixes = append $suffixes "-metrics" -}}
{{- end -}}
{{- if .Values.grafanaDashboard.enabled -}}
{{- $suffixes = append $suffixes "-dashboard" -}}
{{- end -}}
{{- $longest := 0 -}}
{{- range $suffixes }}{{ $longest = max $longest (len .) }}{{ end -}}
{{- range $suffixes -}}
{{- $n := printf "%s%s" $fullname . -}}
{{- if gt (len $n) 63 -}}
{{- fail (printf "the name %q is %d characters, more than the 63 Kubernetes allows: use a shorter release name, or set fullnameOverride (or nameOverride) so that the full name %q is at most %d characters" $n (len $n) $fullname (sub 63 $longest)) -}}
{{- end -}}
{{- end -}}
{{- if not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $fullname) -}}
{{- fail (printf "the name %q is not a DNS label (lower-case letters, digits and \"-\", starting with a letter): set fullnameOverride, or change nameOverride or the release name" $fullname) -}}
{{- end -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if gt (len $name) 63 -}}
{{- fail (printf "nameOverride %q is %d characters, more than the 63 a label value allows" $name (len $name)) -}}
{{- end -}}
{{- /* Secrets never go into the ConfigMap. */ -}}
{{- $cfg := .Values.config | default dict -}}
{{- $genesys := $cfg.genesys | default dict -}}
{{- if or $genesys.client_secret $genesys.client_id -}}
{{- fail "config.genesys.client_id / client_secret: set credentials.clientId and credentials.clientSecret (or credentials.existingSecret) instead; the ConfigMap is not secret" -}}
{{- end -}}
{{- $properties := ($cfg.kafka | default dict).properties | default dict -}}
{{- range $key := keys $properties | sortAlpha -}}
{{- if regexMatch "(?i)(password|secret|key\\.pem)" $key -}}
{{- fail (printf "config.kafka.properties.%s looks like a secret, and the ConfigMap is not secret: put it in a Secret and pass it with extraEnv as %s (valueFrom.secretKeyRef), see the chart's README" $key (printf "GENESYS_BRIDGE_KAFKA__PROPERTIES__%s" (upper (regexReplaceAll "[.-]" $key "_")))) -}}
{{- end -}}
{{- end -}}
{{- if and (not .Values.topics) (not $genesys.topics) (not $genesys.topics_file) -}}
{{- fail "no topics: set `topics` (a list) or config.genesys.topics" -}}
{{- end -}}
{{- /* The flush must end before Kubernetes' SIGKILL. */ -}}
{{- $graceText := $cfg.shutdown_grace | default "20s" -}}
{{- $grace := include "genesys-kafka-bridge.durationSeconds" (dict "key" "config.shutdown_grace" "value" $graceText) | float64 -}}
{{- if ge $grace (float64 .Values.terminationGracePeriodSeconds) -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be above config.shutdown_grace (%q = %vs), or Kubernetes kills the bridge before it has flushed" .Values.terminationGracePeriodSeconds $graceText $grace) -}}
{{- end -}}
{{- /* Genesys allows 20 channels per OAuth client; the 21st evicts one of ours. */ -}}
{{- $channels := include "genesys-kafka-bridge.channelsPerPod" . -}}
{{- if and $channels (eq .Values.mode "standalone") (include "genesys-kafka-bridge.surges" .) (gt (int .Values.replicaCount) 0) -}}
{{- $c := splitList " " $channels -}}
{{- $perPod := int (index $c 0) -}}
{{- if gt (mul 2 $perPod) 20 -}}
{{- fail (printf "strategy: the rolling update runs the old and the new pod together, each holding up to %d Genesys channels (%s shard(s) of 1,000 topics x config.genesys.redundancy %s = %s, plus as many make-before-break standbys), %d in all: more than the 20 one OAuth client may hold, so Genesys would evict channels and open gaps. Set strategy.type=Recreate and strategy.rollingUpdate=null (a gap at each rollout), lower config.genesys.redundancy, or subscribe fewer topics (shards x redundancy at most 5)" $perPod (index $c 2) (index $c 3) (index $c 1) (mul 2 $perPod)) -}}
{{- end -}}
{{- end -}}
{{- /* Optional resources that need the standalone Deployment. */ -}}
{{- if and (.Values.podDisruptionBudget | default dict).enabled (ne .Values.mode "standalone") -}}
{{- fail "podDisruptionBudget.enabled needs mode standalone: in sidecar mode the host workload's own PodDisruptionBudget applies" -}}
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

{{/*
The bridge's configuration file. JSON written by Helm's own toPrettyJson:
whole numbers stay integers ("6", never "6.0"), strings are quoted, keys
sorted. The bridge reads the format from the file's extension.
*/}}
{{- define "genesys-kafka-bridge.configFile" -}}bridge.json{{- end -}}

{{- define "genesys-kafka-bridge.configJson" -}}
{{- include "genesys-kafka-bridge.config" . | fromJson | toPrettyJson -}}
{{- end -}}

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
    - {{ include "genesys-kafka-bridge.configDir" . }}/{{ include "genesys-kafka-bridge.configFile" . }}
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

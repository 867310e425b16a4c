#!/usr/bin/env bash
# Builds the repository's Dockerfile, unchanged, and runs the image it makes.
# No Docker engine and no container registry here, so:
#   - Debian's buildah builds (as root, --storage-driver vfs --isolation
#     chroot, --pull=never: local images only);
#   - the Dockerfile's base images are made locally under exactly the names
#     its FROM lines use: debian:bookworm-slim is a debootstrap'd bookworm
#     (minbase, slimmed like the official image), rust:1-bookworm is that plus
#     a C compiler, CA certificates and this machine's Rust toolchain (with
#     RUSTUP_HOME/CARGO_HOME/PATH as the official image sets them). They are
#     kept in buildah's storage and re-made only when their inputs change;
#   - the image then runs as its own user (65532): --version, the demo
#     (exit 0, lost 0), again with a read-only root filesystem, and
#     check-config on every Helm ci case's rendered config, mounted read-only
#     where the chart's Deployment mounts it; ENTRYPOINT/CMD/USER are read
#     back with buildah inspect; the image's size and packages are reported.
# Installs buildah and debootstrap from Debian if missing; the Debian mirror
# is the one apt's sources use. Needs root. Intermediate layers and the
# cargo cache mounts (registry, target) persist between runs.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

IMAGE="${IMAGE_CHECK_TAG:-localhost/genesys-kafka-bridge:check}"
SUITE=bookworm
DEBIAN_IMAGE="docker.io/library/debian:$SUITE-slim"
RUST_IMAGE="docker.io/library/rust:1-$SUITE"
USER_ID=65532:65532
# The image's label that records what a base image was made from.
INPUTS_LABEL=io.genesys-kafka-bridge.image-check.inputs
CHART=helm/genesys-kafka-bridge
B=(buildah --storage-driver vfs)
WORK="$(mktemp -d "${TMPDIR:-/tmp}/image-check.XXXXXX")"
CTRS=()
STARTED=$SECONDS

cleanup() {
  local rc=$?
  for c in "${CTRS[@]}"; do
    "${B[@]}" rm "$c" >/dev/null 2>&1 || true
  done
  # Untagged images (earlier builds, replaced base images) would pile up:
  # vfs stores each layer whole.
  "${B[@]}" rmi --prune >/dev/null 2>&1 || true
  # debootstrap's rootfs may hold proc/sys mounts if it was interrupted.
  if [ -d "$WORK/rootfs" ]; then
    grep -o " $WORK/rootfs[^ ]*" /proc/mounts | sort -r | xargs -r umount -l 2>/dev/null || true
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step() { printf '\n--> %s (%ss)\n' "$*" "$((SECONDS - STARTED))"; }
ok() { printf '  ok: %s\n' "$*"; }
fail() {
  printf '  FAILED: %s\n' "$*" >&2
  exit 1
}
# new_ctr IMAGE: a working container in $CTR (not a subshell's output, so
# that cleanup knows it).
new_ctr() {
  CTR="$("${B[@]}" from --pull=never --quiet "$1")"
  CTRS+=("$CTR")
}
# The inputs label of an image, empty when the image is missing.
inputs_of() {
  "${B[@]}" inspect --type image --format "{{index .OCIv1.Config.Labels \"$INPUTS_LABEL\"}}" "$1" 2>/dev/null || true
}
digest() { sha256sum | cut -c1-16; }

step "tools"
[ "$(id -u)" = 0 ] || fail "needs root (buildah with the vfs driver, debootstrap)"
if ! command -v buildah >/dev/null || ! command -v debootstrap >/dev/null; then
  echo "  installing Debian's buildah and debootstrap"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah debootstrap >/dev/null
fi
ok "$(buildah --version), debootstrap $(dpkg-query -W -f '${Version}' debootstrap)"

# The first URI apt's sources give for a suite (one-line and deb822 formats).
apt_uri() {
  python3 - "$1" /etc/apt/sources.list /etc/apt/sources.list.d/* <<'PY'
import re, sys
from pathlib import Path
suite, files = sys.argv[1], sys.argv[2:]
for f in files:
    p = Path(f)
    if not p.is_file():
        continue
    text = p.read_text()
    if f.endswith(".sources"):
        for stanza in text.split("\n\n"):
            fields = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                k, v = line.split(":", 1)
                fields[k.strip().lower()] = v.split()
            if "deb" in fields.get("types", []) and suite in fields.get("suites", []) and fields.get("uris"):
                print(fields["uris"][0].rstrip("/"))
                sys.exit(0)
    elif f.endswith(".list"):
        for line in text.splitlines():
            words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                print(words[1].rstrip("/"))
                sys.exit(0)
sys.exit(1)
PY
}
MIRROR="${DEBIAN_MIRROR:-$(apt_uri "$SUITE" || true)}"
[ -n "$MIRROR" ] || fail "no Debian mirror for $SUITE in apt's sources (set DEBIAN_MIRROR)"
SECURITY="${DEBIAN_SECURITY_MIRROR:-$(apt_uri "$SUITE-security" || true)}"
ok "Debian mirror $MIRROR${SECURITY:+, security $SECURITY} (from apt's sources)"

step "the Dockerfile's base images"
# Exactly the names the Dockerfile's FROM lines use (stage names aside).
mapfile -t froms < <(awk 'toupper($1) == "FROM" { for (i = 2; i <= NF; i++) if ($i !~ /^--/) { print $i; break } }' Dockerfile)
stages=" $(awk 'toupper($1) == "FROM" && toupper($(NF-1)) == "AS" { print $NF }' Dockerfile | tr '\n' ' ')"
for f in "${froms[@]}"; do
  case "$f" in
    scratch | rust:1-"$SUITE" | debian:"$SUITE"-slim) ;;
    *) [[ "$stages" == *" $f "* ]] || fail "the Dockerfile uses FROM $f: scripts/image-check.sh does not know how to make it" ;;
  esac
done
ok "FROM ${froms[*]}"

# debian:bookworm-slim: debootstrap minbase, with apt's sources and the
# official slim image's dpkg excludes (no docs but copyrights, no man pages,
# no locales) and apt settings (no package cache, no translations).
SLIM_EXCLUDES='path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias'
# As the official image's apt.conf.d/docker-clean: no .deb left behind.
APT_CLEAN='DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";'
SOURCES="deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main${SECURITY:+
deb $SECURITY $SUITE-security main}"
debian_inputs="$(printf 'v1\n%s\n%s\n%s\n%s\n' "$(dpkg-query -W -f '${Version}' debootstrap)" "$SOURCES" "$SLIM_EXCLUDES" "$APT_CLEAN" | digest)"
if [ "$(inputs_of "$DEBIAN_IMAGE")" = "$debian_inputs" ]; then
  ok "$DEBIAN_IMAGE: kept from an earlier run (same inputs $debian_inputs)"
else
  t=$SECONDS
  debootstrap --variant=minbase "$SUITE" "$WORK/rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
    fail "debootstrap: $(tail -n 5 "$WORK/debootstrap.log")"
  r="$WORK/rootfs"
  printf '%s\n' "$SOURCES" >"$r/etc/apt/sources.list"
  printf '%s\n' "$SLIM_EXCLUDES" >"$r/etc/dpkg/dpkg.cfg.d/docker"
  printf '%s\n' "$APT_CLEAN" >"$r/etc/apt/apt.conf.d/docker-clean"
  printf 'Acquire::Languages "none";\n' >"$r/etc/apt/apt.conf.d/docker-no-languages"
  find "$r/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$r/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$r"/usr/share/{man,groff,info,lintian,linda}/* "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/* "$r"/var/log/*.log
  find "$r/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
  new_ctr scratch; c="$CTR"
  cp -a "$r/." "$("${B[@]}" mount "$c")/"
  "${B[@]}" umount "$c" >/dev/null
  "${B[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd bash \
    --label "$INPUTS_LABEL=$debian_inputs" "$c"
  "${B[@]}" commit --quiet "$c" "$DEBIAN_IMAGE" >/dev/null
  rm -rf "$r"
  ok "$DEBIAN_IMAGE: made by debootstrap --variant=minbase $SUITE from $MIRROR ($((SECONDS - t))s)"
fi

# rust:1-bookworm: the above, plus what the official image (on
# buildpack-deps) has that the Dockerfile does not install itself, plus this
# machine's toolchain (without its documentation). The machine's own CA
# certificates (/usr/local/share/ca-certificates: an egress proxy that
# re-signs TLS, say) go into this build-stage image only, so that cargo can
# reach crates.io as it does on the host; the runtime's certificates come
# from debian:bookworm-slim's ca-certificates, untouched.
SYSROOT="$(rustc --print sysroot)"
TOOLCHAIN="$(basename "$SYSROOT")"
RUSTUP_BIN="$(command -v rustup || true)"
RUST_PKGS=(ca-certificates gcc libc6-dev make perl curl)
LOCAL_CAS=(/usr/local/share/ca-certificates/*.crt)
[ -e "${LOCAL_CAS[0]}" ] || LOCAL_CAS=()
rust_inputs="$(printf 'v1\n%s\n%s\n%s\n%s\n%s\n%s\n' "$("${B[@]}" inspect --type image --format '{{.FromImageID}}' "$DEBIAN_IMAGE")" \
  "${RUST_PKGS[*]}" "$(rustc -vV)" "$(cargo -V)" "$SYSROOT $RUSTUP_BIN" "$(cat "${LOCAL_CAS[@]}" /dev/null | digest)" | digest)"
if [ "$(inputs_of "$RUST_IMAGE")" = "$rust_inputs" ]; then
  ok "$RUST_IMAGE: kept from an earlier run (same inputs $rust_inputs)"
else
  t=$SECONDS
  new_ctr "$DEBIAN_IMAGE"; c="$CTR"
  "${B[@]}" run --isolation chroot "$c" -- sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends ${RUST_PKGS[*]} >/dev/null && rm -rf /var/lib/apt/lists/*"
  m="$("${B[@]}" mount "$c")"
  if [ "${#LOCAL_CAS[@]}" -gt 0 ]; then
    cp "${LOCAL_CAS[@]}" "$m/usr/local/share/ca-certificates/"
    "${B[@]}" run --isolation chroot "$c" -- update-ca-certificates >/dev/null
  fi
  mkdir -p "$m/usr/local/rustup/toolchains/$TOOLCHAIN" "$m/usr/local/cargo/bin"
  tar -C "$SYSROOT" --exclude=./share/doc -cf - . | tar -C "$m/usr/local/rustup/toolchains/$TOOLCHAIN" -xf -
  if [ -n "$RUSTUP_BIN" ]; then
    # As the official image: rustup and its proxies, the toolchain as default.
    cp -L "$RUSTUP_BIN" "$m/usr/local/cargo/bin/rustup"
    for tool in "$m/usr/local/rustup/toolchains/$TOOLCHAIN"/bin/*; do
      ln -s rustup "$m/usr/local/cargo/bin/$(basename "$tool")"
    done
    printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\nauto_self_update = "disable"\n' \
      "$TOOLCHAIN" >"$m/usr/local/rustup/settings.toml"
  else
    for tool in "$m/usr/local/rustup/toolchains/$TOOLCHAIN"/bin/*; do
      ln -s "../../rustup/toolchains/$TOOLCHAIN/bin/$(basename "$tool")" "$m/usr/local/cargo/bin/"
    done
  fi
  chmod -R a+rwX "$m/usr/local/cargo" "$m/usr/local/rustup"
  "${B[@]}" umount "$c" >/dev/null
  "${B[@]}" config --env RUSTUP_HOME=/usr/local/rustup --env CARGO_HOME=/usr/local/cargo \
    --env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env RUST_VERSION="$(rustc -V | cut -d' ' -f2)" --label "$INPUTS_LABEL=$rust_inputs" "$c"
  "${B[@]}" commit --quiet "$c" "$RUST_IMAGE" >/dev/null
  cas=""
  [ "${#LOCAL_CAS[@]}" -eq 0 ] || cas=" + the CA certificates of /usr/local/share/ca-certificates (${LOCAL_CAS[*]##*/})"
  ok "$RUST_IMAGE: $DEBIAN_IMAGE + ${RUST_PKGS[*]} + $(rustc -V) ($TOOLCHAIN)$cas ($((SECONDS - t))s)"
fi
new_ctr "$RUST_IMAGE"; c="$CTR"
ok "in $RUST_IMAGE: $("${B[@]}" run --isolation chroot "$c" -- cargo -V), $("${B[@]}" run --isolation chroot "$c" -- rustc -V)"

step "buildah bud the Dockerfile (unchanged; local base images only)"
t=$SECONDS
# No --layers: with vfs every kept layer is a whole copy of its root
# filesystem, and each change of the sources would leave gigabytes behind.
# What is worth keeping is in the cargo step's cache mounts (the registry and
# the target directory, under buildah's cache directory), so that a warm
# build compiles only what changed.
"${B[@]}" bud --isolation chroot --pull=never -f Dockerfile -t "$IMAGE" . >"$WORK/build.log" 2>&1 ||
  fail "buildah bud: $(tail -n 40 "$WORK/build.log")"
grep -E '^(STEP|COMMIT|--> Using cache)|Finished .release' "$WORK/build.log" | sed 's/^/  | /'
ok "built $IMAGE ($((SECONDS - t))s)"

step "the image's configuration (buildah inspect)"
"${B[@]}" inspect --type image "$IMAGE" >"$WORK/inspect.json"
config() { python3 -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1]))["OCIv1"]["config"].get(sys.argv[2])))' "$WORK/inspect.json" "$1"; }
entrypoint="$(config Entrypoint)"
cmd="$(config Cmd)"
user="$(config User)"
ports="$(config ExposedPorts)"
[ "$entrypoint" = '["/usr/local/bin/genesys-kafka-bridge"]' ] || fail "ENTRYPOINT is $entrypoint"
[ "$cmd" = '["run"]' ] || fail "CMD is $cmd"
[ "$user" = "\"$USER_ID\"" ] || fail "USER is $user"
[[ "$ports" == *'"9464/tcp"'* ]] || fail "EXPOSE is $ports"
ok "ENTRYPOINT $entrypoint, CMD $cmd, USER $user, EXPOSE $ports"
mapfile -t ENTRY < <(python3 -c 'import json, sys; print("\n".join(json.loads(sys.argv[1])))' "$entrypoint")

step "running the image as $USER_ID"
new_ctr "$IMAGE"; c="$CTR"
run_image() { "${B[@]}" run --isolation chroot --user "$USER_ID" "$@"; }
out="$(run_image "$c" -- "${ENTRY[@]}" --version)" || fail "--version"
ok "--version: $out"
run_image "$c" -- "${ENTRY[@]}" demo --duration 10s >"$WORK/demo.out" 2>"$WORK/demo.err" ||
  fail "demo exited $?: $(tail -n 20 "$WORK/demo.err")"
summary="$(grep '\[demo\] summary:' "$WORK/demo.err" || true)"
[[ "$summary" == *" lost: 0 "* ]] || fail "demo: ${summary:-no summary}: $(tail -n 20 "$WORK/demo.err")"
ok "demo --duration 10s: exit 0, $(wc -l <"$WORK/demo.out") records on stdout"
echo "  $summary"

# A read-only root filesystem, as the chart's securityContext sets it:
# buildah run has no such option, so the image's root filesystem is mounted,
# bind-mounted read-only in a private mount namespace with /proc and /dev,
# and the entrypoint runs there as the image's user.
m="$("${B[@]}" mount "$c")"
mkdir -p "$m/proc" "$m/dev"
cat >"$WORK/ro.sh" <<'SH'
set -eu
m="$1"; shift
mount --make-rprivate /
mount --bind "$m" "$m"
mount --rbind /dev "$m/dev"
mount -t proc proc "$m/proc"
mount -o remount,bind,ro "$m"
if touch "$m/.rw-test" 2>/dev/null; then echo "the root filesystem is writable" >&2; exit 97; fi
exec chroot --userspec="$USER_ID" "$m" "$@"
SH
if ! unshare --mount true 2>/dev/null; then
  echo "  NOT CHECKED: a read-only root filesystem (this runner allows no mount namespace: unshare --mount failed)"
elif USER_ID="$USER_ID" unshare --mount sh "$WORK/ro.sh" "$m" "${ENTRY[@]}" demo --duration 10s \
  >"$WORK/demo-ro.out" 2>"$WORK/demo-ro.err"; then
  summary="$(grep '\[demo\] summary:' "$WORK/demo-ro.err" || true)"
  [[ "$summary" == *" lost: 0 "* ]] || fail "demo (read-only root): ${summary:-no summary}"
  ok "demo --duration 10s with a read-only root filesystem: exit 0, lost 0"
else
  rc=$?
  [ "$rc" != 97 ] || fail "could not make the root filesystem read-only"
  fail "demo with a read-only root filesystem exited $rc: $(tail -n 20 "$WORK/demo-ro.err")"
fi
"${B[@]}" umount "$c" >/dev/null

# check-config on each Helm ci case's rendered configuration: the files of
# the volumes the chart's container mounts (its ConfigMap, its Secret or a
# stand-in for an existing one), mounted read-only where the container mounts
# them, its env, and its args with check-config for run.
PY="target/obs-venv/bin/python"
if ! "$PY" -c 'import helm_python, yaml' 2>/dev/null; then
  pin="$(grep -o 'helm-python-sdk==[0-9.]*' scripts/observability-check.sh | head -n 1)"
  PY="target/image-check-venv/bin/python"
  if ! "$PY" -c 'import helm_python, yaml' 2>/dev/null; then
    echo "  creating target/image-check-venv: $pin"
    rm -rf target/image-check-venv
    python3 -m venv target/image-check-venv
    target/image-check-venv/bin/pip install --quiet --disable-pip-version-check "$pin" pyyaml
  fi
fi
"$PY" - "$CHART" "$WORK/chart" <<'PY' || fail "rendering the chart"
import base64, re, shlex, sys
from pathlib import Path
import helm_python as helm
import yaml

chart_dir, work = Path(sys.argv[1]), Path(sys.argv[2])
chart = helm.Chart.load(str(chart_dir))
for case_file in sorted(chart_dir.glob("ci/*-values.yaml")):
    case = case_file.name.removesuffix("-values.yaml")
    values = yaml.safe_load(case_file.read_text()) or {}
    docs, notes = [], ""
    for path, text in chart.render(values, name="bridge", namespace="genesys").items():
        if path.endswith("NOTES.txt"):
            notes = text
        else:
            docs += [d for d in yaml.safe_load_all(text) if d]
    deps = [d for d in docs if d["kind"] == "Deployment"]
    if deps:
        spec = deps[0]["spec"]["template"]["spec"]
    else:  # sidecar: the container snippet NOTES.txt prints
        m = re.search(r"# ---8<--- pod spec snippet\n(.*?)# --->8---", notes, re.S)
        spec = yaml.safe_load(m.group(1))
    c = next(c for c in spec["containers"] if c["name"] == "genesys-kafka-bridge")
    by = lambda kind: {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}
    configmaps, secrets = by("ConfigMap"), by("Secret")
    vols = {v["name"]: v for v in spec["volumes"]}
    d = work / case
    mounts, files = [], []
    for i, vm in enumerate(c.get("volumeMounts", [])):
        v = vols[vm["name"]]
        host = d / f"volume-{i}"
        host.mkdir(parents=True)
        host.chmod(0o755)
        if "configMap" in v:
            data, mode = configmaps[v["configMap"]["name"]]["data"], v["configMap"].get("defaultMode", 0o644)
            items = v["configMap"].get("items")
        elif "secret" in v:
            s = secrets.get(v["secret"]["secretName"])
            items = v["secret"].get("items")
            mode = v["secret"].get("defaultMode", 0o644)
            if s is None:  # an existing Secret: a stand-in value for each key
                data = {it["key"]: "image-check-stand-in" for it in items or []}
            else:
                data = dict(s.get("stringData") or {})
                data.update({k: base64.b64decode(x).decode() for k, x in (s.get("data") or {}).items()})
        else:
            sys.exit(f"{case}: no stand-in for volume {v}")
        for key, path in ([(it["key"], it["path"]) for it in items] if items else [(k, k) for k in data]):
            f = host / path
            f.write_text(data[key])
            f.chmod(mode)
            files.append(f"{vm['mountPath']}/{path}")
        mounts += ["--volume", f"{host}:{vm['mountPath']}:{'ro' if vm.get('readOnly') else 'rw'}"]
    env = []
    for e in c.get("env", []):
        if "value" in e:
            env += ["--env", f"{e['name']}={e['value']}"]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            s = secrets.get(ref["name"])
            val = "image-check-stand-in"
            if s is not None:
                val = (s.get("stringData") or {}).get(ref["key"]) or base64.b64decode(s["data"][ref["key"]]).decode()
            env += ["--env", f"{e['name']}={val}"]
    args = list(c["args"])
    if args[-1:] != ["run"]:
        sys.exit(f"{case}: the container's args do not end with run: {args}")
    args[-1] = "check-config"
    (d / "plan.sh").write_text(
        f"MOUNTS=({shlex.join(mounts)})\nENVS=({shlex.join(env)})\nARGS=({shlex.join(args)})\n"
        f"FILES=({shlex.join(files)})\n")
PY
for plan in "$WORK"/chart/*/plan.sh; do
  case="$(basename "$(dirname "$plan")")"
  MOUNTS=() ENVS=() ARGS=() FILES=()
  # shellcheck disable=SC1090
  . "$plan"
  out="$(run_image "${MOUNTS[@]}" "${ENVS[@]}" "$c" -- "${ENTRY[@]}" "${ARGS[@]}" 2>&1)" ||
    fail "$case: check-config refuses the chart's config: $out"
  ok "$case: ${ARGS[*]} with ${FILES[*]} mounted read-only: $(echo "$out" | sed -n 2p | sed 's/^# //')"
done

step "size, files and packages"
size="$("${B[@]}" images --format '{{.Size}}' "$IMAGE")"
ok "$IMAGE: $size ($(python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["OCIv1"]["rootfs"]["diff_ids"]))' "$WORK/inspect.json") layer(s))"
new_ctr "$IMAGE"; c="$CTR"
m="$("${B[@]}" mount "$c")"
echo "  files: $(cd "$m" && find . -mindepth 1 -not -type d | sed 's/^\.//' | sort | tr '\n' ' ')"
# TLS (librdkafka's OpenSSL, for SASL_SSL): the CA bundle where the image's
# own libcrypto looks for it by default (its OPENSSLDIR/cert.pem).
if libcrypto="$(find "$m" -name 'libcrypto.so.*' -not -type d | head -n 1)" && [ -n "$libcrypto" ]; then
  ssldir="$(grep -ao 'OPENSSLDIR: "[^"]*"' "$libcrypto" | head -n 1 | cut -d'"' -f2)"
  bundle="$ssldir/cert.pem"
  while [ -L "$m$bundle" ]; do
    link="$(readlink "$m$bundle")"
    case "$link" in /*) bundle="$link" ;; *) bundle="$(dirname "$bundle")/$link" ;; esac
  done
  [ -s "$m$bundle" ] || fail "OpenSSL's default CA file $ssldir/cert.pem does not resolve to a file in the image"
  ok "OpenSSL's default CA file $ssldir/cert.pem -> $bundle: $(grep -c 'BEGIN CERTIFICATE' "$m$bundle") certificates"
fi
if [ -d "$m/var/lib/dpkg/status.d" ]; then
  echo "  Debian packages (from /var/lib/dpkg/status.d, as distroless images record them):"
  for f in "$m"/var/lib/dpkg/status.d/*; do
    awk '/^Package:/ { p = $2 } /^Version:/ { v = $2 } END { printf "    %-20s %s\n", p, v }' "$f"
  done
elif [ -f "$m/var/lib/dpkg/status" ]; then
  echo "  Debian packages (dpkg-query):"
  "${B[@]}" run --isolation chroot "$c" -- dpkg-query -W -f '    ${Package} ${Version}\n'
fi
"${B[@]}" umount "$c" >/dev/null

printf '\nimage check passed (%ss)\n' "$((SECONDS - STARTED))"

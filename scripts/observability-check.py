"""The Python half of scripts/observability-check.sh (run with its venv).

Subcommands, each printing one line per check and exiting non-zero on the
first failure:

  dashboard  lint the Grafana dashboard's structure (no Grafana needed): the
             variables (job, namespace, pod; never instance), every query
             narrowed by them, panels for the health and process metrics
  rules      every alert rule has a severity, a summary, a description and a
             runbook_url whose anchor is a heading of README.md
  helm       lint the chart strictly with Helm's own engine (helm-python-sdk),
             render every ci/*-values.yaml case, validate every manifest with
             kubernetes-validate --strict, check the Prometheus Operator
             resources, the sidecar snippet and the rendered bridge.json
             (with the bridge's own check-config); every
             ci/refused/*-values.yaml case must fail to render with the
             message its "# refused:" line gives, and the boundary cases
             next to them must render
  live       against a real Prometheus scraping a running bridge: evaluate
             every dashboard query, check every metric name the dashboard and
             the rules use is exported, rules healthy, no alert in a healthy
             state, then open a gap and see it on the dashboard and in the
             GapOpen alert
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "genesys-kafka-bridge"
DASHBOARD = ROOT / "dashboards" / "genesys-kafka-bridge.json"
ALERTS = ROOT / "dashboards" / "alerts.yaml"
README = ROOT / "README.md"
# The bridge's own metrics and the prometheus crate's process collector.
METRIC = re.compile(r"\b(?:genesys_bridge|process)_[a-z0-9_]+\b")
# The selector every dashboard query narrows by.
SELECTOR = 'job=~"$job", namespace=~"$namespace", pod=~"$pod"'
# Panels for the health metrics the alerts rest on (issue 17).
HEALTH = ("genesys_bridge_ready", "genesys_bridge_shards", "genesys_bridge_gap_open_seconds",
          "process_cpu_seconds_total", "process_resident_memory_bytes", "process_start_time_seconds",
          "process_open_fds")


def ok(msg: str) -> None:
    print(f"  ok: {msg}", flush=True)


def fail(msg: str) -> None:
    print(f"  FAILED: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


# ---------------------------------------------------------------- dashboard


def panels(dash: dict) -> list[dict]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows hold their panels
    return out


def targets(dash: dict) -> list[tuple[dict, dict]]:
    return [(p, t) for p in panels(dash) if p["type"] != "row" for t in p.get("targets", [])]


def rule_exprs() -> list[tuple[str, str]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [(r.get("alert") or r.get("record"), r["expr"]) for g in doc["groups"] for r in g["rules"]]


def cmd_dashboard(_args) -> None:
    dash = json.loads(DASHBOARD.read_text())
    for key in ("uid", "title", "schemaVersion", "panels", "templating"):
        if key not in dash:
            fail(f"dashboard has no {key!r}")
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        fail("dashboard has no Prometheus data source variable named 'datasource'")
    ok("Prometheus data source variable $datasource")
    want_ds = {"type": "prometheus", "uid": "${datasource}"}
    for name, var in variables.items():
        if var["type"] == "query" and var.get("datasource") != want_ds:
            fail(f"variable ${name} does not use $datasource")
    ids, cells = set(), {}
    for p in panels(dash):
        if p["id"] in ids:
            fail(f"panel id {p['id']} used twice")
        ids.add(p["id"])
        g = p["gridPos"]
        if g["x"] < 0 or g["w"] <= 0 or g["x"] + g["w"] > 24 or g["h"] <= 0:
            fail(f"panel {p['title']!r} lies outside the 24-column grid: {g}")
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    fail(f"panels {cells[(x, y)]!r} and {p['title']!r} overlap")
                cells[(x, y)] = p["title"]
        if p["type"] == "row":
            continue
        if p.get("datasource") != want_ds:
            fail(f"panel {p['title']!r} does not use $datasource")
        refs = [t["refId"] for t in p.get("targets", [])]
        if not refs or len(set(refs)) != len(refs):
            fail(f"panel {p['title']!r} has no targets or repeats a refId")
        for t in p["targets"]:
            if not t.get("expr") or t.get("datasource") != want_ds:
                fail(f"panel {p['title']!r} target {t['refId']} has no expr or another data source")
    n = len([p for p in panels(dash) if p["type"] != "row"])
    ok(f"{n} panels, {len(targets(dash))} queries: unique ids, on the grid, no overlap, all on $datasource")

    # Narrowed by job, namespace and pod; never by instance (a pod IP that
    # changes at every rollout).
    if [v for v in ("job", "namespace", "pod") if v not in variables] or "instance" in variables:
        fail(f"dashboard variables are {sorted(variables)}: want job, namespace and pod, not instance")
    if variables["job"].get("allValue"):
        fail("$job has a custom allValue: with All it would match every job of a shared Prometheus; "
             "leave it unset so that All is the jobs that export genesys_bridge_build_info")
    if "genesys_bridge_" not in variables["job"]["definition"]:
        fail(f"$job does not list only the bridge's jobs: {variables['job']['definition']}")
    for p, t in targets(dash):
        selectors = re.findall(r"\b[a-z_:]+\{([^}]*)\}", t["expr"])
        if not selectors or any(sel != SELECTOR for sel in selectors) or "instance" in t["expr"] + t["legendFormat"]:
            fail(f"panel {p['title']!r} query {t['refId']} is not narrowed by exactly {{{SELECTOR}}}: {t['expr']}")
    ok(f"variables $job (All = the jobs that export the bridge's metrics), $namespace, $pod; "
       f"every query narrowed by {{{SELECTOR}}}, none by instance")
    shown = {n for _, t in targets(dash) for n in METRIC.findall(t["expr"])}
    missing = [m for m in HEALTH if m not in shown]
    if missing:
        fail(f"no panel shows {missing}")
    ok(f"panels for the health metrics: {', '.join(HEALTH)}")


# -------------------------------------------------------------------- rules


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def cmd_rules(_args) -> None:
    anchors = {github_slug(h) for h in re.findall(r"^#{1,6} (.+)$", README.read_text(), re.M)}
    doc = yaml.safe_load(ALERTS.read_text())
    rules = [r for g in doc["groups"] for r in g["rules"] if "alert" in r]
    for r in rules:
        ann = r.get("annotations", {})
        if r.get("labels", {}).get("severity") not in ("critical", "warning"):
            fail(f"{r['alert']}: no severity label critical or warning")
        if not ann.get("summary") or not ann.get("description"):
            fail(f"{r['alert']}: no summary or description")
        url = ann.get("runbook_url", "")
        want = f"README.md#{r['alert'].lower()}"
        if url != want:
            fail(f"{r['alert']}: runbook_url is {url!r}, want {want!r}")
        if r["alert"].lower() not in anchors:
            fail(f"{r['alert']}: README.md has no heading for the anchor #{r['alert'].lower()} (its Runbook section)")
        if re.search(r"\bon \((?:[^)]*, )?instance", r["expr"]) and r["alert"] == "GenesysBridgeDown":
            fail("GenesysBridgeDown matches on instance (a pod IP)")
    ok(f"{len(rules)} alerts: each has a severity, a summary, a description and a runbook_url "
       "whose anchor is a heading of README.md's Runbook")


# --------------------------------------------------------------------- helm


def kube_validate(venv_bin: Path, files: list[Path]) -> int:
    """kubernetes-validate --strict; a kind without a schema is a failure here."""
    r = subprocess.run(
        [str(venv_bin / "kubernetes-validate"), "--strict", *map(str, files)],
        capture_output=True, text=True,
    )
    lines = [l for l in (r.stdout + r.stderr).splitlines() if l.strip()]
    passed = [l for l in lines if l.startswith("INFO") and " passed " in l]
    others = [l for l in lines if l not in passed]
    if r.returncode != 0 or others:
        fail("kubernetes-validate --strict:\n    " + "\n    ".join(others or lines))
    return len(passed)


# humantime's units (the bridge's duration parser), in seconds.
UNITS = {**dict.fromkeys(("nanos", "nsec", "ns"), 1e-9), **dict.fromkeys(("usec", "us", "µs"), 1e-6),
         **dict.fromkeys(("millis", "msec", "ms"), 1e-3), **dict.fromkeys(("seconds", "second", "secs", "sec", "s"), 1),
         **dict.fromkeys(("minutes", "minute", "min", "mins", "m"), 60),
         **dict.fromkeys(("hours", "hour", "hr", "hrs", "h"), 3600), **dict.fromkeys(("days", "day", "d"), 86400),
         **dict.fromkeys(("weeks", "week", "wk", "wks", "w"), 604800),
         **dict.fromkeys(("months", "month", "M"), 2630016), **dict.fromkeys(("years", "year", "yr", "yrs", "y"), 31557600)}


def duration_secs(text: str) -> float:
    if text.strip() == "0":
        return 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([A-Za-zµ]+)", text)
    if not parts or not re.fullmatch(r"\s*(\d+(\.\d+)?\s*[A-Za-zµ]+\s*)+", text) or any(u not in UNITS for _, u in parts):
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * UNITS[u] for n, u in parts)


SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {"type": "object", "required": ["matchLabels"],
                             "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}}},
                "namespaceSelector": {"type": "object", "additionalProperties": False,
                                      "properties": {"any": {"type": "boolean"},
                                                     "matchNames": {"type": "array", "items": {"type": "string"}}}},
                "jobLabel": {"type": "string"},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False, "required": ["port"],
                    "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                                   "interval": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"},
                                   "scrapeTimeout": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"},
                                   "scheme": {"enum": ["http", "https"]},
                                   "honorLabels": {"type": "boolean"},
                                   "relabelings": {"type": "array"}, "metricRelabelings": {"type": "array"}}}},
            },
        },
    },
}


def check_crds(docs: list[dict], case: str, work: Path, rendered: list[dict]) -> None:
    """ServiceMonitor and PrometheusRule have no schema in kubernetes-validate:
    check the fields we use against a small schema, the selector against the
    rendered Service, and the rules with promtool."""
    import jsonschema

    services = [d for d in rendered if d.get("kind") == "Service"]
    for d in docs:
        if d["kind"] == "ServiceMonitor":
            try:
                jsonschema.validate(d, SERVICE_MONITOR_SCHEMA)
            except jsonschema.ValidationError as e:
                fail(f"{case}: ServiceMonitor: {e.message} at {list(e.absolute_path)}")
            sel = d["spec"]["selector"]["matchLabels"]
            match = [s for s in services if sel.items() <= s["metadata"].get("labels", {}).items()]
            if len(match) != 1:
                fail(f"{case}: the ServiceMonitor selects {len(match)} rendered Services, not 1")
            job_label = d["spec"].get("jobLabel")
            if not job_label or match[0]["metadata"]["labels"].get(job_label) != "genesys-kafka-bridge":
                fail(f"{case}: the ServiceMonitor's jobLabel {job_label!r} does not name the job genesys-kafka-bridge "
                     "on the Service (GenesysBridgeDown expects that job)")
            ports = {p.get("name") for p in match[0]["spec"]["ports"]}
            for ep in d["spec"]["endpoints"]:
                if ep["port"] not in ports:
                    fail(f"{case}: ServiceMonitor port {ep['port']!r} is not a port of {match[0]['metadata']['name']}")
            ok(f"{case}: ServiceMonitor (no schema in kubernetes-validate): fields checked, selects "
               f"Service {match[0]['metadata']['name']} port {d['spec']['endpoints'][0]['port']}, job genesys-kafka-bridge")
        elif d["kind"] == "PrometheusRule":
            if d["apiVersion"] != "monitoring.coreos.com/v1" or set(d["spec"]) != {"groups"}:
                fail(f"{case}: PrometheusRule has an unexpected apiVersion or spec keys")
            if d["spec"] != yaml.safe_load(ALERTS.read_text()):
                fail(f"{case}: the PrometheusRule's groups differ from dashboards/alerts.yaml")
            f = work / f"{case}-prometheusrule-spec.yaml"
            f.write_text(yaml.safe_dump(d["spec"]))
            r = subprocess.run(["promtool", "check", "rules", str(f)], capture_output=True, text=True)
            if r.returncode != 0:
                fail(f"{case}: promtool check rules on the PrometheusRule: {r.stdout}{r.stderr}")
            n = sum(len(g["rules"]) for g in d["spec"]["groups"])
            ok(f"{case}: PrometheusRule (no schema in kubernetes-validate): same groups as dashboards/alerts.yaml, "
               f"promtool check rules: {n} rules")
        else:
            fail(f"{case}: no check for {d['apiVersion']} {d['kind']}")


def bridge_check_config(binary: Path, case: str, configmap: dict, config_file: str, secret_file: bool,
                        work: Path) -> None:
    """Runs the bridge's own check-config on the rendered configuration file
    (by the name the container's --config gives, so by its format), with the
    mount paths pointed at local copies."""
    d = work / f"{case}-etc"
    d.mkdir()
    text = configmap["data"][config_file]
    text = text.replace("/etc/genesys-kafka-bridge", str(d))
    text = text.replace("/var/run/secrets/genesys-kafka-bridge", str(d))
    (d / config_file).write_text(text)
    if "topics.txt" in configmap["data"]:
        (d / "topics.txt").write_text(configmap["data"]["topics.txt"])
    env = {"PATH": "/usr/bin:/bin", "GENESYS_CLIENT_ID": "check-client"}
    if secret_file:
        (d / "client-secret").write_text("check-secret\n")
    else:
        env["GENESYS_CLIENT_SECRET"] = "check-secret"
    r = subprocess.run([str(binary), "--config", str(d / config_file), "check-config"],
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        fail(f"{case}: the bridge refuses the rendered {config_file}: {r.stderr.strip()}")
    ok(f"{case}: the bridge's check-config accepts the rendered {config_file} ({r.stdout.splitlines()[1].lstrip('# ')})")


def cmd_helm(args) -> None:
    import helm_python as helm

    work = Path(args.work)
    venv_bin = Path(sys.executable).parent
    binary = Path(args.binary)
    chart = helm.Chart.load(str(CHART))
    cases = sorted(CHART.glob("ci/*-values.yaml"))
    if not cases:
        fail("no helm/genesys-kafka-bridge/ci/*-values.yaml")
    modes = set()
    for case_file in cases:
        case = case_file.name.removesuffix("-values.yaml")
        values = yaml.safe_load(case_file.read_text()) or {}
        report = helm.lint(str(CHART), values, strict=True)
        bad = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        if bad:
            fail(f"{case}: helm lint --strict: {bad}")
        infos = [m["error"] for m in report["messages"]]
        ok(f"{case}: helm lint --strict: no warning or error" + (f" (info: {'; '.join(infos)})" if infos else ""))

        manifests = chart.render(values, name="bridge", namespace="genesys")
        out = work / case
        out.mkdir()
        files, crds, rendered, notes = [], [], [], ""
        for path, text in sorted(manifests.items()):
            if path.endswith("NOTES.txt"):
                notes = text
                continue
            docs = [d for d in yaml.safe_load_all(text) if d]
            if not docs:
                continue
            rendered.extend(docs)
            core = [d for d in docs if not d["apiVersion"].startswith("monitoring.coreos.com/")]
            crds.extend(d for d in docs if d not in core)
            if core:
                f = out / Path(path).name
                f.write_text(yaml.safe_dump_all(core))
                files.append(f)
        kinds = sorted(d["kind"] for d in rendered if d not in crds)
        merged = chart.merge_values(values)
        mode = merged["mode"]
        modes.add(mode)

        if mode == "sidecar":
            if any(d["kind"] == "Deployment" for d in rendered):
                fail(f"{case}: sidecar mode rendered a Deployment")
            m = re.search(r"# ---8<--- pod spec snippet\n(.*?)# --->8---", notes, re.S)
            if not m:
                fail(f"{case}: NOTES.txt has no pod spec snippet")
            spec = yaml.safe_load(m.group(1))
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "host-pod"}, "spec": spec}
            f = out / "sidecar-snippet-pod.yaml"
            f.write_text(yaml.safe_dump(pod))
            files.append(f)
            pod_spec = spec
        else:
            deps = [d for d in rendered if d["kind"] == "Deployment"]
            if len(deps) != 1:
                fail(f"{case}: standalone mode rendered {len(deps)} Deployments")
            pod_spec = deps[0]["spec"]["template"]["spec"]
        n = kube_validate(venv_bin, files)
        ok(f"{case} ({mode}): kubernetes-validate --strict: {n} resources valid ({', '.join(kinds)}"
           + (", the NOTES.txt sidecar snippet as a Pod" if mode == "sidecar" else "") + ")")
        if crds:
            check_crds(crds, case, work, rendered)

        # Cross-references and the properties the issue asks for.
        by_kind = {}
        for d in rendered:
            by_kind.setdefault(d["kind"], []).append(d)
        c = next(c for c in pod_spec["containers"] if c["name"] == "genesys-kafka-bridge")
        if c["args"][:1] != ["--config"] or c["args"][-1] != "run" or len(c["args"]) != 3:
            fail(f"{case}: container args {c['args']}")
        config_file = Path(c["args"][1]).name
        configmap = next((d for d in by_kind["ConfigMap"] if config_file in d.get("data", {})), None)
        if configmap is None or Path(c["args"][1]).parent != Path("/etc/genesys-kafka-bridge"):
            fail(f"{case}: --config {c['args'][1]} is not a file of a rendered ConfigMap mounted at /etc/genesys-kafka-bridge")
        if config_file != "bridge.json":
            fail(f"{case}: the configuration is {config_file}, not bridge.json")
        try:
            cfg = json.loads(configmap["data"][config_file])
        except json.JSONDecodeError as e:
            fail(f"{case}: {config_file} is not JSON: {e}")
        creds = merged["credentials"]
        secret_name = creds["existingSecret"] or next(d for d in by_kind["Secret"])["metadata"]["name"]
        if creds["existingSecret"] and "Secret" in by_kind:
            fail(f"{case}: existingSecret set but the chart rendered a Secret too")
        vols = {v["name"]: v for v in pod_spec["volumes"]}
        cfg_vol = next(v for v in vols.values() if "configMap" in v)
        if cfg_vol["configMap"]["name"] != configmap["metadata"]["name"]:
            fail(f"{case}: the config volume names ConfigMap {cfg_vol['configMap']['name']}")
        # The chart's own variables read its credentials Secret; extraEnv
        # may read any (Kafka credentials, say).
        extra = {e["name"] for e in merged.get("extraEnv") or []}
        for e in c["env"]:
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref and e["name"] not in extra and ref["name"] != secret_name:
                fail(f"{case}: env {e['name']} reads Secret {ref['name']}, not {secret_name}")
        env_names = {e["name"] for e in c["env"]}
        secret_file = creds["secretAs"] == "file"
        if "GENESYS_CLIENT_ID" not in env_names or (("GENESYS_CLIENT_SECRET" in env_names) == secret_file):
            fail(f"{case}: credentials env wrong for secretAs={creds['secretAs']}: {sorted(env_names)}")
        if secret_file and not any(v.get("secret", {}).get("secretName") == secret_name for v in vols.values()):
            fail(f"{case}: secretAs=file but Secret {secret_name} is not mounted")
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        probes = {k: c[k]["httpGet"] for k in ("livenessProbe", "readinessProbe")}
        if probes["livenessProbe"]["path"] != "/livez" or probes["readinessProbe"]["path"] != "/readyz" \
                or any(p["port"] not in ports for p in probes.values()):
            fail(f"{case}: probes {probes} against ports {ports}")
        listen = re.fullmatch(r"(.*):(\d+)", cfg.get("admin", {}).get("listen", ""))
        if not listen or int(listen.group(2)) != ports["admin"]:
            fail(f"{case}: admin.listen in {config_file} does not match the admin port {ports['admin']}")
        sc = c["securityContext"]
        if not (sc.get("runAsNonRoot") and sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
                and sc.get("capabilities", {}).get("drop") == ["ALL"] and sc.get("runAsUser", 0) > 0):
            fail(f"{case}: container securityContext {sc}")
        if not c.get("resources", {}).get("requests") or not c["resources"].get("limits"):
            fail(f"{case}: no resources")
        grace_s = duration_secs(cfg.get("shutdown_grace", "20s"))
        if not pod_spec["terminationGracePeriodSeconds"] > grace_s:
            fail(f"{case}: terminationGracePeriodSeconds {pod_spec['terminationGracePeriodSeconds']} <= shutdown_grace {grace_s}")
        ok(f"{case}: config/secret references, probes /livez /readyz on port {ports['admin']}, non-root read-only "
           f"drop-ALL securityContext, resources, grace {pod_spec['terminationGracePeriodSeconds']}s > shutdown_grace {grace_s:g}s")
        bridge_check_config(binary, case, configmap, config_file, secret_file, work)

    if modes != {"standalone", "sidecar"}:
        fail(f"the ci values cover modes {sorted(modes)}, not both")

    # The chart README's sidecar example: its snippet is what the chart
    # prints for its values.
    readme = (CHART / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, re.S)
    values = next((yaml.safe_load(b) for b in blocks if b.startswith("# sidecar-values.yaml")), None)
    shown = next((yaml.safe_load(b) for b in blocks if b.startswith("terminationGracePeriodSeconds")), None)
    if values is None or shown is None:
        fail("the chart README has no sidecar values or snippet block")
    notes = chart.render(values, name="bridge", namespace="genesys")["genesys-kafka-bridge/templates/NOTES.txt"]
    printed = yaml.safe_load(re.search(r"# ---8<--- pod spec snippet\n(.*?)# --->8---", notes, re.S).group(1))
    if printed != shown:
        fail("the chart README's sidecar snippet differs from what the chart prints for its values")
    ok("the chart README's sidecar snippet is what the chart prints (NOTES.txt) for the README's values")

    check_refusals(chart, helm)


def case_values(path: Path) -> tuple[dict, dict]:
    """A refusal case's values and its "# key: value" header lines: refused
    (the message, or part of it), release (the release name, default
    "bridge"), generated-topics (that many topics added)."""
    text = path.read_text()
    header = dict(re.findall(r"^# ([a-z-]+): (.*)$", text, re.M))
    values = yaml.safe_load(text) or {}
    n = int(header.get("generated-topics", 0))
    if n:
        values["topics"] = (values.get("topics") or []) + [
            f"v2.routing.queues.{i:08x}-0000-4000-8000-000000000000.conversations" for i in range(n)]
    return values, header


def render_error(chart, helm, values: dict, name: str = "bridge") -> str | None:
    try:
        chart.render(values, name=name, namespace="genesys")
    except helm.HelmError as e:
        return str(e)
    return None


def check_refusals(chart, helm) -> None:
    cases = sorted((CHART / "ci" / "refused").glob("*-values.yaml"))
    if not cases:
        fail("no helm/genesys-kafka-bridge/ci/refused/*-values.yaml")
    for f in cases:
        values, header = case_values(f)
        want = header.get("refused")
        if not want:
            fail(f"{f.name}: no '# refused: <message>' line")
        err = render_error(chart, helm, values, header.get("release", "bridge"))
        if err is None:
            fail(f"refused/{f.name}: the chart rendered it; want a refusal with {want!r}")
        if want not in err:
            fail(f"refused/{f.name}: refused, but not with {want!r}: {err.strip()}")
        line = next((l for l in err.splitlines() if want in l), err.strip().splitlines()[0])
        ok(f"refused/{f.name.removesuffix('-values.yaml')}: {line.rsplit('): ', 1)[-1].strip()}")

    # The boundaries: each of these is one step short of a refusal above.
    base = yaml.safe_load((CHART / "ci" / "standalone-values.yaml").read_text())
    many = lambda n: [f"v2.routing.queues.{i:08x}-0000-4000-8000-000000000000.conversations" for i in range(n)]
    accepted = {
        "shutdown_grace 29s 999ms under a 30s grace period": {"config": {**base["config"], "shutdown_grace": "29s 999ms"},
                                                                "terminationGracePeriodSeconds": 30},
        "2,001 topics x redundancy 2 with strategy Recreate (no surge)": {
            "topics": many(2001), "strategy": {"type": "Recreate", "rollingUpdate": None}},
        "2,001 topics x redundancy 2 with maxSurge 0": {
            "topics": many(2001), "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}},
        "2,000 topics x redundancy 2 (4 channels, 8 while moving; 16 for old + new pod)": {"topics": many(2000)},
        "5,000 topics x redundancy 1 (5 channels, 10 while moving; 20 for old + new pod)": {
            "topics": many(5000), "config": {**base["config"], "genesys": {**base["config"]["genesys"], "redundancy": 1}}},
        "replicaCount 0": {"replicaCount": 0},
        "a 53-character full name with the dashboard": {"fullnameOverride": "a" * 53, "grafanaDashboard": {"enabled": True}},
    }
    for what, override in accepted.items():
        values = {**json.loads(json.dumps(base)), **override}
        err = render_error(chart, helm, values)
        if err is not None:
            fail(f"the chart refused {what}: {err.strip()}")
        ok(f"rendered (the boundary): {what}")

    # Topics the chart cannot count: it renders, and NOTES.txt warns.
    values = {**json.loads(json.dumps(base)), "topics": [],
              "config": {**base["config"], "genesys": {"topics_file": "/etc/topics/topics.txt"}}}
    notes = chart.render(values, name="bridge", namespace="genesys")["genesys-kafka-bridge/templates/NOTES.txt"]
    if "WARNING: the chart cannot count the topics" not in notes:
        fail("topics from a file of the user's: NOTES.txt does not warn that the surge cannot be checked")
    ok("topics from the user's own topics_file: rendered, and NOTES.txt warns that the surge's channels "
       "cannot be checked")


# --------------------------------------------------------------------- live


def get_json(url: str, params: dict | None = None, method: str = "GET", body: bytes | None = None) -> dict:
    if params:
        url += "?" + urllib.parse.urlencode(params, doseq=True)
    req = urllib.request.Request(url, data=body, method=method,
                                 headers={"Content-Type": "application/json"} if body else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read()
    return json.loads(text) if text else {}


def query(prom: str, expr: str) -> list:
    try:
        r = get_json(f"{prom}/api/v1/query", {"query": expr})
    except urllib.error.HTTPError as e:
        fail(f"query failed ({e.code}: {e.read().decode()[:300]}): {expr}")
    if r.get("status") != "success":
        fail(f"query failed: {r}: {expr}")
    if r.get("warnings"):
        fail(f"query warnings {r['warnings']}: {expr}")
    return r["data"]["result"]


def substitute(expr: str) -> str:
    # What Grafana would pick for a 1s scrape interval and a short run.
    values = {"__rate_interval": "15s", "__interval": "5s", "__range": "5m", "job": ".*", "namespace": ".*", "pod": ".*"}

    def sub(m):
        name = m.group(1) or m.group(2)
        if name not in values:
            fail(f"unknown Grafana variable ${name} in {expr}")
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, expr)


def scalar(result: list) -> float:
    return max(float(s["value"][1]) for s in result) if result else float("nan")


def wait_for(what: str, cond, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.25)
    fail(f"timed out after {timeout:g}s waiting for {what}")


def alerts_in(prom: str, states: set[str]) -> list[dict]:
    return [a for a in get_json(f"{prom}/api/v1/alerts")["data"]["alerts"] if a["state"] in states]


def eval_dashboard(prom: str, dash: dict) -> dict[str, list]:
    results = {}
    for p, t in targets(dash):
        expr = substitute(t["expr"])
        res = query(prom, expr)
        if not res:
            fail(f"panel {p['title']!r} query {t['refId']} returned no data: {expr}")
        results[f"{p['title']}/{t['refId']}"] = res
    return results


def cmd_live(args) -> None:
    prom, admin, emu = args.prometheus, args.admin, args.emulator
    dash = json.loads(DASHBOARD.read_text())
    scrape = Path(args.scrape).read_text()
    exported = {l.split("{")[0].split(" ")[0] for l in scrape.splitlines() if l and not l.startswith("#")}
    families = {l.split()[2] for l in scrape.splitlines() if l.startswith("# TYPE ")}

    # Names: everything the dashboard and the rules use is exported.
    for where, exprs in (("dashboard", [t["expr"] for _, t in targets(dash)]
                          + [v["definition"] for v in dash["templating"]["list"] if v["type"] == "query"]),
                         ("alerts.yaml", [e for _, e in rule_exprs()])):
        used = {n for e in exprs for n in METRIC.findall(e)}
        missing = sorted(used - exported)
        if missing:
            fail(f"{where} uses metrics the bridge does not export: {missing}")
        ok(f"{where}: all {len(used)} genesys_bridge_* names it uses are in the live /metrics scrape")
    used = {n for _, t in targets(dash) for n in METRIC.findall(t["expr"])}
    unshown = sorted(f for f in families if f.startswith("genesys_bridge_")
                     and not any(n == f or n in (f + "_bucket", f + "_sum", f + "_count") for n in used))
    if unshown:
        fail(f"exported metrics no dashboard panel shows: {unshown}")
    ours = [f for f in families if f.startswith("genesys_bridge_")]
    ok(f"every one of the {len(ours)} exported genesys_bridge_* families is on the dashboard")

    # Prometheus is scraping.
    wait_for("5 scrapes of the bridge", lambda: scalar(query(prom, 'count_over_time(up{job="genesys-kafka-bridge"}[1m])')) >= 5, 30)
    up = scalar(query(prom, 'up{job="genesys-kafka-bridge"}'))
    if up != 1:
        fail(f"up = {up}")
    ok("Prometheus scrapes the bridge every 1s (up = 1)")

    # Variables resolve.
    for v in dash["templating"]["list"]:
        if v["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", v["definition"])
        if not m:
            fail(f"variable ${v['name']}: cannot evaluate {v['definition']}")
        series = get_json(f"{prom}/api/v1/series", {"match[]": substitute(m.group(1))})["data"]
        vals = sorted({s.get(m.group(2)) for s in series} - {None})
        if not vals:
            fail(f"variable ${v['name']} has no values")
        ok(f"variable ${v['name']} = {vals}")

    # The rules are loaded and evaluate without error; nothing fires while healthy.
    def rules_evaluated():
        groups = get_json(f"{prom}/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules)
    wait_for("the alert rules to be evaluated", rules_evaluated, 20)
    rules = [r for g in get_json(f"{prom}/api/v1/rules")["data"]["groups"] for r in g["rules"]]
    bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    if bad or len(rules) != len(rule_exprs()):
        fail(f"rules unhealthy or missing in Prometheus: {bad} ({len(rules)} loaded)")
    ok(f"Prometheus loaded dashboards/alerts.yaml: {len(rules)} rules, all health=ok")
    active = alerts_in(prom, {"pending", "firing"})
    if active:
        fail(f"alerts active on a healthy bridge: {[a['labels']['alertname'] for a in active]}")
    ok("no alert pending or firing on a healthy bridge")

    # Every panel query evaluates and returns data.
    results = eval_dashboard(prom, dash)
    ok(f"all {len(results)} dashboard queries evaluate without error or warning and return data")

    # Open a gap: drop the socket and answer the bridge's check of its
    # channel (HEAD) once with 429 Retry-After: 3, so that the bridge stays
    # blind for at least 3s (the backoff alone is jittered from 0).
    get_json(f"{emu}/_emulator/faults/fail-next", method="POST",
             body=json.dumps({"kind": "head_channel", "count": 1, "status": 429, "retryAfter": 3}).encode())
    dropped = get_json(f"{emu}/_emulator/faults/drop", method="POST", body=b"{}")["affected"]
    if dropped < 1:
        fail("the emulator dropped no socket")
    t0 = time.monotonic()
    wait_for("GenesysBridgeGapOpen to go pending",
             lambda: any(a["labels"]["alertname"] == "GenesysBridgeGapOpen" for a in alerts_in(prom, {"pending", "firing"})), 10)
    during = eval_dashboard(prom, dash)
    blind = sum(float(s["value"][1]) for s in during["Shards by state/A"] if s["metric"].get("state") == "blind")
    if blind < 1 or scalar(during["Ready/A"]) != 0:
        fail(f"during the gap: 'Shards by state' blind = {blind}, 'Ready' = {scalar(during['Ready/A'])}")
    ok(f"dropped {dropped} socket (channel check refused once with Retry-After: 3): GenesysBridgeGapOpen pending after "
       f"{time.monotonic() - t0:.1f}s; 'Shards by state' blind = {blind:g}, 'Ready' = 0, "
       f"'Oldest open gap' = {scalar(during['Oldest open gap/A']):.1f}s")
    wait_for("the bridge to be ready again", lambda: http_status(f"{admin}/readyz") == 200, 30)
    wait_for("the closed gap in Prometheus",
             lambda: scalar(query(prom, 'genesys_bridge_gaps_total{kind="unplanned"}')) >= 1, 15)
    wait_for("GenesysBridgeGapOpen to clear", lambda: not alerts_in(prom, {"pending", "firing"}), 10)
    ok(f"gap closed after {time.monotonic() - t0:.1f}s, the bridge is ready again and no alert is active")

    results = eval_dashboard(prom, dash)

    def val(key: str) -> float:
        return scalar(results[key])

    checks = {
        "sockets receiving": val("Sockets receiving/A") >= 1,
        "ready": val("Ready/A") == 1,
        "scraped": val("Scraped/A") == 1,
        "shards receiving, none blind or rejected": {s["metric"].get("state"): float(s["value"][1])
                                                     for s in results["Shards by state/A"]}
        == {"receiving": 1, "blind": 0, "rejected": 0},
        "no open gap": val("Oldest open gap/A") == 0,
        "restarts in range": val("Restarts in range/A") == 0,
        "process CPU": val("CPU/A") >= 0,
        "resident memory": val("Resident memory/A") > 0,
        "open file descriptors": val("Open file descriptors/A") > 0,
        "topics subscribed": val("Topics subscribed/A") >= 1,
        "events received per second": val("Events in and out/A") > 0,
        "events published per second": val("Events in and out/B") > 0,
        "publish latency p50": 0 < val("Publish latency (received to delivery report)/A") < 30,
        "publish latency p99": 0 < val("Publish latency (received to delivery report)/B") < 30,
        "unplanned gaps closed in range": any(s["metric"].get("kind") == "unplanned" and float(s["value"][1]) > 0
                                              for s in results["Gaps closed in range/A"]),
        "blind seconds in range": val("Blind seconds in range/A") >= 2.5,
        "socket_error reconnects": any(s["metric"].get("reason") == "socket_error" and float(s["value"][1]) > 0
                                       for s in results["Reconnects by reason/A"]),
        "token requests ok": any(s["metric"].get("result") == "ok" for s in results["Token requests by result/A"]),
        "heartbeat age": 0 <= val("Heartbeat age (stalest open socket)/A") < 10,
        "buffered events": not math.isnan(val("Buffered events/A")),
        "Kafka delivery errors": not math.isnan(val("Kafka delivery errors/A")),
    }
    failed = [k for k, good in checks.items() if not good]
    if failed:
        fail(f"core panels without the expected data: {failed}")
    total = {n: scalar(query(prom, f"sum(genesys_bridge_events_{n}_total)")) for n in ("received", "published", "duplicate")}
    ok("core panels show the run: "
       f"sockets {val('Sockets receiving/A'):g}; events received {total['received']:g}, published {total['published']:g}, "
       f"duplicates {total['duplicate']:g}; latency p50 {1000 * val('Publish latency (received to delivery report)/A'):.1f} ms "
       f"p99 {1000 * val('Publish latency (received to delivery report)/B'):.1f} ms, "
       f"blind {val('Blind seconds in range/A'):.2f}s, heartbeat age {val('Heartbeat age (stalest open socket)/A'):.2f}s, "
       f"buffered {val('Buffered events/A'):g}")


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("dashboard")
    h = sub.add_parser("helm")
    h.add_argument("--work", required=True)
    h.add_argument("--binary", required=True)
    lv = sub.add_parser("live")
    lv.add_argument("--prometheus", required=True)
    lv.add_argument("--admin", required=True)
    lv.add_argument("--emulator", required=True)
    lv.add_argument("--scrape", required=True)
    sub.add_parser("rules")
    args = ap.parse_args()
    {"dashboard": cmd_dashboard, "rules": cmd_rules, "helm": cmd_helm, "live": cmd_live}[args.cmd](args)


if __name__ == "__main__":
    main()

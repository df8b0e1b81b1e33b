#!/usr/bin/env bash
# Validates the deployment manifests offline; nothing here needs a container engine or a
# cluster, and nothing is started.
#
#   deploy/validate-manifests.sh
#
#   compose    deploy/compose/compose.yaml against the Compose specification's JSON schema
#              (as check-jsonschema vendors it: --builtin-schema vendor.compose-spec)
#   kubernetes deploy/k8s/fhirseal.yaml and the Secret deploy/k8s/make-secret.sh prints,
#              against the Kubernetes JSON schemas of 1.30 and 1.37, strictly: an unknown
#              field is an error (kubernetes-validate, which carries the schemas)
#   systemd    deploy/systemd/fhirseal.service: its hardening keys, `systemd-analyze verify`,
#              and `systemd-analyze security --offline` under an exposure threshold
#   images     deploy/Containerfile, deploy/hapi/Containerfile: what they copy exists, the
#              runtime stage runs as an unprivileged user
#   topology   what no schema says: HAPI FHIR publishes no port and is reached on the
#              loopback of fhirseal's network namespace, the fhirseal Service targets
#              fhirseal's port, the probes are /healthz and /readyz, every voter has its
#              governance Service, the disruption budget keeps a Raft majority
#   config     with a built fhirseal (FHIRSEAL_BIN, else target/debug or target/release):
#              `fhirseal config` accepts the configuration each manifest gives a node
#   entrypoint with a built fhirseal: deploy/container/test-node.sh runs the images'
#              entrypoint on loopback (found, join, registrar; two nodes, a few seconds)
#
# Then it checks itself: broken copies of the manifests, in a temporary directory, must each
# be refused (an unknown key, a wrong type, a published HAPI port, …); a check that passes a
# broken manifest fails the run.
#
# Tools: check-jsonschema and kubernetes-validate from PyPI, pinned below, installed into a
# virtual environment under ${FHIRSEAL_TOOLS_DIR:-~/.cache/fhirseal/deploy-tools} when missing.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

CHECK_JSONSCHEMA_VERSION=0.39.0
KUBERNETES_VALIDATE_VERSION=1.37.0
KUBERNETES_VERSIONS=(1.30.0 1.37.0)
# systemd-analyze security's exposure, 0 (none) to 100; the unit scores about 11.
SYSTEMD_EXPOSURE_THRESHOLD=20

compose_file=deploy/compose/compose.yaml
k8s_file=deploy/k8s/fhirseal.yaml
unit_file=deploy/systemd/fhirseal.service
containerfiles=(deploy/Containerfile deploy/hapi/Containerfile)

tools=${FHIRSEAL_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/fhirseal/deploy-tools}
venv="$tools/venv-cj$CHECK_JSONSCHEMA_VERSION-kv$KUBERNETES_VALIDATE_VERSION"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

failures=0
pass() { echo "  ok    $*"; }
fail() { echo "  FAIL  $*"; failures=$(( failures + 1 )); }

install_tools() {
    if [[ -x "$venv/bin/check-jsonschema" && -x "$venv/bin/kubernetes-validate" ]]; then
        return 0
    fi
    echo "installing check-jsonschema $CHECK_JSONSCHEMA_VERSION and kubernetes-validate $KUBERNETES_VALIDATE_VERSION (PyPI) into $venv"
    rm -rf "$venv"
    mkdir -p "$tools"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check \
        "check-jsonschema==$CHECK_JSONSCHEMA_VERSION" \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
}

# The schema checks. Each prints what it found wrong and returns non-zero.
compose_schema() {
    "$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$1"
}

k8s_schema() {
    local v
    for v in "${KUBERNETES_VERSIONS[@]}"; do
        "$venv/bin/kubernetes-validate" --strict --quiet --no-warn -k "$v" "$@" || return 1
    done
}

# The unit's hardening keys, each with the value it must have.
unit_keys() {
    "$venv/bin/python" - "$1" <<'PY'
import sys
want = {
    "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
    "PrivateTmp": "yes", "PrivateDevices": "yes", "CapabilityBoundingSet": "",
    "AmbientCapabilities": "", "ReadWritePaths": "/var/lib/fhirseal",
    "StateDirectory": "fhirseal", "User": "fhirseal", "RestrictSUIDSGID": "yes",
    "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes", "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native", "UMask": "0077",
}
section, seen, bad = None, {}, []
for n, line in enumerate(open(sys.argv[1]), 1):
    line = line.strip()
    if not line or line[0] in "#;":
        continue
    if line.startswith("["):
        section = line
        continue
    key, sep, value = line.partition("=")
    if not sep:
        bad.append(f"line {n}: not a key=value line: {line}")
    elif section == "[Service]":
        seen.setdefault(key.strip(), []).append(value.strip())
for key, value in want.items():
    if key not in seen:
        bad.append(f"[Service] lacks {key}=")
    elif value not in seen[key]:
        bad.append(f"[Service] {key}={seen[key][-1]}, expected {key}={value}")
if not any(v.startswith("/") for v in seen.get("ExecStart", [])):
    bad.append("[Service] lacks an absolute ExecStart=")
for b in bad:
    print(b)
sys.exit(1 if bad else 0)
PY
}

# `systemd-analyze verify`, whose only tolerated complaint is that the binary the unit starts
# is not installed on this machine; then the exposure score.
unit_systemd() {
    local unit="$1" copy out exec
    copy="$work/systemd/$(basename "$unit")"
    mkdir -p "$work/systemd"
    cp "$unit" "$copy"
    exec=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$copy" | head -n 1)
    out=$(cd "$work/systemd" && systemd-analyze verify "$copy" 2>&1 || true)
    out=$(grep -v -F "Command $exec is not executable: No such file or directory" <<<"$out" || true)
    if [[ -n "$out" ]]; then
        echo "$out"
        return 1
    fi
    if ! systemd-analyze security --offline=yes --threshold="$SYSTEMD_EXPOSURE_THRESHOLD" "$copy" >"$work/security.txt" 2>&1; then
        tail -n 1 "$work/security.txt"
        echo "exposure above $SYSTEMD_EXPOSURE_THRESHOLD"
        return 1
    fi
}

# Containerfiles: every COPY source outside another stage, and every repository file a RUN
# step names, exists in the build context (the repository); the last stage sets a USER other
# than root.
containerfile_check() {
    "$venv/bin/python" - "$root" "$@" <<'PY'
import glob, os, shlex, sys
root, files = sys.argv[1], sys.argv[2:]
bad = []
for f in files:
    user = None
    lines, buf = [], ""
    for line in open(f):
        s = line.rstrip("\n")
        if s.lstrip().startswith("#"):
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        lines.append(buf + s)
        buf = ""
    for line in lines:
        words = shlex.split(line) if line.strip() else []
        if not words:
            continue
        op = words[0].upper()
        if op == "FROM":
            user = None
        elif op == "USER":
            user = words[1]
        elif op in ("COPY", "ADD"):
            args = [w for w in words[1:] if not w.startswith("--")]
            if any(w.startswith("--from") for w in words[1:]):
                continue
            for src in args[:-1]:
                if not glob.glob(os.path.join(root, src)):
                    bad.append(f"{f}: {op} {src}: no such path in the build context")
        # Files of the repository a build step names (after `COPY . .`) must exist too.
        if op == "RUN":
            for word in words[1:]:
                if word.startswith("deploy/") and not os.path.exists(os.path.join(root, word)):
                    bad.append(f"{f}: RUN names {word}, which is not in the repository")
    if user is None or user.split(":")[0] in ("root", "0"):
        bad.append(f"{f}: the runtime stage runs as root (no USER, or USER root)")
for b in bad:
    print(b)
sys.exit(1 if bad else 0)
PY
}

# What the schemas cannot say: the topology of fhirseal and HAPI FHIR.
compose_topology() {
    "$venv/bin/python" - "$1" <<'PY'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
services = doc["services"]
bad = []
def env(s):
    e = s.get("environment") or {}
    if isinstance(e, list):
        e = dict(x.split("=", 1) for x in e)
    return e
hapis = {n: s for n, s in services.items() if str(s.get("image", "")).startswith("fhirseal-hapi")}
nodes = {n: s for n, s in services.items() if str(s.get("image", "")).startswith("fhirseal:")}
if not hapis or not nodes:
    bad.append("no fhirseal or no HAPI FHIR service")
for n, s in hapis.items():
    if s.get("ports") or s.get("expose"):
        bad.append(f"{n}: HAPI FHIR publishes a port; it is reached only through fhirseal")
    mode = s.get("network_mode", "")
    owner = mode.removeprefix("service:")
    if not mode.startswith("service:") or owner not in nodes:
        bad.append(f"{n}: network_mode must be service:<a fhirseal service>, not {mode!r}")
    if s.get("networks"):
        bad.append(f"{n}: HAPI FHIR joins a network of its own")
for n, s in nodes.items():
    e = env(s)
    if s.get("command", ["run"])[0] == "registrar":
        continue
    if e.get("FHIRSEAL_UPSTREAM") != "http://127.0.0.1:8080/fhir":
        bad.append(f"{n}: FHIRSEAL_UPSTREAM is not the HAPI FHIR on its loopback")
    if not any(h.get("network_mode") == f"service:{n}" for h in hapis.values()):
        bad.append(f"{n}: no HAPI FHIR shares its network namespace")
for b in bad:
    print(b)
sys.exit(1 if bad else 0)
PY
}

k8s_topology() {
    "$venv/bin/python" - "$1" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)
bad = []
sts = by_kind.get("StatefulSet", [None])[0]
if sts is None:
    print("no StatefulSet"); sys.exit(1)
pod = sts["spec"]["template"]["spec"]
labels = sts["spec"]["template"]["metadata"]["labels"]
containers = {c["name"]: c for c in pod["containers"]}
fh, hapi = containers.get("fhirseal"), containers.get("hapi")
if not fh or not hapi:
    print("the pod lacks the fhirseal or the hapi container"); sys.exit(1)
def env(c):
    return {e["name"]: e.get("value") for e in c.get("env", [])}
if hapi.get("ports"):
    bad.append("hapi: declares ports; HAPI FHIR listens on the pod's loopback only")
if env(hapi).get("SERVER_ADDRESS") != "127.0.0.1":
    bad.append("hapi: SERVER_ADDRESS is not 127.0.0.1")
if env(fh).get("FHIRSEAL_UPSTREAM") != "http://127.0.0.1:8080/fhir":
    bad.append("fhirseal: FHIRSEAL_UPSTREAM is not the HAPI FHIR on the pod's loopback")
fh_ports = {p["name"]: p["containerPort"] for p in fh.get("ports", [])}
probes = {k: fh.get(k, {}).get("httpGet", {}).get("path") for k in ("livenessProbe", "readinessProbe", "startupProbe")}
if probes != {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}:
    bad.append(f"fhirseal: probes are {probes}, expected /healthz (liveness, startup) and /readyz (readiness)")
for k in ("livenessProbe", "readinessProbe", "startupProbe"):
    port = fh.get(k, {}).get("httpGet", {}).get("port")
    if port not in fh_ports and port not in fh_ports.values():
        bad.append(f"fhirseal: {k} is not on a port of fhirseal's")
if not pod.get("securityContext", {}).get("runAsNonRoot"):
    bad.append("the pod may run as root")
services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
front = services.get("fhirseal")
if not front:
    bad.append("no Service named fhirseal")
else:
    for p in front["spec"]["ports"]:
        t = p.get("targetPort", p["port"])
        if t not in fh_ports and t not in fh_ports.values():
            bad.append(f"Service fhirseal: port {p['port']} targets {t!r}, not a port of the fhirseal container")
        if fh_ports.get(t, t) != fh_ports.get("fhir"):
            bad.append(f"Service fhirseal: port {p['port']} targets {t!r}, not fhirseal's FHIR port")
    if front["spec"].get("selector") != labels:
        bad.append("Service fhirseal does not select the StatefulSet's pods")
prefix = env(fh).get("FHIRSEAL_ADVERTISE_SERVICE")
if prefix:
    for i in range(sts["spec"]["replicas"]):
        name = f"{prefix.lower().replace('_', '-')}-{i}"
        s = services.get(name)
        if not s or s["spec"].get("selector") != {"statefulset.kubernetes.io/pod-name": f"{sts['metadata']['name']}-{i}"}:
            bad.append(f"no Service {name} selecting pod {sts['metadata']['name']}-{i} (its governance address)")
pdbs = by_kind.get("PodDisruptionBudget", [])
replicas = sts["spec"]["replicas"]
if not pdbs:
    bad.append("no PodDisruptionBudget for the voters")
for pdb in pdbs:
    if pdb["spec"]["selector"].get("matchLabels") != labels:
        bad.append("the PodDisruptionBudget does not select the StatefulSet's pods")
    if pdb["spec"].get("minAvailable", 0) <= replicas // 2:
        bad.append(f"the PodDisruptionBudget's minAvailable is not a majority of {replicas} voters")
nps = by_kind.get("NetworkPolicy", [])
if not nps:
    bad.append("no NetworkPolicy")
for np in nps:
    for rule in np["spec"].get("ingress", []):
        for p in rule.get("ports", []):
            if p.get("port") == 8080:
                bad.append("the NetworkPolicy lets HAPI FHIR's port 8080 in")
for b in bad:
    print(b)
sys.exit(1 if bad else 0)
PY
}

# `fhirseal config` on the configuration each manifest gives a node: its environment, and
# for Kubernetes the generated Secret's fhirseal.toml.
fhirseal_bin() {
    local b
    for b in "${FHIRSEAL_BIN:-}" target/debug/fhirseal target/release/fhirseal; do
        if [[ -n "$b" && -x "$b" ]]; then echo "$b"; return 0; fi
    done
    return 1
}

config_check() {
    local bin="$1" compose="$2" k8s="$3" secret="$4"
    "$venv/bin/python" - "$bin" "$compose" "$k8s" "$secret" "$work" <<'PY'
import os, subprocess, sys, yaml
binary, compose, k8s, secret, work = sys.argv[1:]
bad = []
def run(name, env):
    data = os.path.join(work, "config-" + name)
    os.makedirs(data, exist_ok=True)
    env = {k: str(v) for k, v in env.items() if k.startswith("FHIRSEAL_")}
    env["FHIRSEAL_DATA_DIR"] = data
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    r = subprocess.run([binary, "config"], env={**base, **env}, capture_output=True, text=True)
    if r.returncode != 0:
        bad.append(f"{name}: fhirseal config refused it: {r.stderr.strip() or r.stdout.strip()}")
doc = yaml.safe_load(open(compose))
for n, s in doc["services"].items():
    if str(s.get("image", "")).startswith("fhirseal:"):
        e = s.get("environment") or {}
        run("compose-" + n, e)
sec = [d for d in yaml.safe_load_all(open(secret)) if d][0]
toml = os.path.join(work, "fhirseal.toml")
open(toml, "w").write(sec["stringData"]["fhirseal.toml"])
for d in yaml.safe_load_all(open(k8s)):
    if d and d["kind"] == "StatefulSet":
        pod = d["spec"]["template"]["spec"]
        for c in pod["containers"] + pod.get("initContainers", []):
            if not c["image"].startswith("fhirseal:"):
                continue
            e = {}
            for x in c.get("env", []):
                if "value" in x:
                    e[x["name"]] = x["value"]
                elif x.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
                    e[x["name"]] = d["metadata"]["name"] + "-0"
            e["FHIRSEAL_CONFIG"] = toml
            run("k8s-" + c["name"], e)
for b in bad:
    print(b)
sys.exit(1 if bad else 0)
PY
}

# Runs one check; $1 names it, the rest is the command.
check() {
    local name="$1" out
    shift
    if out=$("$@" 2>&1); then
        pass "$name"
    else
        fail "$name"
        sed 's/^/        /' <<<"$out"
    fi
}

# A broken copy must be refused: $1 names the breakage, $2 the check (a function), $3 the
# file, $4 a Python expression that rewrites the text `t`.
refused() {
    local name="$1" fn="$2" file="$3" edit="$4" copy
    copy="$work/broken/$(basename "$file")"
    mkdir -p "$work/broken"
    "$venv/bin/python" -c "import sys; t = open(sys.argv[1]).read(); u = $edit; assert u != t, 'the edit changed nothing'; open(sys.argv[2], 'w').write(u)" "$file" "$copy"
    if "$fn" "$copy" >"$work/broken.out" 2>&1; then
        fail "a broken copy passes: $name"
    else
        pass "refused: $name ($(grep -v -e '^\s*$' -e '^Schema validation errors' "$work/broken.out" | head -n 1 | sed "s/^ *//" | cut -c1-220))"
    fi
    rm -f "$copy"
}

start=$(date +%s)
install_tools
secret="$work/fhirseal-secret.yaml"
deploy/k8s/make-secret.sh >"$secret"

echo "manifests"
check "compose: $compose_file (compose-spec schema)" compose_schema "$compose_file"
check "compose: HAPI FHIR only behind fhirseal" compose_topology "$compose_file"
check "kubernetes: $k8s_file and make-secret.sh's Secret (schemas ${KUBERNETES_VERSIONS[*]}, strict)" k8s_schema "$k8s_file" "$secret"
check "kubernetes: HAPI FHIR only behind fhirseal, probes, voters" k8s_topology "$k8s_file"
check "systemd: $unit_file hardening keys" unit_keys "$unit_file"
if command -v systemd-analyze >/dev/null 2>&1; then
    check "systemd: systemd-analyze verify and security (exposure <= $SYSTEMD_EXPOSURE_THRESHOLD)" unit_systemd "$unit_file"
else
    echo "  skip  systemd-analyze is not installed: the unit's keys were checked, not parsed by systemd"
fi
check "images: ${containerfiles[*]}" containerfile_check "${containerfiles[@]}"
if bin=$(fhirseal_bin); then
    check "config: fhirseal config accepts every node's configuration ($bin)" config_check "$bin" "$compose_file" "$k8s_file" "$secret"
    check "entrypoint: fhirseal-node.sh founds, joins and admits on loopback (deploy/container/test-node.sh)" deploy/container/test-node.sh "$bin"
else
    echo "  skip  no built fhirseal (FHIRSEAL_BIN, target/debug, target/release): configurations and the entrypoint not checked"
fi

echo "broken copies"
refused "compose: an unknown service key" compose_schema "$compose_file" \
    "t.replace('  registrar:\n', '  registrar:\n    restartt: always\n', 1)"
refused "compose: stop_grace_period as a list" compose_schema "$compose_file" \
    "t.replace('stop_grace_period: 60s', 'stop_grace_period: [60]', 1)"
refused "compose: HAPI FHIR publishes its port" compose_topology "$compose_file" \
    "t.replace('    network_mode: \"service:fhirseal\"\n', '    network_mode: \"service:fhirseal\"\n    ports: [\"8080:8080\"]\n', 1)"
refused "kubernetes: a containerPort that is a string" k8s_schema "$k8s_file" \
    "t.replace('containerPort: 8088', 'containerPort: \"8088\"', 1)"
refused "kubernetes: an unknown container field" k8s_schema "$k8s_file" \
    "t.replace('imagePullPolicy: IfNotPresent', 'imagePullPolicy: IfNotPresent\n          pullPolicy: Always', 1)"
refused "kubernetes: minAvailable as a list" k8s_schema "$k8s_file" \
    "t.replace('  minAvailable: 2\n', '  minAvailable: [2]\n', 1)"
refused "kubernetes: the Service targets HAPI FHIR's port" k8s_topology "$k8s_file" \
    "t.replace('      targetPort: fhir\n', '      targetPort: 8080\n', 1)"
refused "kubernetes: HAPI FHIR listens on every address" k8s_topology "$k8s_file" \
    "t.replace('name: SERVER_ADDRESS\n              value: 127.0.0.1', 'name: SERVER_ADDRESS\n              value: 0.0.0.0', 1)"
refused "systemd: a misspelt hardening key" unit_keys "$unit_file" \
    "t.replace('NoNewPrivileges=yes', 'NoNewPrivilege=yes', 1)"
if command -v systemd-analyze >/dev/null 2>&1; then
    refused "systemd: a value systemd cannot parse" unit_systemd "$unit_file" \
        "t.replace('ProtectSystem=strict', 'ProtectSystem=stricter', 1)"
    refused "systemd: hardening dropped" unit_systemd "$unit_file" \
        "t.replace('SystemCallFilter=@system-service\n', '', 1).replace('CapabilityBoundingSet=\n', '', 1).replace('PrivateUsers=yes\n', '', 1).replace('RestrictNamespaces=yes\n', '', 1)"
fi
refused "images: a COPY of a missing directory" containerfile_check deploy/hapi/Containerfile \
    "t.replace('COPY deploy/hapi/src ./src', 'COPY deploy/hapi/sources ./src', 1)"
refused "images: a build step installing a missing script" containerfile_check deploy/Containerfile \
    "t.replace('deploy/container/fhirseal-node.sh', 'deploy/container/missing.sh')"
refused "images: the runtime stage as root" containerfile_check deploy/Containerfile \
    "t.replace('USER 10001:10001', 'USER root', 1)"

echo
if (( failures > 0 )); then
    echo "validate-manifests: $failures check(s) failed ($(( $(date +%s) - start )) s)"
    exit 1
fi
echo "validate-manifests: every manifest is valid and every broken copy was refused ($(( $(date +%s) - start )) s)"
echo "(validated offline against schemas and checks; none of the manifests was run here)"

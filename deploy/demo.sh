#!/usr/bin/env bash
# The demo, once deploy/quickstart.sh runs (in another terminal): writes one Synthea patient
# through fhirseal as a clinician, then shows what HAPI FHIR holds (no identity), what a
# clinician and a researcher read through fhirseal, and what `$verify` answers an auditor.
#
#   deploy/demo.sh [SYNTHEA_FILE.json]
#
# SYNTHEA_FILE is a Synthea transaction bundle (its Patient is written) or a Patient resource;
# the default is the first bundle in ../shared/data/synthea beside the repository. It reads
# what the quickstart set up, and takes the same variables: FHIRSEAL_LISTEN (127.0.0.1:8088),
# HAPI_PORT (8080), FHIRSEAL_DATA_DIR (./fhirseal-data, whose keys/api-keys.toml holds the
# clinician, researcher and auditor keys; FHIRSEAL_API_KEYS names another file).
#
# It is a check as well as a show: it exits 1 when any of the patient's identity (names,
# identifiers, telecom, address below the state, full birth date, mother's maiden name, birth
# place) is in HAPI FHIR's copy or in what the researcher reads, when the clinician does not
# get the identity back, or when `$verify` does not verify the write.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
listen=${FHIRSEAL_LISTEN:-127.0.0.1:8088}
hapi_port=${HAPI_PORT:-8080}
data_dir=${FHIRSEAL_DATA_DIR:-$root/fhirseal-data}
keys=${FHIRSEAL_API_KEYS:-$data_dir/keys/api-keys.toml}

file=${1:-}
if [[ -z "$file" ]]; then
    file=$(find "$root/../shared/data/synthea" -maxdepth 1 -name '*.json' 2>/dev/null | sort | head -n 1)
    [[ -n "$file" ]] || { echo "demo.sh: no Synthea file given and none in $root/../shared/data/synthea" >&2; exit 2; }
fi
[[ -f "$file" ]] || { echo "demo.sh: no such file: $file" >&2; exit 2; }
[[ -f "$keys" ]] || { echo "demo.sh: no API keys at $keys: is deploy/quickstart.sh running?" >&2; exit 2; }

exec python3 - "$file" "$keys" "http://$listen/fhir" "http://127.0.0.1:$hapi_port/fhir" <<'PY'
import json, sys, time, tomllib, urllib.error, urllib.request

file, keys_file, base, hapi = sys.argv[1:]
FHIR_JSON = "application/fhir+json"
failures = []

with open(keys_file, "rb") as f:
    table = tomllib.load(f)
keys = {}
for k in table.get("api_keys", []):
    keys.setdefault(k["role"], k["key"])
for role in ("clinician", "researcher", "auditor"):
    if role not in keys:
        sys.exit(f"demo.sh: {keys_file} has no {role} key")

def request(method, url, role=None, body=None):
    shown = f"curl -X {method}" if method != "GET" else "curl"
    if role:
        shown += f" -H 'X-Api-Key: <{role} key>'"
    if body is not None:
        shown += f" -H 'Content-Type: {FHIR_JSON}' --data-binary @patient.json"
    print(f"  $ {shown} '{url}'")
    headers = {"Accept": FHIR_JSON}
    if role:
        headers["X-Api-Key"] = keys[role]
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = FHIR_JSON
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        text = e.read().decode(errors="replace")
        try:
            return e.code, dict(e.headers), json.loads(text)
        except ValueError:
            return e.code, dict(e.headers), text
    except urllib.error.URLError as e:
        sys.exit(f"demo.sh: {url}: {e.reason} (is deploy/quickstart.sh running?)")

def heading(text):
    print(f"\n== {text}")

# The patient: a Synthea bundle's Patient entry, or a Patient resource.
with open(file) as f:
    doc = json.load(f)
if doc.get("resourceType") == "Bundle":
    patients = [e["resource"] for e in doc.get("entry", []) if e.get("resource", {}).get("resourceType") == "Patient"]
    if not patients:
        sys.exit(f"demo.sh: {file} holds no Patient")
    patient = patients[0]
elif doc.get("resourceType") == "Patient":
    patient = doc
else:
    sys.exit(f"demo.sh: {file} is neither a Bundle nor a Patient")
patient = {k: v for k, v in patient.items() if k not in ("id", "meta")}

# What identifies the patient: every value the split profile keeps out of HAPI FHIR.
MAIDEN = "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName"
BIRTHPLACE = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace"
identity = set()
for n in patient.get("name", []):
    identity.update(n.get("given", []) + n.get("prefix", []) + n.get("suffix", []))
    identity.update([n.get("family", ""), n.get("text", "")])
identity.update(i.get("value", "") for i in patient.get("identifier", []))
identity.update(t.get("value", "") for t in patient.get("telecom", []))
for a in patient.get("address", []):
    identity.update(a.get("line", []) + [a.get("city", ""), a.get("postalCode", ""), a.get("text", "")])
for x in patient.get("extension", []):
    if x.get("url") == MAIDEN:
        identity.add(x.get("valueString", ""))
    if x.get("url") == BIRTHPLACE:
        identity.add(x.get("valueAddress", {}).get("city", ""))
identity = {v for v in identity if len(v) >= 3}
birth_date = patient.get("birthDate", "")

def strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)

def leaks(resource):
    found = sorted({v for s in strings(resource) for v in identity if v in s})
    if birth_date and len(birth_date) > 4 and resource.get("birthDate") == birth_date:
        found.append(f"birthDate {birth_date}")
    return found

def view(resource):
    """The parts of a Patient that carry identity, as they are in `resource`."""
    out = {"id": resource["id"]} if "id" in resource else {}
    for key in ("name", "identifier", "telecom", "birthDate", "address"):
        if key in resource:
            out[key] = resource[key]
    if "identifier" in out:
        out["identifier"] = [{k: i[k] for k in ("system", "value") if k in i} for i in out["identifier"]]
    if "name" in out:
        out["name"] = [{k: n[k] for k in ("family", "given") if k in n} for n in out["name"]]
    kept = [x["url"].rsplit("/", 1)[-1] for x in resource.get("extension", [])]
    out["extension"] = kept
    return json.dumps(out, indent=2).replace("\n", "\n    ")

name = patient.get("name", [{}])[0]
who = " ".join(name.get("given", []) + [name.get("family", "")])
heading(f"1. A clinician writes {who} ({file.rsplit('/', 1)[-1]}) through fhirseal")
print("    " + view(patient))
status, headers, body = request("POST", f"{base}/Patient", "clinician", patient)
if status != 201:
    sys.exit(f"demo.sh: the write answered {status}: {json.dumps(body)[:400]}")
location = headers.get("Location") or headers.get("location") or ""
parts = location.split("/Patient/", 1)[-1].split("/")
pid = parts[0]
print(f"  -> 201 Created, Location: {location}")

heading("2. What HAPI FHIR holds, read directly (no API key: HAPI is the sidecar's upstream)")
status, _, stored = request("GET", f"{hapi}/Patient/{pid}")
if status != 200:
    sys.exit(f"demo.sh: HAPI FHIR answered {status} for Patient/{pid}")
print("    " + view(stored))
found = leaks(stored)
if found:
    failures.append(f"HAPI FHIR holds the patient's identity: {found}")
    print(f"  !! IDENTITY UPSTREAM: {found}")
else:
    print(f"  -> none of the patient's {len(identity)} identity values is in HAPI FHIR's copy; birth date: {stored.get('birthDate')!r}")

heading("3. What a clinician reads through fhirseal (re-identified)")
status, _, clinical = request("GET", f"{base}/Patient/{pid}", "clinician")
print("    " + view(clinical))
if status != 200 or name.get("family") not in {n.get("family") for n in clinical.get("name", [])}:
    failures.append(f"the clinician did not get the identity back ({status})")
elif clinical.get("birthDate") != birth_date:
    failures.append(f"the clinician read birthDate {clinical.get('birthDate')!r}, not {birth_date!r}")
else:
    print(f"  -> name, identifiers and birth date are back for the clinician")

heading("4. What a researcher reads through fhirseal (pseudonymized)")
status, _, research = request("GET", f"{base}/Patient/{pid}", "researcher")
print("    " + view(research))
found = leaks(research) if status == 200 else []
if status != 200:
    failures.append(f"the researcher's read answered {status}")
elif found:
    failures.append(f"the researcher sees identity: {found}")
else:
    print("  -> no identity for the researcher")

heading("5. $verify: the write, proven against the consortium's ledger (as an auditor)")
deadline = time.time() + 30
while True:
    status, _, answer = request("GET", f"{base}/Patient/{pid}/$verify", "auditor")
    params = {}
    if isinstance(answer, dict):
        for p in answer.get("parameter", []):
            value = next((v for k, v in p.items() if k.startswith("value")), None)
            params[p["name"]] = value
    if status == 200 and params.get("verified") is True or time.time() > deadline:
        break
    print("  (not anchored yet; asking again)")
    time.sleep(1)
for key in ("verified", "anchored", "proofValid", "upstreamMatches", "institution", "blockHeight", "blockTime", "blockHash", "anchoredHash", "upstreamHash", "issue"):
    if key in params:
        print(f"    {key:16} {json.dumps(params[key])}")
if status != 200 or params.get("verified") is not True:
    failures.append(f"$verify did not verify the write ({status}: {params.get('issue') or answer})")
else:
    print("  -> anchored in a final block, the proof checks, and HAPI FHIR still holds what was anchored")

print()
if failures:
    for f in failures:
        print(f"demo.sh: FAILED: {f}")
    sys.exit(1)
print(f"demo.sh: Patient/{pid} is sealed: HAPI FHIR and the researcher see no identity, the clinician does, and $verify verifies it")
PY

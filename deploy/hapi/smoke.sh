#!/usr/bin/env bash
# Smoke test of a running test HAPI server: the behaviour the fhirseal tests rely on.
#   hapi.sh start 18080 && smoke.sh 18080 && hapi.sh stop 18080
# Needs curl and python3. Writes test data (Patients with family SmokeA/SmokeB/SmokeZ, and
# one Synthea transaction Bundle if /work/shared/data/synthea or $SYNTHEA_DIR exists).
# Ends with the line "N passed, N failed"; exit 1 if any check failed.
set -euo pipefail

PORT="${1:?usage: smoke.sh PORT}"
B="http://127.0.0.1:$PORT/fhir"
J='Content-Type: application/fhir+json'
XF=(-H 'X-Forwarded-Host: 127.0.0.1:9999' -H 'X-Forwarded-Proto: http' -H 'X-Forwarded-Prefix: /fhir')
SYNTHEA_DIR="${SYNTHEA_DIR:-/work/shared/data/synthea}"
T="$(mktemp -d)"
trap 'rm -rf "$T"' EXIT
pass=0 fail=0

ok() { echo "PASS $1"; pass=$((pass + 1)); }
ko() { echo "FAIL $1: $2"; fail=$((fail + 1)); }
# check NAME CONDITION-COMMAND... : PASS if the command succeeds
check() { local n="$1"; shift; if "$@"; then ok "$n"; else ko "$n" "$(cat "$T/why" 2>/dev/null || true)"; fi; rm -f "$T/why"; }
# req METHOD URL [curl args...]: body -> $T/body, headers -> $T/hdr, prints the status code
req() { local m="$1" u="$2"; shift 2; curl -sg -X "$m" -o "$T/body" -D "$T/hdr" -w '%{http_code}' "$@" "$u"; }
hdr() { grep -i "^$1:" "$T/hdr" | head -1 | cut -d' ' -f2- | tr -d '\r'; }
js() { python3 -c "import json,sys; d=json.load(open('$T/body')); print($1)"; }
is() { [[ "$1" == "$2" ]] || { echo "got '$1', want '$2'" >"$T/why"; return 1; }; }
like() { [[ "$1" == $2 ]] || { echo "'$1' is not like '$2'" >"$T/why"; return 1; }; }
starts() { [[ "$1" == "$2"* ]] || { echo "'$1' does not start with '$2'" >"$T/why"; return 1; }; }
count() { req GET "$B/Patient?family=$1&_summary=count" -H 'Cache-Control: no-cache' >/dev/null; js "d['total']"; }

# clean slate for our test families (ignore failures: may be empty)
for f in SmokeA SmokeB SmokeZ; do req DELETE "$B/Patient?family=$f" >/dev/null || true; done

c=$(req GET "$B/metadata")
check "metadata 200 CapabilityStatement 4.0.1" is "$c $(js "d['resourceType']+' '+d['fhirVersion']")" "200 CapabilityStatement 4.0.1"

c=$(req POST "$B/Patient" -H "$J" -d '{"resourceType":"Patient","identifier":[{"system":"http://x","value":"123"}],"name":[{"family":"SmokeA"}]}')
loc=$(hdr Location)
check "POST 201" is "$c" 201
check "POST Location = BASE/Patient/ID/_history/1" like "$loc" "$B/Patient/*/_history/1"

c=$(req PUT "$B/Patient/my-client-id" -H "$J" -d '{"resourceType":"Patient","id":"my-client-id","name":[{"family":"SmokeA"}]}')
check "PUT new client id -> 201 (update as create)" is "$c" 201
c=$(req PUT "$B/Patient/4242" -H "$J" -d '{"resourceType":"Patient","id":"4242","name":[{"family":"SmokeB"}]}')
check "PUT new numeric client id -> 201 or 200" is "$([[ $c == 20[01] ]] && echo y)" y

c=$(req GET "$B/Patient?identifier=http://x|123")
check "raw | in query -> 200, 1 match" is "$c $(js "d.get('total')")" "200 1"
c=$(req GET "$B/Patient?name=[a]{b}")
check "raw [ ] { } in query -> 200" is "$c" 200

c=$(req GET "$B/Patient?family=SmokeA&_count=1")
check "_count=1 of 2 has next link" is "$c $(js "[l['relation'] for l in d['link']].count('next')")" "200 1"
next=$(js "[l['url'] for l in d['link'] if l['relation']=='next'][0]")
c=$(req GET "$next")
check "next page 200 with 1 entry" is "$c $(js "len(d.get('entry', []))")" "200 1"

c=$(req PATCH "$B/Patient/my-client-id" -H 'Content-Type: application/json-patch+json' \
    -d '[{"op":"add","path":"/active","value":true}]')
check "JSON Patch -> 200, active=true" is "$c $(js "d.get('active')")" "200 True"
c=$(req PATCH "$B/Patient/my-client-id" -H "$J" -d '{"resourceType":"Parameters","parameter":[{"name":"operation","part":[{"name":"type","valueCode":"replace"},{"name":"path","valueString":"Patient.active"},{"name":"value","valueBoolean":false}]}]}')
check "FHIRPath Patch -> 200, active=false" is "$c $(js "d.get('active')")" "200 False"

c=$(req PUT "$B/Patient/my-client-id" -H "$J" -H 'If-Match: W/"1"' -d '{"resourceType":"Patient","id":"my-client-id","name":[{"family":"SmokeA"}]}')
check "If-Match stale version -> 409" is "$c" 409
c=$(req PUT "$B/Patient/my-client-id" -H "$J" -H 'If-Match: W/"3"' -d '{"resourceType":"Patient","id":"my-client-id","name":[{"family":"SmokeA"}]}')
check "If-Match current version -> 200, ETag W/\"4\"" is "$c $(hdr ETag)" '200 W/"4"'
c=$(req GET "$B/Patient/my-client-id/_history")
check "instance history has 4 versions" is "$c $(js "d.get('total')")" "200 4"
c=$(req GET "$B/Patient/my-client-id?_format=xml")
check "_format=xml" is "$c $(hdr Content-Type)" "200 application/fhir+xml;charset=UTF-8"

c=$(req POST "$B/Patient" -H "$J" -H 'If-None-Exist: identifier=http://x|123' -d '{"resourceType":"Patient","identifier":[{"system":"http://x","value":"123"}]}')
check "conditional create, existing -> 200" is "$c" 200
c=$(req PUT "$B/Patient?identifier=http://x|123" -H "$J" -d '{"resourceType":"Patient","identifier":[{"system":"http://x","value":"123"}],"name":[{"family":"SmokeA"}],"active":true}')
check "conditional update -> 200" is "$c" 200

c=$(req POST "$B" -H "$J" -d '{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Patient/my-client-id"}},{"request":{"method":"GET","url":"Patient/nope"}}]}')
check "batch -> 200 [200, 404]" is "$c $(js "[e['response']['status'][:3] for e in d['entry']]")" "200 ['200', '404']"

bundle=$(ls -S "$SYNTHEA_DIR"/*.json 2>/dev/null | tail -1 || true)
if [[ -n "$bundle" ]]; then
    c=$(req POST "$B" -H "$J" --data-binary "@$bundle")
    check "Synthea transaction $(basename "$bundle") -> 200, all 201" is "$c $(js "all(e['response']['status'].startswith('201') for e in d['entry'])")" "200 True"
else
    echo "SKIP Synthea transaction: no bundle in $SYNTHEA_DIR"
fi

check "2 SmokeA patients before delete" is "$(count SmokeA)" 2
c=$(req DELETE "$B/Patient?family=SmokeA")
check "conditional DELETE matching 2 -> 200" is "$c" 200
check "0 SmokeA patients after delete" is "$(count SmokeA)" 0

c=$(req POST "$B/Patient/my-client-id/\$expunge" -H "$J" -d '{"resourceType":"Parameters","parameter":[{"name":"expungeDeletedResources","valueBoolean":true},{"name":"expungePreviousVersions","valueBoolean":true}]}')
check "instance \$expunge -> 200, count 5" is "$c $(js "d['parameter'][0]['valueInteger']")" "200 5"
c=$(req GET "$B/Patient/my-client-id/_history/1")
check "expunged version -> 404" is "$c" 404

for i in 1 2; do req POST "$B/Patient" -H "$J" -d '{"resourceType":"Patient","name":[{"family":"SmokeZ"}]}' >/dev/null; done
c=$(req DELETE "$B/Patient?family=SmokeZ&_expunge=true")
check "DELETE ?_expunge=true accepted" is "$c" 200
gone=""
for i in $(seq 1 30); do [[ "$(count SmokeZ)" == 0 ]] && { gone=y; break; }; sleep 1; done
check "delete-expunge job done within 30 s" is "$gone" y

c=$(req POST "$B/Patient" -H "$J" "${XF[@]}" -d '{"resourceType":"Patient","name":[{"family":"SmokeB"}]}')
check "X-Forwarded-*: Location on proxy" starts "$(hdr Location)" "http://127.0.0.1:9999/fhir/Patient/"
c=$(req GET "$B/Patient?family=SmokeB&_count=1" "${XF[@]}")
check "X-Forwarded-*: every link.url on proxy" is "$(js "all(l['url'].startswith('http://127.0.0.1:9999/fhir') for l in d['link'])")" True
check "X-Forwarded-*: fullUrl on proxy" starts "$(js "d['entry'][0]['fullUrl']")" "http://127.0.0.1:9999/fhir/Patient/"
c=$(req GET "$B/Patient?family=SmokeB&_count=1")
check "no X-Forwarded-*: links on HAPI itself" is "$(js "all(l['url'].startswith('$B') for l in d['link'])")" True
c=$(req POST "$B/Patient" -H "$J" -d '{"resourceType":"Patient","name":[{"family":"SmokeB"}]}')
check "no X-Forwarded-*: Location on HAPI itself" starts "$(hdr Location)" "$B/Patient/"

echo "$pass passed, $fail failed"
[[ "$fail" == 0 ]]

#!/usr/bin/env bash
# Prints the Secret `fhirseal-config` of deploy/k8s/fhirseal.yaml: fhirseal.toml with new
# random API keys, a clinician, a researcher and an auditor key for each institution
# (fhirseal-0 … fhirseal-N-1, the StatefulSet's pods; each pod is its own institution).
#
#   deploy/k8s/make-secret.sh [N] > fhirseal-secret.yaml && kubectl apply -f fhirseal-secret.yaml
#
# N defaults to 3, the StatefulSet's replicas. The keys are in the output only: keep the file
# as secret as the keys, or delete it once applied.
set -euo pipefail
n=${1:-3}
[[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "make-secret.sh: N must be a positive number" >&2; exit 2; }

random_key() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

cat <<HEAD
apiVersion: v1
kind: Secret
metadata:
  name: fhirseal-config
  labels:
    app.kubernetes.io/name: fhirseal
type: Opaque
stringData:
  fhirseal.toml: |
    # fhirseal's configuration in the pods of deploy/k8s/fhirseal.yaml; the StatefulSet's
    # environment sets the listeners, the upstream, TLS and the data directory.
    [log]
    filter = "info,openraft=warn"
HEAD
for (( i = 0; i < n; i++ )); do
    for role in clinician researcher auditor; do
        cat <<KEY

    [[auth.api_keys]]
    name = "fhirseal-$i-$role"
    institution = "fhirseal-$i"
    role = "$role"
    key = "$(random_key)"
KEY
    done
done

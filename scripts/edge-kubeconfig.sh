#!/usr/bin/env bash
# Writes a kubeconfig for one edge host, with only the rights config/edge
# grants (its own MeshNode). Usage: scripts/edge-kubeconfig.sh NAME [HOURS]
# (apply a copy of config/edge for NAME first). Prints the kubeconfig.
set -euo pipefail
name=${1:?usage: $0 EDGE_NAME [HOURS]}
hours=${2:-720}
sa="weft-edge-${name}"
kubectl -n weft-system get serviceaccount "$sa" >/dev/null
token=$(kubectl -n weft-system create token "$sa" --duration="${hours}h")
server=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')
ca=$(kubectl config view --minify --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
cat <<YAML
apiVersion: v1
kind: Config
clusters:
  - name: weft
    cluster: {server: "${server}", certificate-authority-data: "${ca}"}
users:
  - name: ${sa}
    user: {token: "${token}"}
contexts:
  - name: weft-edge
    context: {cluster: weft, user: ${sa}}
current-context: weft-edge
YAML

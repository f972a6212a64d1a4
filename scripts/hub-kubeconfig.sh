#!/usr/bin/env bash
# Writes a kubeconfig for one federation member, run against the HUB
# cluster, with only the rights config/hub/member-<site> grants (write its
# own records, read the others'). Usage: scripts/hub-kubeconfig.sh SITE [HOURS]
# (apply a copy of config/hub/member-cluster-a for SITE first). Prints the
# kubeconfig; store it in the member cluster as the Secret its Remote
# MeshSites name in hubAccess.kubeconfigSecret (the operator may read only
# weft-system/weft-hub-kubeconfig, see config/rbac/hub_access_role.yaml):
#   scripts/hub-kubeconfig.sh cluster-a > hub.kubeconfig   # against the hub
#   kubectl -n weft-system create secret generic weft-hub-kubeconfig \
#     --from-file=kubeconfig=hub.kubeconfig                # against the member
# The server address is the hub's as this kubectl reaches it: it must be one
# the member's operator reaches too. `kubectl create token` needs 1.24+.
set -euo pipefail
site=${1:?usage: $0 SITE [HOURS]}
hours=${2:-720}
ns="weft-hub-${site}"
kubectl -n "$ns" get serviceaccount weft-member >/dev/null
token=$(kubectl -n "$ns" create token weft-member --duration="${hours}h")
server=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')
ca=$(kubectl config view --minify --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
cat <<YAML
apiVersion: v1
kind: Config
clusters:
  - name: weft-hub
    cluster: {server: "${server}", certificate-authority-data: "${ca}"}
users:
  - name: weft-member-${site}
    user: {token: "${token}"}
contexts:
  - name: weft-hub
    context: {cluster: weft-hub, user: weft-member-${site}, namespace: ${ns}}
current-context: weft-hub
YAML

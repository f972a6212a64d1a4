#!/usr/bin/env bash
# Makes a real Kubernetes control plane (etcd + kube-apiserver) available to the tests.
#
# The tests take the binaries from WEFT_KUBE_APISERVER and WEFT_ETCD when set, so the same
# suite runs against any newer Kubernetes. Otherwise this script provides them: etcd from
# Debian's etcd-server, kube-apiserver built once from Debian's `kubernetes` source package
# (1.20.2) and cached under $WEFT_CACHE (default /var/cache/weft); later runs reuse the cache.
# kubectl comes from the machine when it has one, else from Debian's kubernetes-client.
#
# Prints nothing on a cache hit but the paths; a build takes about 15 minutes on 2 cores.
set -euo pipefail

CACHE=${WEFT_CACHE:-/var/cache/weft}
K8S_VERSION=1.20.2
APISERVER="$CACHE/kubernetes-$K8S_VERSION/kube-apiserver"

apt_install() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  echo "weft: installing ${missing[*]}"
  apt-get update -qq
  # etcd-server's maintainer scripts would start a system etcd; the tests run their own.
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
}

if [ -z "${WEFT_ETCD:-}" ]; then
  apt_install etcd-server
  # A packaged etcd may have been started by an init system; it would hold port 2379 and
  # a data dir nobody asked for. The tests start their own on free ports.
  if pgrep -x etcd >/dev/null && [ -f /etc/default/etcd ]; then
    (service etcd stop || systemctl stop etcd) >/dev/null 2>&1 || true
  fi
fi

# The tests need kubectl >= 1.21 (`apply -k` with directories in `resources`).
# Debian ships only 1.20 (kubernetes-client), whose kustomize cannot; machines
# with a current kubectl (many images carry one) use theirs.
if ! command -v kubectl >/dev/null; then
  apt_install kubernetes-client
fi
kminor=$(kubectl version --client -o json 2>/dev/null | sed -n 's/.*"minor": *"\([0-9]*\).*/\1/p' | head -1)
if [ "${kminor:-0}" -lt 21 ]; then
  echo "weft: warning: kubectl $(command -v kubectl) is older than 1.21; the real-control-plane tests need a newer one (they fail under CI)" >&2
fi

build_apiserver() {
  apt_install dpkg-dev golang-go golang-github-modern-go-reflect2-dev rsync make
  local work="$CACHE/build-$K8S_VERSION"
  rm -rf "$work" && mkdir -p "$work"
  # deb-src for the mirror the machine already uses, kept to our own list file.
  local list=/etc/apt/sources.list.d/weft-deb-src.sources
  if [ ! -f "$list" ]; then
    local uri suites
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    uri=${uri:-http://deb.debian.org/debian}
    suites=$(. /etc/os-release && echo "$VERSION_CODENAME")
    printf 'Types: deb-src\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$uri" "$suites" >"$list"
  fi
  apt-get update -qq
  (cd "$work" && apt-get source -qq --download-only "kubernetes=$(apt-cache showsrc kubernetes | awk '/^Version:/ {print $2; exit}')" >/dev/null \
     && dpkg-source -x --no-check ./kubernetes_*.dsc src >/dev/null)
  local src="$work/src"
  # The vendored reflect2 1.0.1 crashes on Go >= 1.18 (runtime.mapiterinit) at the first
  # custom-resource create; Debian's 1.0.2 is API-compatible and fixed.
  rm -rf "$src/vendor/github.com/modern-go/reflect2"
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$src/vendor/github.com/modern-go/reflect2"
  echo "weft: building kube-apiserver $K8S_VERSION from Debian's source package (about 15 minutes)"
  # GOPATH mode, as debian/rules builds it.
  (cd "$src" && GO111MODULE=off GOFLAGS=-mod=vendor GOCACHE="$work/gocache" \
     KUBE_GIT_VERSION="v$K8S_VERSION" KUBE_GIT_TREE_STATE=clean \
     make WHAT=cmd/kube-apiserver >"$work/build.log" 2>&1) || {
    tail -40 "$work/build.log" >&2
    echo "weft: the kube-apiserver build failed; full log in $work/build.log" >&2
    exit 1
  }
  local bin
  bin=$(find "$src/_output" -type f -name kube-apiserver -perm -u+x | head -1)
  [ -n "$bin" ] || { echo "weft: the build made no kube-apiserver binary" >&2; exit 1; }
  mkdir -p "$(dirname "$APISERVER")"
  install -m 0755 "$bin" "$APISERVER.tmp" && mv "$APISERVER.tmp" "$APISERVER"
  rm -rf "$work"
}

if [ -z "${WEFT_KUBE_APISERVER:-}" ] && [ ! -x "$APISERVER" ]; then
  build_apiserver
fi

echo "weft: control plane: kube-apiserver ${WEFT_KUBE_APISERVER:-$APISERVER}, etcd ${WEFT_ETCD:-$(command -v etcd)}, kubectl $(command -v kubectl)"

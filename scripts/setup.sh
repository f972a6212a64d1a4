#!/usr/bin/env bash
# Installs what building, the demo and the tests need on Debian. Idempotent.
set -euo pipefail

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "weft: this needs root (network namespaces, TUN devices): run it as root" >&2
    exit 1
  fi
}
need_root

PKGS=(iproute2 iputils-ping iperf3 wireguard-tools wireguard-go nftables busybox-static
      procps util-linux psmisc gcc make pkg-config ca-certificates kmod lua5.4
      containernetworking-plugins)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "weft: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Docker engine: the image tests build and run Weft's images locally.
if ! command -v docker >/dev/null; then
  echo "weft: installing docker.io"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends docker.io >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  (service docker start || systemctl start docker) >/dev/null 2>&1 || (nohup dockerd >/var/log/weft-dockerd.log 2>&1 &)
  for _ in $(seq 1 30); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || echo "weft: warning: the Docker engine is not running; image tests will fail under CI" >&2
fi

# Rust: the workspace needs a recent stable toolchain (kube 5 needs >= 1.89),
# newer than Debian ships; rustup is the supported way to get it.
if [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; fi
if ! command -v cargo >/dev/null; then
  echo "weft: no cargo found. Install Rust >= 1.89 with rustup (https://rustup.rs), then re-run." >&2
  exit 1
fi
ver=$(cargo --version | awk '{print $2}')
if [ "$(printf '%s\n1.89.0\n' "$ver" | sort -V | head -1)" != "1.89.0" ]; then
  echo "weft: cargo $ver is too old; need >= 1.89 (rustup update stable)" >&2
  exit 1
fi
[ -e /dev/net/tun ] || { mkdir -p /dev/net && mknod /dev/net/tun c 10 200 && chmod 0666 /dev/net/tun; }
echo "weft: dependencies ready (cargo $ver)"

#!/usr/bin/env bash
# Builds the Weft container images from binaries already built in the
# workspace (`make images` runs `cargo build --release` first).
#
# There is no registry to pull a base image from, so every image is
# `FROM scratch`: this script stages a root filesystem per image under
# $WEFT_IMAGE_STAGE/<image>/rootfs — the binaries (debug info stripped), the
# shared libraries `ldd` says they need, and for the node daemon `nft` (with its
# libraries) and Debian's busybox-static — and `docker build`s
# images/<image>/Dockerfile with that directory as the context.
#
#   WEFT_BIN_DIR      binaries to package        (default: target/release)
#   WEFT_IMAGE_TAG    tag of the images          (default: dev)
#   WEFT_IMAGE_STAGE  staging directory          (default: target/images/$WEFT_IMAGE_TAG)
#   WEFT_IMAGES       which images to build      (default: "operator node-daemon")
#
# Produces weft-operator:$WEFT_IMAGE_TAG and weft-node-daemon:$WEFT_IMAGE_TAG,
# the names config/manager and config/node-daemon use (tag dev).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN_DIR=${WEFT_BIN_DIR:-target/release}
TAG=${WEFT_IMAGE_TAG:-dev}
STAGE=${WEFT_IMAGE_STAGE:-target/images/$TAG}
IMAGES=${WEFT_IMAGES:-operator node-daemon}

die() { echo "images: $*" >&2; exit 1; }
command -v docker >/dev/null || die "docker is not installed"
command -v ldd >/dev/null || die "ldd is not installed (libc-bin)"

# copy_bin SRC ROOT DEST: installs the executable SRC at ROOT/DEST, stripped of
# debug info, plus every shared library it links (and the ELF interpreter) at
# the path the host resolves them to.
copy_bin() {
  local src=$1 root=$2 dest=$3
  [ -x "$src" ] || die "$src is missing: build it first (cargo build --release)"
  install -D -m 0755 "$src" "$root$dest"
  if command -v strip >/dev/null; then strip --strip-debug "$root$dest"; fi
  copy_libs "$src" "$root"
}

copy_libs() {
  local bin=$1 root=$2 lib
  # Lines look like "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
  # "/lib64/ld-linux-x86-64.so.2 (0x...)"; static binaries have none.
  for lib in $(ldd "$bin" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
    if [ ! -e "$root$lib" ]; then
      mkdir -p "$root$(dirname "$lib")"
      cp -L "$lib" "$root$lib"
    fi
  done
}

base_fs() {
  local root=$1
  mkdir -p "$root"/{etc,tmp,var/lib/weft,run}
  chmod 1777 "$root/tmp"
  printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
  if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  fi
}

stage_operator() {
  local root=$1
  base_fs "$root"
  copy_bin "$BIN_DIR/weft-operator" "$root" /usr/local/bin/weft-operator
}

stage_node_daemon() {
  local root=$1 nft busybox app
  base_fs "$root"
  copy_bin "$BIN_DIR/weft-node-daemon" "$root" /usr/local/bin/weft-node-daemon
  # The chained CNI plugin, for a future installer to copy to /opt/cni/bin.
  copy_bin "$BIN_DIR/weft-cni" "$root" /opt/weft/cni/weft-cni
  # The daemon runs `nft -j -f -` to program each app's policy.
  nft=$(command -v nft || true)
  [ -n "$nft" ] || nft=/usr/sbin/nft
  [ -x "$nft" ] || die "nft is not installed (apt-get install nftables)"
  install -D -m 0755 "$nft" "$root/usr/sbin/nft"
  copy_libs "$nft" "$root"
  # A shell and small tools for `kubectl exec` debugging (nsenter, ping, ip).
  busybox=/bin/busybox
  [ -x "$busybox" ] || die "busybox is not installed (apt-get install busybox-static)"
  ldd "$busybox" >/dev/null 2>&1 && die "$busybox is dynamically linked: install busybox-static"
  install -D -m 0755 "$busybox" "$root/bin/busybox"
  for app in $("$busybox" --list); do
    [ -e "$root/bin/$app" ] || [ -e "$root/usr/sbin/$app" ] || ln -s busybox "$root/bin/$app"
  done
}

for image in $IMAGES; do
  case $image in
    operator) stage=stage_operator ;;
    node-daemon) stage=stage_node_daemon ;;
    *) die "unknown image $image (operator, node-daemon)" ;;
  esac
  ctx="$STAGE/$image"
  rm -rf "$ctx"
  mkdir -p "$ctx/rootfs"
  "$stage" "$ctx/rootfs"
  cp "images/$image/Dockerfile" "$ctx/Dockerfile"
  echo "images: building weft-$image:$TAG from $BIN_DIR"
  docker build -q -t "weft-$image:$TAG" --label "dev.weft.image=$image" "$ctx" >/dev/null
  docker image ls --format '  {{.Repository}}:{{.Tag}}  {{.Size}}' "weft-$image:$TAG"
done

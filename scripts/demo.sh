#!/usr/bin/env bash
# The demo: builds Weft, starts two simulated nodes joined by a simulated WAN,
# deploys examples/, and shows encrypted traffic, isolation and status.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; fi
echo "weft: building (release)..."
cargo build --release --workspace --bins -q
exec env WEFT_BIN_DIR="$PWD/target/release" target/release/weft-demo --examples examples "$@"

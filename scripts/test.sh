#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit/property tests, privileged
# data-plane tests in real namespaces, and the end-to-end simulation.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; fi
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets -q -- -D warnings
echo "== cargo build (binaries the e2e tests drive)"
cargo build --workspace --bins -q
echo "== cargo test"
export WEFT_BIN_DIR="$PWD/target/debug"
cargo test --workspace --no-fail-fast 2>&1 | tee target/test-output.txt
status=${PIPESTATUS[0]}
passed=$(grep -Eo '^test result: .*' target/test-output.txt | awk '{p+=$4; f+=$6; i+=$8} END {print p+0, f+0, i+0}')
read -r p f i <<<"$passed"
echo "$p passed, $f failed, $i skipped"
exit "$status"

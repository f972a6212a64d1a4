#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit/property tests, privileged
# data-plane tests in real namespaces, and the end-to-end simulation.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# etcd and a kube-apiserver for the real-control-plane tests (built once, cached).
bash scripts/control-plane.sh
if [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; fi
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets -q -- -D warnings
echo "== cargo build (binaries the e2e tests drive)"
cargo build --workspace --bins -q
echo "== cargo test"
export WEFT_BIN_DIR="$PWD/target/debug"
# --show-output: a test that could not run says so on its stdout (SKIPPED, or
# NOT CHECKED for a check the API server is too old for); the summary counts them.
cargo test --workspace --no-fail-fast -- --show-output 2>&1 | tee target/test-output.txt
status=${PIPESTATUS[0]}
passed=$(grep -Eo '^test result: .*' target/test-output.txt | awk '{p+=$4; f+=$6; i+=$8} END {print p+0, f+0, i+0}')
read -r p f i <<<"$passed"
# A test that could not run prints SKIPPED and returns early; cargo counts it
# as passed, so it is taken out of the passed count here.
s=$(grep -c '^SKIPPED: ' target/test-output.txt || true)
notchecked=$(grep -c '^NOT CHECKED on ' target/test-output.txt || true)
echo "$((p - s)) passed, $f failed, $((i + s)) skipped ($s SKIPPED at run time), $notchecked checks the API server was too old for"
exit "$status"

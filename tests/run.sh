#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 machine or a developer's: installs what the tests
# need, then lint, unit, integration and config checks. Usage: bash tests/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
# pebble: the ACME test CA (tests/acme.rs, started per test by tests/acme-testbed/start-pebble.sh)
for cmd in curl:curl ps:procps openssl:openssl pebble:pebble; do
  command -v "${cmd%%:*}" >/dev/null 2>&1 || need+=("${cmd#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "${need[@]}"; }
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo build (debug, for the test binary)"
cargo build --quiet
echo "== every shipped config passes gatehouse check"
find config -name '*.toml' -print0 | while IFS= read -r -d '' f; do
  ./target/debug/gatehouse check --config "$f"
done
echo "== cargo test"
cargo test --all-targets -- --test-threads=2

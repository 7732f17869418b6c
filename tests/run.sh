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
# redis-server (its service is not started) and redis-cli (package redis-tools, pulled in by it):
# the shared store tests/cluster.rs and tests/cluster_challenges.rs start per test on a unix
# socket, without persistence; tests/cluster_store.rs starts it with TLS (Debian builds it with
# TLS) and in Sentinel mode (`redis-server --sentinel`: the same binary, no redis-sentinel
# package needed).
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  echo "installing: redis-server (its service is not started)"
  export DEBIAN_FRONTEND=noninteractive
  own_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get install -y -qq --no-install-recommends redis-server >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server; }
  if [ -n "$own_policy" ]; then
    rm -f /usr/sbin/policy-rc.d
    trap - EXIT
  fi
  if [ -d /run/systemd/system ]; then
    systemctl disable --now redis-server.service >/dev/null 2>&1 || true
  fi
fi
# knotd (package knot) and kdig/knsupdate (knot-dnsutils): the authoritative DNS server that
# tests/dns01.rs starts on a loopback port for DNS-01. Installed like prometheus below, so the
# package's own knot.service (port 53) is not started.
if ! command -v knotd >/dev/null 2>&1 || ! command -v knsupdate >/dev/null 2>&1; then
  echo "installing: knot knot-dnsutils (its service is not started)"
  export DEBIAN_FRONTEND=noninteractive
  own_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get install -y -qq --no-install-recommends knot knot-dnsutils >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends knot knot-dnsutils; }
  if [ -n "$own_policy" ]; then
    rm -f /usr/sbin/policy-rc.d
    trap - EXIT
  fi
  if [ -d /run/systemd/system ]; then
    systemctl disable --now knot.service >/dev/null 2>&1 || true
  fi
fi
# promtool (package prometheus): checks and unit-tests config/prometheus/. Only the tool is wanted:
# no recommended exporters, and the prometheus service the package ships must not start. A
# policy-rc.d that refuses (unless the machine has one, as Docker images do) stops the install
# from starting it; on a machine running systemd it is also disabled so it stays off at boot.
if ! command -v promtool >/dev/null 2>&1; then
  echo "installing: prometheus (for promtool; its service is not started)"
  export DEBIAN_FRONTEND=noninteractive
  own_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus; }
  if [ -n "$own_policy" ]; then
    rm -f /usr/sbin/policy-rc.d
    trap - EXIT
  fi
  if [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  fi
fi

echo "== promtool: alert rules, their unit tests, the example scrape config"
promtool check rules config/prometheus/gatehouse-alerts.yml
promtool test rules tests/prometheus/gatehouse-alerts.test.yml
promtool check config config/prometheus/prometheus.yml

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo build (debug, for the test binary)"
cargo build --quiet
echo "== every shipped config passes gatehouse check"
# config/examples/ is checked by tests/examples.rs, with the few settings a test machine needs
# (certificate files, a log folder)
find config -path config/examples -prune -o -name '*.toml' -print0 | while IFS= read -r -d '' f; do
  ./target/debug/gatehouse check --config "$f"
done
echo "== cargo test"
cargo test --lib --bins --tests -- --test-threads=2
echo "== cargo test again, HTTP/1.1 served by the native engine (GATEHOUSE_HTTP1_ENGINE=native)"
# Every integration test file, unchanged: the environment variable makes `http1_engine` default
# to "native" in every config they write (the few files that serve no HTTP/1.1, such as the
# config checks and the property tests, run again for nothing; `engine` and `native_upstream`
# set the engine in their own configs and run as they did above).
GATEHOUSE_HTTP1_ENGINE=native cargo test --tests -- --test-threads=2
echo "== micro-benchmarks, each run once as a test (divan takes no --test-threads)"
cargo test --benches

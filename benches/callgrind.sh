#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: a figure that does not move with the
# machine's load, for comparing two builds of Gatehouse (or two commits) on the request path.
#
#   bash benches/callgrind.sh                      # target/release/gatehouse, HTTP/1.1 keep-alive
#   MODE=h1tls bash benches/callgrind.sh           # HTTP/1.1 over TLS, one keep-alive connection
#   MODE=h2 bash benches/callgrind.sh              # HTTP/2 over TLS, 4 connections x 16 streams
#   bash benches/callgrind.sh /tmp/old-gatehouse   # another binary, same config and load
#   ROUTES=routes.toml bash benches/callgrind.sh   # the site's routes from a file (see below)
#   ROUTES=5000 TARGET=/api/v1/resource4998/x bash benches/callgrind.sh
#                                                  # 4,999 prefix routes before `/`, that path
#
# What it does: starts a one-worker nginx backend (`return 200 "ok\n"`) and Gatehouse under
# `valgrind --tool=callgrind` (one worker, one route, keep-alive upstream, no limits), warms up
# with WARMUP requests, zeroes the counters, sends REQUESTS requests with h2load (one connection
# for h1 and h1tls; for h2: -c4 -m16), dumps the counters and prints total instructions / REQUESTS. User
# space only (callgrind does not see the kernel, ~half of a request's CPU on loopback). Keeps the
# callgrind file and prints its path, for `callgrind_annotate --inclusive=yes FILE`.
# ROUTES is a number or a file. A number N: N - 1 routes `path = "/api/v1/resource{k}/"` go
# before the `/` route (routing cost by number of routes). A file: a TOML fragment put in place
# of the one route (`[[site.route]]` tables; the upstream is called `backend`), to price a
# feature (header rules, a regex route). TARGET is the path requested (compare two ROUTES with
# the same TARGET).
# Needs: valgrind, nginx, nghttp2-client (h2load), openssl, curl (installed if missing).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/target/release/gatehouse}
MODE=${MODE:-h1}
REQUESTS=${REQUESTS:-5000}
WARMUP=${WARMUP:-2000}
ROUTES=${ROUTES:-1}
TARGET=${TARGET:-/}

die() { echo "callgrind.sh: $*" >&2; exit 1; }
case $MODE in h1 | h1tls | h2) ;; *) die "MODE must be h1, h1tls or h2, not '$MODE'" ;; esac
[[ -x $BIN ]] || die "no gatehouse binary at $BIN (cargo build --release)"
need=()
for tool in valgrind:valgrind nginx:nginx h2load:nghttp2-client openssl:openssl curl:curl; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool#*:}")
done
if ((${#need[@]})); then
    apt-get install -y -q "${need[@]}" >/dev/null || die "could not install ${need[*]}"
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-callgrind.XXXXXX")
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_for() { # URL
    for _ in $(seq 1 120); do
        curl -sk -o /dev/null "$1" && return 0
        sleep 0.5
    done
    die "nothing answered at $1"
}

BACKEND=$(free_port)
mkdir -p "$TMP/nginx/logs"
cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server { listen 127.0.0.1:$BACKEND; location / { default_type text/plain; return 200 "ok\n"; } }
}
EOF
nginx -c "$TMP/nginx/nginx.conf" -p "$TMP/nginx" &
PIDS+=($!)
wait_for "http://127.0.0.1:$BACKEND/"

HTTP=$(free_port)
HTTPS=$(free_port)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -keyout "$TMP/key.pem" -out "$TMP/cert.pem" -subj /CN=localhost \
    -addext "subjectAltName=IP:127.0.0.1" 2>/dev/null
if [[ -f $ROUTES ]]; then
    routes=$(cat "$ROUTES")
else
    [[ $ROUTES =~ ^[1-9][0-9]*$ ]] || die "ROUTES must be a number or a file, not '$ROUTES'"
    routes=$(for ((k = 0; k < ROUTES - 1; k++)); do
        printf '  [[site.route]]\n  path = "/api/v1/resource%d/"\n  upstream = "backend"\n  max_body = "off"\n\n' "$k"
    done)
    routes+='
  [[site.route]]
  path = "/"
  upstream = "backend"
  max_body = "off"'
fi
cat >"$TMP/gatehouse.toml" <<EOF
[listen]
http = "127.0.0.1:$HTTP"
https = "127.0.0.1:$HTTPS"

[server]
workers = 1
timeouts = { idle = "300s" }

[[site]]
tls = { cert = "$TMP/cert.pem", key = "$TMP/key.pem" }
redirect_https = false
$routes

[upstream.backend]
servers = ["127.0.0.1:$BACKEND"]
EOF
OUT=$TMP/callgrind.out
RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$OUT" \
    "$BIN" run --config "$TMP/gatehouse.toml" >"$TMP/gatehouse.log" 2>&1 &
VG=$!
PIDS+=("$VG")
if [[ $MODE == h1 ]]; then
    URL=http://127.0.0.1:$HTTP$TARGET
    LOAD=(--h1 -c 1)
elif [[ $MODE == h1tls ]]; then
    # ALPN http/1.1, one keep-alive connection: its one handshake is counted, spread over
    # REQUESTS requests (as h2's four are), a few hundred instructions each at 5,000
    URL=https://127.0.0.1:$HTTPS$TARGET
    LOAD=(--h1 -c 1)
else
    URL=https://127.0.0.1:$HTTPS$TARGET
    LOAD=(-c 4 -m 16)
fi
wait_for "$URL"
h2load "${LOAD[@]}" -n "$WARMUP" "$URL" >/dev/null
callgrind_control -z "$VG" >/dev/null 2>&1
result=$(h2load "${LOAD[@]}" -n "$REQUESTS" "$URL")
callgrind_control -d "$VG" >/dev/null 2>&1
grep -q "status codes: $REQUESTS 2xx" <<<"$result" || die "not every request succeeded: $(grep 'status codes' <<<"$result")"
kill "$VG"
wait "$VG" 2>/dev/null || true
# the dump made by callgrind_control is the part after the zeroing: the largest file is it
dump=$(ls -S "$OUT".* 2>/dev/null | head -1)
[[ -n $dump ]] || die "callgrind wrote no dump (see $TMP/gatehouse.log)"
total=$(callgrind_annotate --auto=no "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "mode $MODE, $ROUTES routes, $TARGET: $REQUESTS requests, $total instructions, $((total / REQUESTS)) per request"
echo "profile: $dump   (callgrind_annotate --inclusive=yes $dump | less)"
trap - EXIT
cleanup

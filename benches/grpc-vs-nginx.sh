#!/usr/bin/env bash
# gRPC unary calls per CPU-second of the proxy: Gatehouse (`protocol = "h2c"` upstream) vs nginx
# (`grpc_pass grpc://`), each in front of the same backend on the same machine.
#
#   client:  h2load, h2c (prior knowledge), POST /bench.Echo/Unary with
#            `content-type: application/grpc`, `te: trailers` and a fixed 5+12-byte gRPC frame
#            (a protobuf message with one string field) as the body: gRPC on the wire, as h2load
#            can send it (it reads no trailers, so success is counted by HTTP status; the
#            backend answers every call with grpc-status 0)
#   backend: examples/grpc_bench_backend.rs (hyper h2c, echoes the message, trailers
#            grpc-status 0), pinned with h2load to LOAD_CPU
#   proxies: one worker each (Gatehouse `workers = 1`, nginx `worker_processes 1`), pinned to
#            PROXY_CPU, access logs off; their CPU time (utime+stime from /proc, nginx master
#            and worker together) is read before and after each run
#
# The figure is calls succeeded / proxy CPU-seconds: what a proxy costs per call, not how fast the
# (shared, 2-core) machine is. Targets are interleaved over REPEATS rounds; medians reported.
#
# Usage: bash benches/grpc-vs-nginx.sh
# nginx keeps 2 x H2_CONNS x H2_STREAMS idle upstream connections (`keepalive`): it sends one
# call per upstream connection, so with fewer it would open and close connections all along.
# Env knobs: DURATION [5s] REPEATS [3] WARMUP [1s] H2_CONNS [16] H2_STREAMS [32]
#            PROXY_CPU [0] LOAD_CPU [1] SKIP_BUILD [0] OUT [bench-results/grpc-vs-nginx.md]
#            CARGO_TARGET_DIR [target]
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd)
DURATION=${DURATION:-5s}
REPEATS=${REPEATS:-3}
WARMUP=${WARMUP:-1s}
H2_CONNS=${H2_CONNS:-16}
H2_STREAMS=${H2_STREAMS:-32}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
SKIP_BUILD=${SKIP_BUILD:-0}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=${OUT:-$ROOT/bench-results/grpc-vs-nginx.md}

log() { printf '[grpc-bench] %s\n' "$*" >&2; }
die() { printf '[grpc-bench] ERROR: %s\n' "$*" >&2; exit 1; }
dur_s() { case $1 in *s) echo "${1%s}" ;; *m) echo $((${1%m} * 60)) ;; *) echo "$1" ;; esac; }

for c in nginx h2load taskset; do
    if ! command -v "$c" >/dev/null 2>&1; then
        pkg=$c
        [[ $c == h2load ]] && pkg=nghttp2-client
        ((EUID == 0)) || die "missing $c (Debian package $pkg)"
        log "installing $pkg"
        DEBIAN_FRONTEND=noninteractive apt-get install -y "$pkg" >&2 ||
            { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y "$pkg" >&2; } ||
            die "cannot install $pkg"
    fi
done

if [[ $SKIP_BUILD != 1 ]]; then
    log "building release binaries (gatehouse, examples/grpc_bench_backend)"
    (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --bin gatehouse --example grpc_bench_backend >&2)
fi
GATEHOUSE=$TARGET_DIR/release/gatehouse
BACKEND=$TARGET_DIR/release/examples/grpc_bench_backend
[[ -x $GATEHOUSE && -x $BACKEND ]] || die "missing $GATEHOUSE or $BACKEND (build them, or unset SKIP_BUILD)"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/grpc-bench.XXXXXX")
chmod 755 "$TMP"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 100); do
        if (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    die "nothing listens on port $1"
}

BACKEND_PORT=$(free_port)
taskset -c "$LOAD_CPU" "$BACKEND" "127.0.0.1:$BACKEND_PORT" 2>"$TMP/backend.log" &
PIDS+=($!)
wait_port "$BACKEND_PORT"

NGINX_PORT=$(free_port)
mkdir -p "$TMP/nginx"
cat >"$TMP/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx;
    # h2load does not reconnect: nginx's default of 1,000 requests per client connection would
    # end each of its connections (and the run) after 1,000 calls
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    upstream grpc_backend {
        server 127.0.0.1:$BACKEND_PORT;
        # nginx sends one call per upstream connection: room to keep one per call in flight
        keepalive $((H2_CONNS * H2_STREAMS * 2));
        keepalive_requests 100000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT http2;
        location / { grpc_pass grpc://grpc_backend; }
    }
}
CONF
taskset -c "$PROXY_CPU" nginx -c "$TMP/nginx.conf" -p "$TMP/nginx" 2>"$TMP/nginx.stderr" &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
wait_port "$NGINX_PORT"

GH_PORT=$(free_port)
cat >"$TMP/gatehouse.toml" <<CONF
[listen]
http = "127.0.0.1:$GH_PORT"

[server]
workers = 1

[log]
access = "off"

[[site]]
  [[site.route]]
  path = "/"
  upstream = "grpc"

[upstream.grpc]
servers = ["127.0.0.1:$BACKEND_PORT"]
protocol = "h2c"
CONF
RUST_LOG=warn taskset -c "$PROXY_CPU" "$GATEHOUSE" run --config "$TMP/gatehouse.toml" 2>"$TMP/gatehouse.log" &
GH_PID=$!
PIDS+=("$GH_PID")
wait_port "$GH_PORT"

# one gRPC frame: uncompressed, 12 bytes of protobuf (field 1, string "hello gRPC")
printf '\x00\x00\x00\x00\x0c\x0a\x0ahello gRPC' >"$TMP/body.bin"

# cpu_ticks PID...: utime+stime of the processes and their children's threads
cpu_ticks() {
    local total=0 p f
    for p in "$@"; do
        for f in /proc/"$p"/task/*/stat; do
            [[ -r $f ]] || continue
            total=$((total + $(awk '{print $14 + $15}' "$f")))
        done
    done
    echo "$total"
}
nginx_pids() { echo "$NGINX_PID $(pgrep -P "$NGINX_PID" | tr '\n' ' ')"; }
CLK_TCK=$(getconf CLK_TCK)

run_h2load() { # PORT SECONDS -> h2load output
    taskset -c "$LOAD_CPU" h2load -c "$H2_CONNS" -m "$H2_STREAMS" -D "$2" \
        -H 'content-type: application/grpc' -H 'te: trailers' \
        -d "$TMP/body.bin" "http://127.0.0.1:$1/bench.Echo/Unary" 2>&1
}

declare -A RESULTS
for round in $(seq "$REPEATS"); do
    for target in nginx gatehouse; do
        case $target in
        nginx) port=$NGINX_PORT ;;
        gatehouse) port=$GH_PORT ;;
        esac
        if [[ $WARMUP != 0 ]]; then run_h2load "$port" "$(dur_s "$WARMUP")" >/dev/null; fi
        pids=$([[ $target == nginx ]] && nginx_pids || echo "$GH_PID")
        # shellcheck disable=SC2086
        before=$(cpu_ticks $pids)
        out=$(run_h2load "$port" "$(dur_s "$DURATION")")
        # shellcheck disable=SC2086
        after=$(cpu_ticks $pids)
        # requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout
        ok=$(awk '/^requests:/ {print $8}' <<<"$out")
        done_=$(awk '/^requests:/ {print $6}' <<<"$out")
        bad=$(awk '/^status codes:/ {print $7 + $9 + $11}' <<<"$out")
        rps=$(awk '/^finished in/ {print $4}' <<<"$out")
        cpu=$(awk -v a="$before" -v b="$after" -v t="$CLK_TCK" 'BEGIN {printf "%.2f", (b - a) / t}')
        per_cpu=$(awk -v n="$ok" -v c="$cpu" 'BEGIN {if (c > 0) printf "%.0f", n / c; else print "n/a"}')
        log "round $round $target: $ok 2xx of $done_ done, $rps req/s, proxy CPU ${cpu}s, $per_cpu calls/CPU-s"
        [[ $ok == "$done_" && $bad == 0 ]] || log "WARNING: $target: not every call succeeded with 2xx:"$'\n'"$out"
        RESULTS[$target]+="$per_cpu $rps "
    done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
mkdir -p "$(dirname "$OUT")"
{
    echo "# gRPC unary: Gatehouse vs nginx grpc_pass"
    echo
    echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, proxy on CPU $PROXY_CPU, h2load and backend on CPU $LOAD_CPU;"
    echo "h2load -c $H2_CONNS -m $H2_STREAMS for $DURATION, $REPEATS rounds, medians; $(nginx -v 2>&1)."
    echo
    echo "| proxy | calls per proxy CPU-second | calls/s |"
    echo "| --- | --- | --- |"
    for target in nginx gatehouse; do
        read -ra v <<<"${RESULTS[$target]}"
        per=$(for ((i = 0; i < ${#v[@]}; i += 2)); do echo "${v[i]}"; done | tr '\n' ' ' | median)
        rps=$(for ((i = 1; i < ${#v[@]}; i += 2)); do echo "${v[i]}"; done | tr '\n' ' ' | median)
        echo "| $target | $per | $rps |"
    done
} >"$OUT"
cat "$OUT"

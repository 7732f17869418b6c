#!/usr/bin/env bash
# The latency `[cluster] rate_limits = "global"` adds against `rate_limits = "local"` (issue 22:
# at most 0.05 ms at p50 and 1 ms at p99), measured on the binary given, in one run.
#
# Starts a redis-server (unix socket, no persistence), one backend (benches/upload-sink.py:
# keep-alive, answers `ok`) and the proxy twice with the same config and limit, once with
# `rate_limits = "local"` and once with `"global"` (counting in that Redis). One client under
# its limit then sends requests one at a time over one keep-alive connection to each proxy,
# alternating between them request by request (local, global, global, local, ...: ABBA, so
# neither always goes first), and times each from its first byte sent to the last byte of the
# answer. Why a small client and not wrk: wrk runs one target at a time and prints only its
# percentiles, so the two distributions would come from different seconds of a shared
# machine; alternating request by request puts both under the same conditions, and every
# sample is kept, so the percentiles and their difference are exact. The client's own cost
# (Python, ~30-60 us a request) is in both and cancels in the difference.
#
# Usage: bash benches/cluster-latency.sh BIN        (e.g. target/release/gatehouse)
# Env knobs [defaults]:
#   REQUESTS [20000]  timed requests to each proxy (after WARMUP each, not timed)
#   WARMUP   [2000]
#   WORKERS  [1]      `[server] workers` of each proxy
#   LIMIT    [{ requests = 100000, per = "1s", burst = 100000 }]  the route's rate_limit: the
#                     client stays under it (leases of 32 tokens: one store call per 32 requests)
#   PROXY_CPU [0] LOAD_CPU [1]  CPUs the proxies, and the client, backend and Redis, are pinned
#                     to (taskset; ignored when taskset is missing or the machine has one CPU)
#   KEEP_TMP [0]      1 = keep the temp dir (configs, logs)
# Needs: redis-server, python3, curl.
set -euo pipefail

BIN=${1:?usage: bash benches/cluster-latency.sh BIN (a gatehouse binary, e.g. target/release/gatehouse)}
BIN=$(cd -- "$(dirname -- "$BIN")" && pwd)/$(basename -- "$BIN")
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REQUESTS=${REQUESTS:-20000}
WARMUP=${WARMUP:-2000}
WORKERS=${WORKERS:-1}
LIMIT=${LIMIT:-'{ requests = 100000, per = "1s", burst = 100000 }'}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
KEEP_TMP=${KEEP_TMP:-0}

log() { printf '[cluster-latency] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
for tool in redis-server redis-cli python3 curl; do
    command -v "$tool" >/dev/null || die "$tool not found"
done
[[ -x $BIN ]] || die "$BIN is not an executable"

TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ $KEEP_TMP == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

pin() { # pin CPU CMD...: runs CMD pinned to CPU when that is possible
    local cpu=$1
    shift
    if command -v taskset >/dev/null && (($(nproc) > 1)); then
        taskset -c "$cpu" "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

SOCK=$TMP/redis.sock
pin "$LOAD_CPU" redis-server --port 0 --unixsocket "$SOCK" --save "" --appendonly no \
    --loglevel warning >"$TMP/redis.log" 2>&1 &
PIDS+=($!)
BACKEND_PORT=$(free_port)
pin "$LOAD_CPU" python3 "$SCRIPT_DIR/upload-sink.py" --port "$BACKEND_PORT" >"$TMP/backend.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
    [[ $(redis-cli -s "$SOCK" PING 2>/dev/null) == PONG ]] && break
    sleep 0.1
done
[[ $(redis-cli -s "$SOCK" PING 2>/dev/null) == PONG ]] || die "redis-server did not start ($TMP/redis.log)"

# start_proxy NAME SCOPE: writes NAME.toml (rate_limits = SCOPE) and runs it; sets PORT_NAME
start_proxy() {
    local name=$1 scope=$2 http admin
    http=$(free_port)
    admin=$(free_port)
    cat >"$TMP/$name.toml" <<EOF
[listen]
http = "127.0.0.1:$http"
admin = "127.0.0.1:$admin"

[server]
workers = $WORKERS

[cluster]
store = "unix://$SOCK"
secret = "cluster-latency-secret-0123456789"
instance = "$name"
rate_limits = "$scope"
timeout = "50ms"

[[site]]
  [[site.route]]
  path = "/"
  upstream = "backend"
  rate_limit = $LIMIT

[upstream.backend]
servers = ["127.0.0.1:$BACKEND_PORT"]
EOF
    pin "$PROXY_CPU" "$BIN" run --config "$TMP/$name.toml" >"$TMP/$name.log" 2>&1 &
    PIDS+=($!)
    printf -v "PORT_$name" '%s' "$http"
    printf -v "ADMIN_$name" '%s' "$admin"
}
start_proxy local local
start_proxy global global

# until the proxy answers through the backend, and (global) counts in the store
wait_ready() {
    local name=$1 port=$2 admin=$3
    for _ in $(seq 200); do
        if [[ $(curl -s --max-time 1 "http://127.0.0.1:$port/" 2>/dev/null) == ok ]]; then
            if [[ $name == local ]] ||
                curl -s --max-time 1 "http://127.0.0.1:$admin/metrics" | grep -q '^gatehouse_cluster_store_up 1'; then
                log "$name ready on 127.0.0.1:$port"
                return
            fi
        fi
        sleep 0.1
    done
    die "$name not ready (log: $TMP/$name.log)"
}
wait_ready local "$PORT_local" "$ADMIN_local"
wait_ready global "$PORT_global" "$ADMIN_global"

calls() { # script calls Redis answered so far
    redis-cli -s "$SOCK" INFO commandstats | tr -d '\r' |
        awk -F'[=,]' '/^cmdstat_eval(sha)?:/ { n += $2 } END { print n + 0 }'
}

cat >"$TMP/client.py" <<'EOF'
import socket, sys, time

local_port, global_port, requests, warmup = map(int, sys.argv[1:5])
REQ = b"GET /bench HTTP/1.1\r\nHost: bench\r\n\r\n"


def connect(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def one(s):
    """One request: (nanoseconds, status)."""
    t0 = time.perf_counter_ns()
    s.sendall(REQ)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit("connection closed")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit("connection closed")
        body += chunk
    took = time.perf_counter_ns() - t0
    return took, int(head.split(b" ", 2)[1])


conns = {"local": connect(local_port), "global": connect(global_port)}
samples = {"local": [], "global": []}
statuses = {"local": {}, "global": {}}
for i in range(warmup + requests):
    order = ("local", "global") if i % 2 == 0 else ("global", "local")
    for name in order:
        took, status = one(conns[name])
        statuses[name][status] = statuses[name].get(status, 0) + 1
        if i >= warmup:
            samples[name].append(took)


def pct(xs, p):
    return xs[min(len(xs) - 1, int(len(xs) * p))] / 1e6


rows = {}
for name in ("local", "global"):
    xs = sorted(samples[name])
    rows[name] = [pct(xs, p) for p in (0.5, 0.9, 0.99, 0.999)] + [xs[-1] / 1e6, sum(xs) / len(xs) / 1e6]
print(f"{'ms':<12}{'p50':>9}{'p90':>9}{'p99':>9}{'p99.9':>9}{'max':>9}{'mean':>9}")
for name in ("local", "global"):
    print(f"{name:<12}" + "".join(f"{v:9.3f}" for v in rows[name]))
diff = [g - l for g, l in zip(rows["global"], rows["local"])]
print(f"{'added':<12}" + "".join(f"{v:+9.3f}" for v in diff))
print(f"statuses: local {statuses['local']}, global {statuses['global']}")
p50_ok, p99_ok = diff[0] <= 0.05, diff[2] <= 1.0
print(
    f"acceptance (added at most 0.05 ms at p50, 1 ms at p99): p50 {'ok' if p50_ok else 'NOT MET'}, p99 {'ok' if p99_ok else 'NOT MET'}"
)
EOF

before=$(calls)
log "timing $REQUESTS requests to each (after $WARMUP each), alternating"
pin "$LOAD_CPU" python3 "$TMP/client.py" "$PORT_local" "$PORT_global" "$REQUESTS" "$WARMUP"
after=$(calls)
total=$((REQUESTS + WARMUP))
echo "store calls: $((after - before)) for $total requests to global ($(python3 -c "print(f'{($after - $before) / $total:.4f}')") per request)"
echo "binary: $BIN; workers $WORKERS; limit $LIMIT"

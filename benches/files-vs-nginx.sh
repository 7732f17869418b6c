#!/usr/bin/env bash
# Gatehouse's `files` route vs nginx serving the same files from the same folder: a 16 KiB and a
# 1 MiB file, HTTP/1.1 keep-alive GETs with wrk, both servers pinned to one CPU and wrk to the
# other, rounds interleaved (nginx, gatehouse, nginx, gatehouse, ...), medians reported with
# requests per second, p50/p99 latency and the server's CPU time per request.
# See benches/README.md ("files-vs-nginx.sh").
#
# Usage: bash benches/files-vs-nginx.sh        (release build first, then ~2 min of runs)
#
# Env knobs (defaults in brackets):
#   DURATION [5s]  WARMUP [1s]  REPEATS [3]  CONNS [64]   wrk -d, warm-up run, rounds, wrk -c
#   PROXY_CPU [0]  LOAD_CPU [1]  the servers' CPU, wrk's CPU
#   SIZES ["16384 1048576"]      file sizes in bytes
#   SKIP_BUILD [0]  1 = don't run `cargo build --release`
#   GATEHOUSE_BIN [${CARGO_TARGET_DIR:-target}/release/gatehouse]
#   OUT [bench-results/files-vs-nginx.md]   KEEP_TMP [0]
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd)
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
REPEATS=${REPEATS:-3}
CONNS=${CONNS:-64}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
SIZES=${SIZES:-16384 1048576}
SKIP_BUILD=${SKIP_BUILD:-0}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
GATEHOUSE_BIN=${GATEHOUSE_BIN:-$TARGET_DIR/release/gatehouse}
OUT=${OUT:-$ROOT/bench-results/files-vs-nginx.md}

log() { printf '[files-bench] %s\n' "$*" >&2; }
die() { printf '[files-bench] ERROR: %s\n' "$*" >&2; exit 1; }

for c in nginx wrk curl taskset python3 awk; do
    command -v "$c" >/dev/null 2>&1 || die "'$c' is missing (apt-get install -y nginx wrk curl python3)"
done
[[ $REPEATS =~ ^[1-9][0-9]*$ ]] || die "REPEATS must be a positive integer"
[[ $CONNS =~ ^[1-9][0-9]*$ ]] || die "CONNS must be a positive integer"
CLK_TCK=$(getconf CLK_TCK)

if [[ $SKIP_BUILD != 1 ]]; then
    log "cargo build --release (CARGO_TARGET_DIR=$TARGET_DIR)"
    (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --bin gatehouse >&2)
fi
[[ -x $GATEHOUSE_BIN ]] || die "no Gatehouse binary at $GATEHOUSE_BIN"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/files-bench.XXXXXX")
chmod 755 "$TMP"
PIDS=()
cleanup() {
    local rc=$? pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ ${KEEP_TMP:-0} == 1 ]]; then log "keeping $TMP"; else rm -rf -- "$TMP"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1]);s.close()'; }

# the same files for both, random bytes (nothing to gain from compression either way)
mkdir -p "$TMP/www" "$TMP/nginx" "$TMP/gatehouse"
chmod 755 "$TMP/www"
for size in $SIZES; do
    head -c "$size" /dev/urandom >"$TMP/www/$size.bin"
    chmod 644 "$TMP/www/$size.bin"
done

NGINX_PORT=$(port)
cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    # Debian's nginx.conf: sendfile on; tcp_nopush on (etag on, open_file_cache off: defaults)
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000000;
    client_body_temp_path $TMP/nginx/client_body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    default_type application/octet-stream;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $TMP/www;
    }
}
EOF
GATEHOUSE_PORT=$(port)
cat >"$TMP/gatehouse/gatehouse.toml" <<EOF
[listen]
http = "127.0.0.1:$GATEHOUSE_PORT"

[server]
workers = 1

[log]
access = "off"

[[site]]
  [[site.route]]
  path = "/"
  files = { root = "$TMP/www" }
EOF

nginx -t -q -p "$TMP/nginx/" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/error.log" || die "nginx config invalid"
taskset -c "$PROXY_CPU" nginx -p "$TMP/nginx/" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/error.log" -g 'daemon off;' &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
RUST_LOG=warn taskset -c "$PROXY_CPU" "$GATEHOUSE_BIN" run --config "$TMP/gatehouse/gatehouse.toml" \
    2>"$TMP/gatehouse/stderr.log" &
GATEHOUSE_PID=$!
PIDS+=("$GATEHOUSE_PID")

first_size=${SIZES%% *}
for t in nginx:$NGINX_PORT gatehouse:$GATEHOUSE_PORT; do
    name=${t%%:*} p=${t##*:}
    for ((i = 0; i < 100; i++)); do
        if curl -sf -o /dev/null "http://127.0.0.1:$p/$first_size.bin"; then break; fi
        sleep 0.1
    done
    cmp -s <(curl -sf "http://127.0.0.1:$p/$first_size.bin") "$TMP/www/$first_size.bin" ||
        { cat "$TMP/gatehouse/stderr.log" >&2 || true; die "$name does not serve the file"; }
    log "$name ready on port $p"
done
NGINX_ALL=("$NGINX_PID" $(pgrep -P "$NGINX_PID"))

# utime + stime of every pid given, in clock ticks (a process's counts include its threads)
ticks() {
    local total=0 pid rest
    local -a f
    for pid in "$@"; do
        rest=$(<"/proc/$pid/stat")
        rest=${rest##*) }
        read -ra f <<<"$rest"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}
# to_ms 1.23ms|456.00us|1.02s
to_ms() { awk -v v="$1" 'BEGIN{ n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'; }

declare -A RPS CPU P50 P99 MBS
ROWS=()
for ((round = 1; round <= REPEATS; round++)); do
    for size in $SIZES; do
        for t in nginx gatehouse; do
            if [[ $t == nginx ]]; then p=$NGINX_PORT pids=("${NGINX_ALL[@]}"); else p=$GATEHOUSE_PORT pids=("$GATEHOUSE_PID"); fi
            url="http://127.0.0.1:$p/$size.bin"
            if [[ $WARMUP != 0 ]]; then taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$WARMUP" "$url" >/dev/null; fi
            t0=$(ticks "${pids[@]}")
            out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$DURATION" --latency "$url")
            t1=$(ticks "${pids[@]}")
            rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
            reqs=$(awk '/requests in/ {print $1}' <<<"$out")
            p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
            p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
            errs=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out" | tr -s ' ' | paste -sd ';' -)
            cpu=$(awk -v d="$((t1 - t0))" -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN{printf "%.1f", d / hz * 1e6 / n}')
            mbs=$(awk -v r="$rps" -v s="$size" 'BEGIN{printf "%.0f", r * s / 1048576}')
            k=$size/$t
            RPS[$k]+="$rps " CPU[$k]+="$cpu " P50[$k]+="$p50 " P99[$k]+="$p99 " MBS[$k]+="$mbs "
            ROWS+=("| $size | $t | $round | $rps | $p50 ms | $p99 ms | $cpu | ${errs:-0} |")
            log "round $round, $size B, $t: $rps req/s, p99 $p99 ms, $cpu µs CPU/req ${errs:+($errs)}"
        done
    done
done

median() { tr ' ' '\n' <<<"$1" | awk 'NF' | sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a / b}'; }

mkdir -p "$(dirname -- "$OUT")"
{
    echo "# Gatehouse \`files\` vs nginx"
    echo
    echo "- $(date -u '+%Y-%m-%dT%H:%M:%SZ'), $(uname -srm), $(nproc) CPUs; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "- gatehouse $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?') release build, \`workers = 1\`, access log off, metrics on (defaults); nginx $(nginx -v 2>&1 | sed 's/.*\///') \`worker_processes 1\`, \`sendfile on\`, \`tcp_nopush on\`, access log off"
    echo "- \`wrk -t1 -c$CONNS -d$DURATION --latency\`, $WARMUP warm-up before each run, $REPEATS interleaved rounds, medians; servers on CPU $PROXY_CPU, wrk on CPU $LOAD_CPU; files of random bytes in one folder (page cache warm)"
    echo "- CPU µs/req: the server's utime+stime (/proc/PID/stat; nginx master + worker, Gatehouse with its blocking-pool threads) during the run / requests"
    echo
    echo "| file | server | req/s | MiB/s | p50 | p99 | CPU µs/req |"
    echo "|---|---|---:|---:|---:|---:|---:|"
    for size in $SIZES; do
        for t in nginx gatehouse; do
            k=$size/$t
            echo "| $size B | $t | $(median "${RPS[$k]}") | $(median "${MBS[$k]}") | $(median "${P50[$k]}") ms | $(median "${P99[$k]}") ms | $(median "${CPU[$k]}") |"
        done
    done
    echo
    echo "| file | gatehouse/nginx req/s (higher is better) | gatehouse/nginx CPU µs/req (lower is better) |"
    echo "|---|---:|---:|"
    for size in $SIZES; do
        echo "| $size B | $(ratio "$(median "${RPS[$size/gatehouse]}")" "$(median "${RPS[$size/nginx]}")") | $(ratio "$(median "${CPU[$size/gatehouse]}")" "$(median "${CPU[$size/nginx]}")") |"
    done
    echo
    echo "## Every run"
    echo
    echo "| file (B) | server | round | req/s | p50 | p99 | CPU µs/req | errors |"
    echo "|---|---|---:|---:|---:|---:|---:|---|"
    printf '%s\n' "${ROWS[@]}"
} >"$OUT"
cat "$OUT"

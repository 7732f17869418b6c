#!/usr/bin/env bash
# Gatehouse vs nginx (and haproxy, h2o) as a reverse proxy in front of the same backend. Scenarios:
#   http           HTTP/1.1 keep-alive, small response                       (wrk)
#   http-paced     the same at a fixed offered load (PACED_RATE req/s from random think
#                  times, benches/paced.lua): p50/p99 latency of every target at the same load
#   https          the same over TLS                                          (wrk)
#   https-newconn  TLS with `Connection: close`: a connection + handshake per request (wrk)
#   1mib           HTTP/1.1 keep-alive GETs of a 1 MiB static file, streamed  (wrk)
#   h2             HTTP/2 over TLS, multiplexed                               (h2load)
#   idle           memory per idle keep-alive connection, 10,000 of them, plain and TLS
#                  (benches/idle-conns.py)
#   upload         a 1 GiB request body streamed through the proxy to a backend that
#                  discards it: time, MB/s, proxy CPU and RSS growth (curl + benches/upload-sink.py)
# See benches/README.md for what is measured and how.
#
# Usage: bash benches/proxy-vs-nginx.sh           (the full default run: 10-12 min on a 2-core
#                                                  machine, release build included)
# Optional targets, not in the default TARGETS:
#   gatehouse-nometrics: the `gatehouse` config with `[server] metrics = false`:
#     TARGETS="gatehouse gatehouse-nometrics" SCENARIOS=http REPEATS=5 DURATION=5s bash benches/proxy-vs-nginx.sh
#   gatehouse-limits: a second Gatehouse, identical but for a rate limit that never triggers
#     and a 1MB body limit on its route:
#     TARGETS="gatehouse gatehouse-limits" SCENARIOS=http REPEATS=5 DURATION=5s bash benches/proxy-vs-nginx.sh
#
# Env knobs (defaults in brackets):
#   DURATION [5s]   duration of each measured wrk / h2load run
#   REPEATS  [3]    rounds per request/response scenario; targets are interleaved:
#                   direct nginx gatehouse haproxy h2o, direct nginx gatehouse haproxy h2o, ...
#   WARMUP   [1s]   warm-up run before every measured run (0 disables)
#   CONNS    [64]   wrk connections (-c)
#   H2_CONNS [16] H2_STREAMS [32]   h2load -c and -m (connections, concurrent streams each)
#   IDLE_CONNS [10000]  idle connections held per measurement in `idle`
#   UPLOAD_MIB [1024]   request body size in `upload`, MiB
#   UPLOAD_MODES ["length chunked"]  `upload` framings: Content-Length and/or chunked
#   UPLOAD_REPEATS [1]  rounds of `upload`
#   NOFILE   [65536]    open-file limit (ulimit -n) raised for this script and what it starts
#   PROXY_CPU [0]   CPU the proxy under test is pinned to
#   LOAD_CPU  [1]   CPU the load generators and the backends are pinned to
#   TARGETS  ["direct nginx gatehouse haproxy h2o"]  subset/order of targets; also accepted:
#            gatehouse-limits, gatehouse-nometrics (see above). h2o (Debian's 2.2.5, the
#            HTTP/2 reference) is installed like the others; where it cannot be, it is skipped
#            with a message. It takes no part in `upload` (2.2 buffers a whole request body
#            before forwarding it, so there is no streaming to compare).
#   PACED_RATE [20000]  offered load of `http-paced`, req/s over all CONNS connections
#   SCENARIOS ["http http-paced https https-newconn 1mib h2 idle upload"]  subset/order of scenarios
#   SKIP_BUILD [0]  1 = don't run `cargo build --release` (binary must exist)
#   GATEHOUSE_BIN [target/release/gatehouse]
#   OUT      [bench-results/proxy-vs-nginx.md]
#   KEEP_TMP [0]    1 = keep the temp dir (configs, logs, raw outputs)
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd)

DURATION=${DURATION:-5s}
REPEATS=${REPEATS:-3}
WARMUP=${WARMUP:-1s}
CONNS=${CONNS:-64}
H2_CONNS=${H2_CONNS:-16}
H2_STREAMS=${H2_STREAMS:-32}
IDLE_CONNS=${IDLE_CONNS:-10000}
UPLOAD_MIB=${UPLOAD_MIB:-1024}
UPLOAD_MODES=${UPLOAD_MODES:-length chunked}
UPLOAD_REPEATS=${UPLOAD_REPEATS:-1}
NOFILE=${NOFILE:-65536}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
TARGETS=${TARGETS:-direct nginx gatehouse haproxy h2o}
PACED_RATE=${PACED_RATE:-20000}
SCENARIOS=${SCENARIOS:-http http-paced https https-newconn 1mib h2 idle upload}
SKIP_BUILD=${SKIP_BUILD:-0}
GATEHOUSE_BIN=${GATEHOUSE_BIN:-$ROOT/target/release/gatehouse}
OUT=${OUT:-$ROOT/bench-results/proxy-vs-nginx.md}

# Idle keep-alive timeout of every proxy (long enough for `idle` to hold its connections), and
# the connection limit of every proxy (nginx worker_connections, Gatehouse max_connections,
# haproxy maxconn): room for IDLE_CONNS plus the load of the other scenarios.
IDLE_TIMEOUT_S=600
CONN_LIMIT=$((IDLE_CONNS * 2 > 20000 ? IDLE_CONNS * 2 : 20000))
RSS_LIMIT_MIB=64 # `upload` target: a proxy's RSS grows by less than this

log() { printf '[bench] %s\n' "$*" >&2; }
# dur_s 5s|2m|1h|7: seconds
dur_s() { case $1 in *s) echo "${1%s}" ;; *m) echo $((${1%m} * 60)) ;; *h) echo $((${1%h} * 3600)) ;; *) echo "$1" ;; esac; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- validation
posint() { [[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer (got '$2')"; }
posint REPEATS "$REPEATS"
posint CONNS "$CONNS"
posint H2_CONNS "$H2_CONNS"
posint H2_STREAMS "$H2_STREAMS"
posint IDLE_CONNS "$IDLE_CONNS"
posint UPLOAD_MIB "$UPLOAD_MIB"
posint UPLOAD_REPEATS "$UPLOAD_REPEATS"
posint NOFILE "$NOFILE"
[[ $DURATION =~ ^[1-9][0-9]*[smh]?$ ]] || die "DURATION must look like 10s / 1m (got '$DURATION')"
[[ $WARMUP =~ ^[0-9]+[smh]?$ ]] || die "WARMUP must look like 2s, or 0 to disable (got '$WARMUP')"
[[ $PACED_RATE =~ ^[1-9][0-9]*$ ]] || die "PACED_RATE must be a positive whole number of requests per second (got '$PACED_RATE')"
NCPU=$(getconf _NPROCESSORS_ONLN)
for v in PROXY_CPU LOAD_CPU; do
    if ! [[ ${!v} =~ ^[0-9]+$ ]] || ((${!v} >= NCPU)); then die "$v must be a CPU index in 0..$((NCPU - 1)) (got '${!v}')"; fi
done
((PROXY_CPU != LOAD_CPU)) || log "WARNING: PROXY_CPU == LOAD_CPU ($PROXY_CPU): proxy competes with the load generators and the backends"
read -ra TARGET_LIST <<<"$TARGETS"
((${#TARGET_LIST[@]} > 0)) || die "TARGETS is empty"
for t in "${TARGET_LIST[@]}"; do
    case $t in direct | nginx | gatehouse | gatehouse-limits | gatehouse-nometrics | haproxy | h2o) ;;
    *) die "unknown target '$t' (expected direct, nginx, gatehouse, haproxy, h2o, gatehouse-limits, gatehouse-nometrics)" ;;
    esac
done
want() { [[ " ${TARGET_LIST[*]} " == *" $1 "* ]]; }
GATEHOUSE_TARGETS=()
for t in gatehouse gatehouse-limits gatehouse-nometrics; do
    if want "$t"; then GATEHOUSE_TARGETS+=("$t"); fi
done
read -ra SCENARIO_LIST <<<"$SCENARIOS"
((${#SCENARIO_LIST[@]} > 0)) || die "SCENARIOS is empty"
for s in "${SCENARIO_LIST[@]}"; do
    case $s in http | http-paced | https | https-newconn | 1mib | h2 | idle | upload) ;;
    *) die "unknown scenario '$s' (expected http, http-paced, https, https-newconn, 1mib, h2, idle, upload)" ;;
    esac
done
read -ra UPLOAD_MODE_LIST <<<"$UPLOAD_MODES"
for m in "${UPLOAD_MODE_LIST[@]}"; do
    case $m in length | chunked) ;; *) die "unknown upload mode '$m' (expected length, chunked)" ;; esac
done
want_scenario() { [[ " ${SCENARIO_LIST[*]} " == *" $1 "* ]]; }
if want_scenario upload; then ((${#UPLOAD_MODE_LIST[@]} > 0)) || die "UPLOAD_MODES is empty"; fi
# applies SCENARIO TARGET: does this pair produce runs? `direct` is the plain-HTTP backend
# (the upload sink in `upload`); the two Gatehouse variants only run the request/response scenarios.
applies() {
    case $2 in
    direct) [[ $1 == http || $1 == http-paced || $1 == 1mib || $1 == upload ]] ;;
    gatehouse-limits | gatehouse-nometrics) [[ $1 != idle && $1 != upload ]] ;;
    h2o) [[ $1 != upload ]] ;;
    *) return 0 ;;
    esac
}
is_wrk() { [[ $1 == http || $1 == http-paced || $1 == https || $1 == https-newconn || $1 == 1mib ]]; }
TLS=0    # 1 = some scenario needs the proxies' TLS listeners
WRK=0    # 1 = some scenario uses wrk
UPLOAD=0 # 1 = the upload sink and the proxies' /upload/ routes are needed
nruns=0
for s in "${SCENARIO_LIST[@]}"; do
    case $s in https | https-newconn | h2 | idle) TLS=1 ;; esac
    if is_wrk "$s"; then WRK=1; fi
    if [[ $s == upload ]]; then UPLOAD=1; fi
    for t in "${TARGET_LIST[@]}"; do
        if applies "$s" "$t"; then nruns=$((nruns + 1)); fi
    done
done
if want_scenario https-newconn && ((${#GATEHOUSE_TARGETS[@]} > 0)) && ((CONNS > 120)); then
    log "WARNING: CONNS=$CONNS: with more than ~128 connections wrk's TLS sessions fall out of Gatehouse's 256-entry session cache, so https-newconn compares Gatehouse's full handshakes with nginx's resumed ones (benches/README.md)"
fi
((nruns > 0)) || die "nothing to run for SCENARIOS='$SCENARIOS' and TARGETS='$TARGETS' (direct runs in http, http-paced, 1mib and upload only)"

# ---------------------------------------------------------------- tools
# command -> Debian package
declare -A PKG=([nginx]=nginx [wrk]=wrk [curl]=curl [openssl]=openssl [python3]=python3
    [h2load]=nghttp2-client [haproxy]=haproxy [h2o]=h2o)
need_cmds=(nginx curl python3)
if ((WRK)); then need_cmds+=(wrk); fi
if ((TLS)); then need_cmds+=(openssl); fi
if want_scenario h2; then need_cmds+=(h2load); fi
if want haproxy; then need_cmds+=(haproxy); fi
need_install=()
for c in "${need_cmds[@]}"; do
    command -v "$c" >/dev/null 2>&1 || need_install+=("${PKG[$c]}")
done
if ((${#need_install[@]} > 0)); then
    command -v apt-get >/dev/null 2>&1 || die "missing ${need_install[*]} and no apt-get to install them"
    ((EUID == 0)) || die "missing ${need_install[*]}; run as root (or install them) so apt-get can install them"
    log "installing ${need_install[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y "${need_install[@]}" >&2; then
        log "apt-get install failed; running apt-get update and retrying"
        apt-get update >&2 || die "apt-get update failed"
        apt-get install -y "${need_install[@]}" >&2 || die "apt-get install -y ${need_install[*]} failed"
    fi
fi
for c in "${need_cmds[@]}" taskset getconf awk sort head; do
    command -v "$c" >/dev/null 2>&1 || die "required command '$c' not found"
done
# h2o is a peer to compare with, not a tool the run needs: without it the run goes on
if want h2o && ! command -v h2o >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && ((EUID == 0)); then
        log "installing h2o with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get install -y h2o >&2 || log "apt-get install -y h2o failed"
    fi
    if ! command -v h2o >/dev/null 2>&1; then
        log "WARNING: h2o is not installed (Debian package h2o; as root this script installs it): skipping target h2o"
        keep=()
        for t in "${TARGET_LIST[@]}"; do
            if [[ $t != h2o ]]; then keep+=("$t"); fi
        done
        TARGET_LIST=("${keep[@]}")
        ((${#TARGET_LIST[@]} > 0)) || die "no target left without h2o"
    fi
fi
CLK_TCK=$(getconf CLK_TCK)
GATEHOUSE_RUST_LOG=warn
if ((TLS)); then GATEHOUSE_RUST_LOG=warn,rustls::msgs::handshake=error; fi

# Open files: every process started from here inherits the limit (idle: IDLE_CONNS sockets in
# the client and in the proxy).
hard=$(ulimit -Hn)
if [[ $hard != unlimited ]] && ((hard < NOFILE)); then
    ulimit -Hn "$NOFILE" 2>/dev/null || log "WARNING: cannot raise the hard open-file limit from $hard to $NOFILE"
    hard=$(ulimit -Hn)
fi
if [[ $hard == unlimited ]] || ((hard >= NOFILE)); then ulimit -Sn "$NOFILE"; else ulimit -Sn "$hard"; fi
NOFILE_NOW=$(ulimit -Sn)
if want_scenario idle && ((NOFILE_NOW < IDLE_CONNS + 1024)); then
    die "open-file limit is $NOFILE_NOW, too low for IDLE_CONNS=$IDLE_CONNS (run as root, or lower IDLE_CONNS)"
fi

# ---------------------------------------------------------------- cleanup
TMP=$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-bench.XXXXXX")
chmod 755 "$TMP" # nginx workers may run as 'nobody'
STARTED_PIDS=() # our children: backends and proxies
NGINX_WORKERS=() # their nginx workers (not our children), killed only if left over
CLIENT_PID=      # the load generator / client running now, if any
SAMPLER_PID=     # the RSS sampler running now, if any
cleanup() {
    local rc=$? pid i alive
    trap - EXIT INT TERM
    for pid in "$CLIENT_PID" "$SAMPLER_PID"; do
        if [[ -n $pid ]]; then kill -TERM "$pid" 2>/dev/null || true; fi
    done
    for pid in "${STARTED_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for ((i = 0; i < 50; i++)); do
        alive=0
        for pid in "${STARTED_PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        ((alive)) || break
        sleep 0.1
    done
    for pid in "${STARTED_PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            log "process $pid did not exit after SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    for pid in "${STARTED_PIDS[@]}" "$CLIENT_PID" "$SAMPLER_PID"; do
        if [[ -n $pid ]]; then wait "$pid" 2>/dev/null || true; fi
    done
    # nginx workers whose master was killed hard (still an nginx, so not a reused pid)
    for pid in "${NGINX_WORKERS[@]}"; do
        if [[ $(cat "/proc/$pid/comm" 2>/dev/null) == nginx ]]; then kill -KILL "$pid" 2>/dev/null || true; fi
    done
    if ((rc != 0)) && [[ ${KEEP_TMP:-0} != 1 ]]; then
        log "failed (exit $rc); removing $TMP (set KEEP_TMP=1 to keep its logs)"
    fi
    if [[ ${KEEP_TMP:-0} == 1 ]]; then
        log "keeping $TMP"
    else
        rm -rf -- "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- helpers
USED_PORTS=" "
free_port() {
    local p i
    for ((i = 0; i < 20; i++)); do
        p=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1]);s.close()')
        if [[ $USED_PORTS != *" $p "* ]]; then
            USED_PORTS+="$p "
            echo "$p"
            return 0
        fi
    done
    die "could not find a free TCP port"
}

# show_logs DIR: tail every log file of a started process (for startup failures).
show_logs() {
    local f
    for f in "$1"/*.log; do
        [[ -s $f ]] || continue
        log "--- last lines of ${f#"$TMP"/}:"
        tail -n 30 "$f" >&2 || true
    done
}

# wait_ready NAME PID URL LOGDIR: poll with curl until URL answers 200 "ok" (10 s deadline).
# https URLs: certificate not verified (-k), HTTP/1.1 like wrk, and no SNI (curl sends none
# for an IP literal), so this also checks that a client without SNI gets the certificate.
wait_ready() {
    local name=$1 pid=$2 url=$3 logdir=$4 deadline code last="no answer"
    deadline=$((SECONDS + 10))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name (pid $pid) exited during startup"
            show_logs "$logdir"
            die "$name failed to start"
        fi
        code=$(curl -sS -k --http1.1 -o "$TMP/ready-body" -w '%{http_code}' --max-time 1 "$url" 2>"$TMP/ready-err") || code=000
        if [[ $code == 200 ]]; then
            [[ $(<"$TMP/ready-body") == ok ]] ||
                die "$name at $url answered 200 with an unexpected body: '$(head -c 200 "$TMP/ready-body")'"
            log "$name ready at $url (pid $pid)"
            return 0
        fi
        if [[ $code != 000 ]]; then
            last="HTTP $code"
        elif [[ -s $TMP/ready-err ]]; then
            last=$(head -n 1 "$TMP/ready-err")
        fi
        sleep 0.1
    done
    log "$name did not answer 200 at $url within 10 s (last: $last)"
    show_logs "$logdir"
    die "$name not ready"
}

# forget_pid PID: drop PID from STARTED_PIDS (it was stopped and waited for).
forget_pid() {
    local p keep=()
    for p in "${STARTED_PIDS[@]}"; do
        if [[ $p != "$1" ]]; then keep+=("$p"); fi
    done
    STARTED_PIDS=("${keep[@]}")
}

# stop_pid PID: SIGTERM, up to 10 s to exit, then SIGKILL; waits for it and forgets it.
stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "process $pid did not exit within 10 s of SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
}

# start_nginx NAME CPU: runs nginx with prefix $TMP/NAME (conf already written) in the
# foreground of a background job, pinned to CPU. Sets NGINX_PID.
start_nginx() {
    local name=$1 cpu=$2 dir=$TMP/$1
    nginx -t -q -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/stdout.log" 2>&1 ||
        { cat "$dir/stdout.log" >&2; die "nginx config for $name is invalid"; }
    taskset -c "$cpu" nginx -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" -g 'daemon off;' \
        >>"$dir/stdout.log" 2>&1 &
    NGINX_PID=$!
    STARTED_PIDS+=("$NGINX_PID")
}

# nginx_workers MASTER: sets W to the master's worker pids and remembers them for cleanup.
W=()
nginx_workers() {
    mapfile -t W < <(pgrep -P "$1" || true)
    ((${#W[@]} > 0)) || die "nginx (master $1) has no worker processes"
    NGINX_WORKERS+=("${W[@]}")
}

# nginx_main DIR / nginx_http_common DIR: shared config bits keeping every path inside DIR.
nginx_main() {
    local dir=$1
    cat <<EOF
worker_processes 1;
worker_rlimit_nofile $NOFILE_NOW;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections $CONN_LIMIT; }
EOF
}
nginx_http_common() {
    local dir=$1
    cat <<EOF
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout ${IDLE_TIMEOUT_S}s;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
EOF
}

# nginx_proxy_locations: the proxy's locations, the same for its HTTP and HTTPS servers.
# proxy_max_temp_file_size 0: a response (the 1 MiB file) is streamed through nginx's
# in-memory proxy_buffers (8 x 4k) and never spilled to a temp file on disk.
nginx_proxy_locations() {
    cat <<'EOF'
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_max_temp_file_size 0;
        }
EOF
    if ((UPLOAD)); then
        cat <<'EOF'
        location /upload/ {
            proxy_pass http://sink;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            client_max_body_size 0;
            proxy_request_buffering off;
        }
EOF
    fi
}

# proc_ticks PID...: sum of utime+stime (fields 14, 15 of /proc/PID/stat) in clock ticks.
proc_ticks() {
    local total=0 pid stat rest
    local -a f
    for pid in "$@"; do
        stat=$(<"/proc/$pid/stat") || die "cannot read /proc/$pid/stat (process gone?)"
        rest=${stat##*) } # drop "pid (comm) " — comm may contain spaces
        read -ra f <<<"$rest"
        # rest starts at field 3 (state): field 14 -> f[11], field 15 -> f[12]
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

# proc_status_kib PID FIELD: a "kB" field of /proc/PID/status (VmRSS, VmHWM), in KiB.
proc_status_kib() {
    local k v _
    while read -r k v _; do
        if [[ $k == "$2:" ]]; then
            echo "$v"
            return 0
        fi
    done <"/proc/$1/status"
    die "no $2 in /proc/$1/status"
}

# proc_fds PID: open file descriptors of PID.
proc_fds() {
    local -a fds=("/proc/$1/fd"/*)
    echo "${#fds[@]}"
}

declare -A PORT TLS_PORT PROXY_PID
NGINX_PROXY_WORKER=

# proxy_pids TARGET: pids whose CPU time is charged to the proxy.
proxy_pids() {
    case $1 in
    nginx)
        echo "${PROXY_PID[nginx]}"
        pgrep -P "${PROXY_PID[nginx]}" || true
        ;;
    direct) ;;
    *) echo "${PROXY_PID[$1]}" ;;
    esac
}

# mem_pid TARGET: the process whose memory is the proxy's connections' (nginx: its worker).
mem_pid() {
    case $1 in
    nginx) echo "$NGINX_PROXY_WORKER" ;;
    *) echo "${PROXY_PID[$1]}" ;;
    esac
}

# to_us VALUE: wrk / h2load latency ("512.00us", "1.23ms", "2.00s") -> microseconds.
to_us() {
    awk -v v="$1" 'BEGIN {
        if (match(v, /^[0-9.]+/)) { n = substr(v, 1, RLENGTH); u = substr(v, RLENGTH + 1) } else { print "nan"; exit }
        m = (u == "us") ? 1 : (u == "ms") ? 1000 : (u == "s") ? 1e6 : (u == "m") ? 6e7 : (u == "h") ? 3.6e9 : -1
        if (m < 0) { print "nan"; exit }
        printf "%.1f", n * m }'
}

# ---------------------------------------------------------------- build
if ((${#GATEHOUSE_TARGETS[@]} > 0)); then
    if [[ $SKIP_BUILD != 1 ]]; then
        command -v cargo >/dev/null 2>&1 || die "cargo not found (needed to build gatehouse)"
        log "cargo build --release"
        build_start=$SECONDS
        (cd "$ROOT" && cargo build --release >&2) || die "cargo build --release failed"
        log "build took $((SECONDS - build_start)) s"
    fi
    [[ -x $GATEHOUSE_BIN ]] || die "gatehouse binary not found at $GATEHOUSE_BIN"
fi
bench_start=$SECONDS

# ---------------------------------------------------------------- certificate
# One self-signed ECDSA P-256 certificate for all proxies, made fresh for every run:
# SAN bench.test and 127.0.0.1, key as PKCS#8 PEM ("BEGIN PRIVATE KEY").
CERT=$TMP/tls/cert.pem
KEY=$TMP/tls/key.pem
if ((TLS)); then
    mkdir -p "$TMP/tls"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$KEY" 2>"$TMP/tls/openssl.log" ||
        { cat "$TMP/tls/openssl.log" >&2; die "openssl genpkey failed"; }
    openssl req -new -x509 -key "$KEY" -out "$CERT" -days 2 -sha256 -subj "/CN=bench.test" \
        -addext "subjectAltName=DNS:bench.test,IP:127.0.0.1" 2>>"$TMP/tls/openssl.log" ||
        { cat "$TMP/tls/openssl.log" >&2; die "openssl req -x509 failed"; }
    [[ $(head -n 1 "$KEY") == "-----BEGIN PRIVATE KEY-----" ]] || die "$KEY is not a PKCS#8 PEM key"
    cat "$CERT" "$KEY" >"$TMP/tls/combined.pem" # haproxy's `crt`: chain and key in one file
fi

# ---------------------------------------------------------------- backends
BACKEND_PORT=$(free_port)
bdir=$TMP/backend
mkdir -p "$bdir/www"
FILE_1MIB=$bdir/www/1mib.bin
head -c 1048576 /dev/urandom >"$FILE_1MIB"
{
    nginx_main "$bdir"
    echo "http {"
    nginx_http_common "$bdir"
    cat <<EOF
    server {
        listen 127.0.0.1:$BACKEND_PORT backlog=4096;
        # Only for the body-limit check before the runs (a 1.5 MB POST must reach the
        # backend through gatehouse); wrk sends no bodies.
        client_max_body_size 4m;
        location / {
            default_type text/plain;
            return 200 "ok\n";
        }
        # scenario 1mib: a static file of 1 MiB (random bytes)
        location = /1mib.bin {
            root $bdir/www;
            sendfile on;
            tcp_nopush on;
        }
    }
}
EOF
} >"$bdir/nginx.conf"
start_nginx backend "$LOAD_CPU"
BACKEND_PID=$NGINX_PID
wait_ready "backend nginx" "$BACKEND_PID" "http://127.0.0.1:$BACKEND_PORT/" "$bdir"
nginx_workers "$BACKEND_PID"
PORT[direct]=$BACKEND_PORT

# The upload sink: reads each request body to the end, discards it, answers with its length.
SINK_PORT=
if ((UPLOAD)); then
    SINK_PORT=$(free_port)
    mkdir -p "$TMP/sink"
    taskset -c "$LOAD_CPU" python3 "$SCRIPT_DIR/upload-sink.py" --port "$SINK_PORT" >"$TMP/sink/stdout.log" 2>"$TMP/sink/sink.log" &
    SINK_PID=$!
    STARTED_PIDS+=("$SINK_PID")
    wait_ready "upload sink" "$SINK_PID" "http://127.0.0.1:$SINK_PORT/" "$TMP/sink"
fi

# ---------------------------------------------------------------- nginx proxy
# start_nginx_proxy: writes the config (new ports every time), starts it pinned to PROXY_CPU,
# waits until it answers on every listener.
start_nginx_proxy() {
    # idle upstream connections kept: at least as many as requests can be in flight at once
    # (wrk's CONNS, h2load's H2_CONNS x H2_STREAMS), so that nginx, like Gatehouse and
    # haproxy, does not close and reopen backend connections under load
    local ndir=$TMP/nginx-proxy upstream_keepalive=$((CONNS > 64 ? CONNS : 64))
    if want_scenario h2 && ((H2_CONNS * H2_STREAMS > upstream_keepalive)); then upstream_keepalive=$((H2_CONNS * H2_STREAMS)); fi
    PORT[nginx]=$(free_port)
    if ((TLS)); then TLS_PORT[nginx]=$(free_port); fi
    mkdir -p "$ndir"
    {
        nginx_main "$ndir"
        echo "http {"
        nginx_http_common "$ndir"
        cat <<EOF
    upstream backend {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive $upstream_keepalive;
        keepalive_requests 100000000;
    }
EOF
        if ((UPLOAD)); then
            cat <<EOF
    upstream sink {
        server 127.0.0.1:$SINK_PORT;
        keepalive 8;
    }
EOF
        fi
        cat <<EOF
    server {
        listen 127.0.0.1:${PORT[nginx]} backlog=4096;
EOF
        nginx_proxy_locations
        echo "    }"
        if ((TLS)); then
            # Session cache and tickets stay at nginx's defaults (ssl_session_cache none,
            # ssl_session_tickets on): see benches/README.md.
            cat <<EOF
    server {
        listen 127.0.0.1:${TLS_PORT[nginx]} ssl http2 backlog=4096;
        ssl_certificate $CERT;
        ssl_certificate_key $KEY;
        ssl_protocols TLSv1.2 TLSv1.3;
EOF
            nginx_proxy_locations
            echo "    }"
        fi
        echo "}"
    } >"$ndir/nginx.conf"
    start_nginx nginx-proxy "$PROXY_CPU"
    PROXY_PID[nginx]=$NGINX_PID
    wait_ready "nginx proxy" "$NGINX_PID" "http://127.0.0.1:${PORT[nginx]}/" "$ndir"
    if ((TLS)); then
        wait_ready "nginx proxy (TLS)" "$NGINX_PID" "https://127.0.0.1:${TLS_PORT[nginx]}/" "$ndir"
    fi
    nginx_workers "$NGINX_PID"
    ((${#W[@]} == 1)) || die "nginx proxy has ${#W[@]} workers, expected 1"
    NGINX_PROXY_WORKER=${W[0]}
}

# ---------------------------------------------------------------- gatehouse
# The route's request policy (README "Request policy") is the only difference between
# `gatehouse` and `gatehouse-limits`. `gatehouse`: no limits at all on its route (max_body
# defaults to 1MB, so it is lifted explicitly; no rate_limit anywhere). `gatehouse-limits`: a
# rate limit that never triggers (10^9 requests per second, burst 10^9, keyed by client address:
# every wrk request comes from 127.0.0.1, so all of them take from the same GCRA cell) and a
# 1MB body limit. The /upload/ route (scenario upload) has max_body = "off" in all of them.
gatehouse_route_policy() {
    case $1 in
    gatehouse | gatehouse-nometrics) echo 'max_body = "off"' ;;
    gatehouse-limits) printf '%s\n' 'rate_limit = { requests = 1000000000, per = "1s" }' 'max_body = "1MB"' ;;
    esac
}

# start_gatehouse TARGET: writes TARGET's config (new ports every time), starts it pinned to
# PROXY_CPU, waits until it answers on every listener. Sets PORT, TLS_PORT, PROXY_PID.
start_gatehouse() {
    local t=$1 gdir=$TMP/$1 listen_https='' site_tls='' pid upload_route='' upload_upstream=''
    PORT[$t]=$(free_port)
    mkdir -p "$gdir"
    if ((TLS)); then
        TLS_PORT[$t]=$(free_port)
        listen_https="https = \"127.0.0.1:${TLS_PORT[$t]}\""
        # Catch-all site (no `hosts`): the only way a client without SNI gets a certificate.
        # redirect_https = false keeps the plain-HTTP scenario a proxied 200, not a 308.
        site_tls="tls = { cert = \"$CERT\", key = \"$KEY\" }
redirect_https = false"
    fi
    if ((UPLOAD)); then
        upload_route='
  [[site.route]]
  path = "/upload/"
  upstream = "sink"
  max_body = "off"'
        upload_upstream="
[upstream.sink]
servers = [\"127.0.0.1:$SINK_PORT\"]"
    fi
    cat >"$gdir/gatehouse.toml" <<EOF
[listen]
http = "127.0.0.1:${PORT[$t]}"
$listen_https

[server]
workers = 1
max_connections = $CONN_LIMIT
timeouts = { idle = "${IDLE_TIMEOUT_S}s" }
shutdown_grace = "2s"
$([[ $t == gatehouse-nometrics ]] && echo 'metrics = false')

[[site]]
$site_tls
  [[site.route]]
  path = "/"
  upstream = "backend"
$(gatehouse_route_policy "$t" | sed 's/^/  /')
$upload_route

[upstream.backend]
servers = ["127.0.0.1:$BACKEND_PORT"]
$upload_upstream
EOF
    # RUST_LOG=warn: keep per-request INFO access-log lines out of the measurement.
    # With TLS, also rustls's per-handshake WARN "Illegal SNI extension: ignoring IP address
    # presented as hostname": wrk sends the URL's host, 127.0.0.1, as SNI (browsers and curl
    # send none for an IP), so that line would be written once per https-newconn request.
    RUST_LOG=$GATEHOUSE_RUST_LOG taskset -c "$PROXY_CPU" "$GATEHOUSE_BIN" run --config "$gdir/gatehouse.toml" --log-format json \
        >"$gdir/stdout.log" 2>>"$gdir/gatehouse.log" &
    pid=$!
    PROXY_PID[$t]=$pid
    STARTED_PIDS+=("$pid")
    wait_ready "$t" "$pid" "http://127.0.0.1:${PORT[$t]}/" "$gdir"
    if ((TLS)); then
        wait_ready "$t (TLS)" "$pid" "https://127.0.0.1:${TLS_PORT[$t]}/" "$gdir"
    fi
}

# ---------------------------------------------------------------- haproxy
# start_haproxy: one process, one thread (nbthread 1), no logs, keep-alive to the backend with
# `http-reuse always`, h2 + http/1.1 by ALPN on the TLS bind; session cache and tickets at
# haproxy's defaults. Sets PORT, TLS_PORT, PROXY_PID.
start_haproxy() {
    local hdir=$TMP/haproxy pid tls_bind='' upload_backend='' upload_use='' limits=''
    PORT[haproxy]=$(free_port)
    mkdir -p "$hdir"
    if ((TLS)); then
        TLS_PORT[haproxy]=$(free_port)
        tls_bind="    bind 127.0.0.1:${TLS_PORT[haproxy]} ssl crt $TMP/tls/combined.pem alpn h2,http/1.1 backlog 4096"
    fi
    if ((UPLOAD)); then
        upload_use='    use_backend sink if { path_beg /upload/ }'
        upload_backend="backend sink
    http-reuse always
    server sink1 127.0.0.1:$SINK_PORT"
    fi
    # haproxy wants 2 fds per connection (maxconn * 2 + a few); where the hard limit is lower
    # (a container), it may start anyway: the idle connections need one fd each.
    if ((NOFILE_NOW < 2 * CONN_LIMIT + 100)); then limits='    no strict-limits'; fi
    cat >"$hdir/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn $CONN_LIMIT
$limits
    ssl-default-bind-options ssl-min-ver TLSv1.2

defaults
    mode http
    maxconn $CONN_LIMIT
    option http-keep-alive
    timeout connect 5s
    timeout client ${IDLE_TIMEOUT_S}s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive ${IDLE_TIMEOUT_S}s

frontend fe
    bind 127.0.0.1:${PORT[haproxy]} backlog 4096
$tls_bind
    option forwardfor
$upload_use
    default_backend be

backend be
    http-reuse always
    server b1 127.0.0.1:$BACKEND_PORT

$upload_backend
EOF
    haproxy -c -q -f "$hdir/haproxy.cfg" >"$hdir/check.log" 2>&1 ||
        { cat "$hdir/check.log" >&2; die "haproxy config is invalid"; }
    taskset -c "$PROXY_CPU" haproxy -db -f "$hdir/haproxy.cfg" >"$hdir/stdout.log" 2>>"$hdir/haproxy.log" &
    pid=$!
    PROXY_PID[haproxy]=$pid
    STARTED_PIDS+=("$pid")
    wait_ready haproxy "$pid" "http://127.0.0.1:${PORT[haproxy]}/" "$hdir"
    if ((TLS)); then
        wait_ready "haproxy (TLS)" "$pid" "https://127.0.0.1:${TLS_PORT[haproxy]}/" "$hdir"
    fi
}

# ---------------------------------------------------------------- h2o
# start_h2o: one process, one thread (num-threads 1), no access log, keep-alive to the backend
# (idle upstream connections kept as long as the clients' are), h2 + http/1.1 by ALPN on the TLS
# listener; session cache and tickets at h2o's defaults, OCSP stapling off (a self-signed
# certificate has no responder). Run as root, h2o drops to `nobody` once its files are read
# (so no pid file: it would be written after). Sets PORT, TLS_PORT, PROXY_PID.
start_h2o() {
    local odir=$TMP/h2o pid tls_listen=''
    PORT[h2o]=$(free_port)
    mkdir -p "$odir"
    if ((TLS)); then
        TLS_PORT[h2o]=$(free_port)
        tls_listen="listen:
  host: 127.0.0.1
  port: ${TLS_PORT[h2o]}
  ssl:
    certificate-file: $CERT
    key-file: $KEY
    minimum-version: TLSv1.2
    ocsp-update-interval: 0"
    fi
    cat >"$odir/h2o.conf" <<EOF
num-threads: 1
max-connections: $CONN_LIMIT
error-log: $odir/h2o.log
# the keep-alive idle timeouts (HTTP/1.1 and HTTP/2) of the other proxies
http1-request-timeout: $IDLE_TIMEOUT_S
http2-idle-timeout: $IDLE_TIMEOUT_S
proxy.timeout.keepalive: $((IDLE_TIMEOUT_S * 1000))
listen:
  host: 127.0.0.1
  port: ${PORT[h2o]}
$tls_listen
hosts:
  default:
    paths:
      /:
        proxy.reverse.url: http://127.0.0.1:$BACKEND_PORT/
        proxy.preserve-host: ON
EOF
    h2o -t -c "$odir/h2o.conf" >"$odir/check.log" 2>&1 ||
        { cat "$odir/check.log" >&2; die "h2o config is invalid"; }
    taskset -c "$PROXY_CPU" h2o -c "$odir/h2o.conf" >"$odir/stdout.log" 2>>"$odir/stderr.log" &
    pid=$!
    PROXY_PID[h2o]=$pid
    STARTED_PIDS+=("$pid")
    wait_ready h2o "$pid" "http://127.0.0.1:${PORT[h2o]}/" "$odir"
    if ((TLS)); then
        wait_ready "h2o (TLS)" "$pid" "https://127.0.0.1:${TLS_PORT[h2o]}/" "$odir"
    fi
}

# start_proxy TARGET / restart_proxy TARGET (a fresh process, for the memory measurements)
start_proxy() {
    case $1 in
    nginx) start_nginx_proxy ;;
    haproxy) start_haproxy ;;
    h2o) start_h2o ;;
    gatehouse*) start_gatehouse "$1" ;;
    direct) ;;
    esac
}
restart_proxy() {
    local p keep=()
    [[ $1 == direct ]] && return 0
    stop_pid "${PROXY_PID[$1]}"
    if [[ $1 == nginx ]]; then # forget the old workers (gone with their master)
        for p in "${NGINX_WORKERS[@]}"; do
            if kill -0 "$p" 2>/dev/null; then keep+=("$p"); fi
        done
        NGINX_WORKERS=("${keep[@]}")
    fi
    start_proxy "$1"
}

# check_body_limit TARGET WANT: a 1.5 MB POST (declared Content-Length, no Expect) must get
# HTTP WANT: 200 from the backend through `gatehouse` (no body limit), 413 from
# `gatehouse-limits` (its 1MB limit is on). Proves the policy difference is really there.
check_body_limit() {
    local t=$1 want=$2 code big=$TMP/body-1.5MB
    [[ -f $big ]] || head -c 1500000 /dev/zero >"$big"
    code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 -H 'Expect:' --data-binary "@$big" \
        "http://127.0.0.1:${PORT[$t]}/" 2>"$TMP/body-check-err") || code=000
    [[ $code == "$want" ]] ||
        die "$t: a 1.5 MB POST got HTTP $code, expected $want ($(head -n 1 "$TMP/body-check-err"))"
    log "$t: a 1.5 MB POST gets HTTP $code, as expected"
}

# check_scenarios TARGET: what the scenarios rely on works through TARGET.
check_scenarios() {
    local t=$1 got
    if want_scenario 1mib && applies 1mib "$t"; then
        curl -sS --max-time 10 -o "$TMP/check-1mib" "http://127.0.0.1:${PORT[$t]}/1mib.bin" ||
            die "$t: GET /1mib.bin failed"
        cmp -s "$TMP/check-1mib" "$FILE_1MIB" || die "$t: /1mib.bin arrived different from the file"
    fi
    if want_scenario h2 && applies h2 "$t"; then
        got=$(curl -sS -k --http2 --max-time 5 -o /dev/null -w '%{http_version} %{http_code}' "https://127.0.0.1:${TLS_PORT[$t]}/") ||
            die "$t: HTTP/2 request failed"
        [[ $got == "2 200" ]] || die "$t: HTTP/2 request got '$got' (HTTP version, status), expected '2 200'"
    fi
    if want_scenario upload && applies upload "$t"; then
        got=$(head -c 100000 /dev/zero | curl -sS --max-time 10 -T - -H 'Expect:' "http://127.0.0.1:${PORT[$t]}/upload/") ||
            die "$t: a small chunked upload failed"
        [[ $got == 100000 ]] || die "$t: a 100000-byte upload reached the sink as '$got' bytes"
    fi
    log "$t: checks passed"
}

if want nginx; then start_nginx_proxy; fi
for t in "${GATEHOUSE_TARGETS[@]}"; do
    start_gatehouse "$t"
done
if want haproxy; then start_haproxy; fi
if want h2o; then start_h2o; fi
if want gatehouse; then check_body_limit gatehouse 200; fi
if want gatehouse-limits; then check_body_limit gatehouse-limits 413; fi
for t in "${TARGET_LIST[@]}"; do
    if [[ $t == direct ]]; then continue; fi
    check_scenarios "$t"
done

# ---------------------------------------------------------------- request/response runs
RESULTS=() # "scenario|target|run|rps|requests|lat1_us|lat2_us|errors|cpu_us_per_req|min_us|sd_us"
# lat1/lat2: p50/p99 (wrk), mean/max of "time for request" (h2load); min/sd: h2load only

# run_client OUTFILE CMD...: a load generator pinned to LOAD_CPU, as a background job + wait
# so that a TERM/INT to this script is handled at once (cleanup then kills it too).
run_client() {
    local outf=$1 rc=0
    shift
    taskset -c "$LOAD_CPU" "$@" >"$outf" 2>&1 &
    CLIENT_PID=$!
    wait "$CLIENT_PID" || rc=$?
    CLIENT_PID=
    return "$rc"
}

# passive_opens: TCP connections accepted so far in this network namespace (/proc/net/snmp
# Tcp PassiveOpens), or nothing if unreadable. Only for the "new conns/req" progress line.
passive_opens() {
    awk '$1 == "Tcp:" { if (!c) { for (i = 2; i <= NF; i++) if ($i == "PassiveOpens") c = i; if (!c) exit }
        else { print $c; exit } }' /proc/net/snmp 2>/dev/null || true
}

# scenario_url SCENARIO TARGET
scenario_url() {
    case $1 in
    http | http-paced) echo "http://127.0.0.1:${PORT[$2]}/" ;;
    1mib) echo "http://127.0.0.1:${PORT[$2]}/1mib.bin" ;;
    https | https-newconn | h2) echo "https://127.0.0.1:${TLS_PORT[$2]}/" ;;
    esac
}

declare -A H2_NEGOTIATED # what h2load negotiated, per target

# run_one SCENARIO TARGET ROUND: one warm-up + one measured run of wrk (or h2load in h2).
run_one() {
    local sc=$1 target=$2 run=$3 url out before after requests rps lat1 lat2 errors cpu
    local opens_before opens_after newconns='?' raw failed=0 lmin=- lsd=-
    local -a pids args=() script_args=() cmd warm
    url=$(scenario_url "$sc" "$target")
    if [[ $sc == h2 ]]; then
        cmd=(h2load -t1 -c"$H2_CONNS" -m"$H2_STREAMS" -D "$DURATION" "$url")
        warm=(h2load -t1 -c"$H2_CONNS" -m"$H2_STREAMS" -D "$WARMUP" "$url")
    else
        # https-newconn: the server answers with "Connection: close" and wrk opens a new
        # connection (new TCP connect + TLS handshake) for the next request.
        if [[ $sc == https-newconn ]]; then args=(-H "Connection: close"); fi
        # http-paced: random think times between a connection's requests, PACED_RATE in all
        if [[ $sc == http-paced ]]; then
            args=(-s "$SCRIPT_DIR/paced.lua")
            script_args=(-- "$PACED_RATE" "$CONNS")
        fi
        cmd=(wrk -t1 -c"$CONNS" -d"$DURATION" --latency "${args[@]}" "$url" "${script_args[@]}")
        warm=(wrk -t1 -c"$CONNS" -d"$WARMUP" "${args[@]}" "$url" "${script_args[@]}")
    fi
    if [[ $WARMUP != 0 && $WARMUP != 0s ]]; then
        run_client "$TMP/warmup.txt" "${warm[@]}" ||
            { cat "$TMP/warmup.txt" >&2; die "warm-up against $target ($sc, $url) failed"; }
    fi
    mapfile -t pids < <(proxy_pids "$target")
    before=0 after=0
    raw=$TMP/$sc-$target-$run.txt
    opens_before=$(passive_opens)
    if ((${#pids[@]} > 0)); then before=$(proc_ticks "${pids[@]}"); fi
    run_client "$raw" "${cmd[@]}" ||
        { cat "$raw" >&2; die "${cmd[0]} against $target ($sc, $url) failed"; }
    if ((${#pids[@]} > 0)); then after=$(proc_ticks "${pids[@]}"); fi
    opens_after=$(passive_opens)
    out=$(<"$raw")

    if [[ $sc == h2 ]]; then
        # finished in 5.00s, 41234.50 req/s, 1.23MB/s
        # requests: N total, N started, N done, N succeeded, 0 failed, 0 errored, 0 timeout
        # status codes: N 2xx, 0 3xx, 0 4xx, 0 5xx
        # time for request:  min  max  mean  sd  +/- sd
        rps=$(awk '/^finished in /{print $4; exit}' <<<"$out")
        requests=$(awk '/^requests: /{print $6; exit}' <<<"$out")
        local ok2xx
        ok2xx=$(awk '/^status codes: /{print $3; exit}' <<<"$out")
        failed=$(awk '/^requests: /{gsub(/,/, ""); print $10; exit}' <<<"$out")
        lat1=$(to_us "$(awk '/^time for request:/{print $6; exit}' <<<"$out")")
        lat2=$(to_us "$(awk '/^time for request:/{print $5; exit}' <<<"$out")")
        lmin=$(to_us "$(awk '/^time for request:/{print $4; exit}' <<<"$out")")
        lsd=$(to_us "$(awk '/^time for request:/{print $7; exit}' <<<"$out")")
        [[ $requests =~ ^[0-9]+$ && $ok2xx =~ ^[0-9]+$ && -n $rps ]] || { printf '%s\n' "$out" >&2; die "could not parse h2load output for $target"; }
        # every finished request that is not a 2xx, or h2load's "failed" (errored and timed-out
        # requests included) if that is more
        errors=$((requests - ok2xx))
        if ((failed > errors)); then errors=$failed; fi
        if ((errors > 0)); then log "$sc $target run $run: $(grep -E '^requests:|^status codes:' <<<"$out" | paste -sd ';' -)"; fi
        H2_NEGOTIATED[$target]=$(awk -F': ' '/^TLS Protocol:/{p=$2} /^Cipher:/{c=$2} /^Server Temp Key:/{k=$2} /^Application protocol:/{a=$2}
            END { printf "%s %s %s, ALPN %s", p, c, k, a }' <<<"$out")
    else
        requests=$(awk '/ requests in /{print $1; exit}' <<<"$out")
        rps=$(awk '/^Requests\/sec:/{print $2; exit}' <<<"$out")
        lat1=$(to_us "$(awk '$1=="50%"{print $2; exit}' <<<"$out")")
        lat2=$(to_us "$(awk '$1=="99%"{print $2; exit}' <<<"$out")")
        local sock non2xx
        sock=$(awk '/Socket errors:/{gsub(/,/,""); print $4+$6+$8+$10; exit}' <<<"$out")
        non2xx=$(awk '/Non-2xx or 3xx responses:/{print $NF; exit}' <<<"$out")
        [[ $requests =~ ^[0-9]+$ && -n $rps ]] || { printf '%s\n' "$out" >&2; die "could not parse wrk output for $target ($sc)"; }
        errors=$((${sock:-0} + ${non2xx:-0}))
        if ((errors > 0)); then log "$sc $target run $run: $(grep -E 'Socket errors|Non-2xx' <<<"$out" | tr -s ' ' | paste -sd ';' -)"; fi
    fi
    if [[ $target == direct ]]; then
        cpu=-
    elif ((requests > 0)); then
        cpu=$(awk -v d=$((after - before)) -v hz="$CLK_TCK" -v n="$requests" 'BEGIN{printf "%.2f", d * 1e6 / hz / n}')
    else
        cpu=nan
    fi
    if [[ $opens_before =~ ^[0-9]+$ && $opens_after =~ ^[0-9]+$ ]] && ((requests > 0)); then
        newconns=$(awk -v d=$((opens_after - opens_before)) -v n="$requests" 'BEGIN{printf "%.2f", d / n}')
    fi
    RESULTS+=("$sc|$target|$run|$rps|$requests|$lat1|$lat2|$errors|$cpu|$lmin|$lsd")
    log "$(printf '%-13s %-16s run %d: %10s req/s  %s %8s us  %s %8s us  errors %s  cpu %s us/req  new conns/req %s' \
        "$sc" "$target" "$run" "$rps" "$(lat_name1 "$sc")" "$lat1" "$(lat_name2 "$sc")" "$lat2" "$errors" "$cpu" "$newconns")"
}
lat_name1() { if [[ $1 == h2 ]]; then echo mean; else echo p50; fi; }
lat_name2() { if [[ $1 == h2 ]]; then echo max; else echo p99; fi; }

# ---------------------------------------------------------------- idle
IDLE_RESULTS=() # "target|transport|open|failed|closed|rss_before|rss_after|kib_per_conn|fds_before|fds_after|setup_s|rss_closed"

# run_idle TARGET TRANSPORT(plain|tls): a fresh proxy process; its RSS (nginx: the worker's)
# before, then with IDLE_CONNS idle keep-alive connections that have each served one request.
run_idle() {
    local t=$1 tr=$2 url_port mpid rss0 rss1 rss2 fds0 fds1 outf errf line open failed closed setup deadline rc=0
    local -a tlsarg=()
    restart_proxy "$t"
    if [[ $tr == tls ]]; then url_port=${TLS_PORT[$t]}; tlsarg=(--tls); else url_port=${PORT[$t]}; fi
    mpid=$(mem_pid "$t")
    sleep 0.5
    rss0=$(proc_status_kib "$mpid" VmRSS)
    fds0=$(proc_fds "$mpid")
    outf=$TMP/idle-$t-$tr.out
    errf=$TMP/idle-$t-$tr.err
    rm -f -- "$outf" "$errf"
    taskset -c "$LOAD_CPU" python3 "$SCRIPT_DIR/idle-conns.py" --port "$url_port" --conns "$IDLE_CONNS" "${tlsarg[@]}" \
        >"$outf" 2>"$errf" &
    CLIENT_PID=$!
    deadline=$((SECONDS + 300))
    while ! grep -qs '^ready ' "$outf"; do
        if ! kill -0 "$CLIENT_PID" 2>/dev/null; then
            cat "$outf" "$errf" >&2
            die "idle-conns.py against $t ($tr) exited early"
        fi
        ((SECONDS < deadline)) || die "idle-conns.py against $t ($tr): connections not set up within 300 s"
        sleep 0.2
    done
    sleep 1 # let the proxy settle (buffers released after the first request, timers armed)
    rss1=$(proc_status_kib "$mpid" VmRSS)
    fds1=$(proc_fds "$mpid")
    kill -TERM "$CLIENT_PID" 2>/dev/null || true
    wait "$CLIENT_PID" || rc=$?
    CLIENT_PID=
    sleep 1 # and once they are closed again: what the proxy gives back
    rss2=$(proc_status_kib "$mpid" VmRSS)
    line=$(grep '^ready ' "$outf")
    open=$(sed -E 's/.* open=([0-9]+).*/\1/' <<<"$line")
    failed=$(sed -E 's/.* failed=([0-9]+).*/\1/' <<<"$line")
    setup=$(sed -E 's/.* setup_s=([0-9.]+).*/\1/' <<<"$line")
    # connections the proxy closed by the time the client let go (idle timeout, limits)
    closed=$(sed -nE 's/^closed .*closed_by_server=([0-9]+).*/\1/p' "$outf")
    closed=${closed:-?}
    if ((failed > 0 || rc != 0)); then
        log "idle $t ($tr): $failed of $IDLE_CONNS connections failed: $(head -n 3 "$errf" | paste -sd ';' -)"
    fi
    local per='n/a'
    if ((open > 0)); then per=$(awk -v a="$rss0" -v b="$rss1" -v n="$open" 'BEGIN{printf "%.2f", (b - a) / n}'); fi
    IDLE_RESULTS+=("$t|$tr|$open|$failed|$closed|$rss0|$rss1|$per|$fds0|$fds1|$setup|$rss2")
    log "$(printf 'idle %-10s %-5s: %s conns open (%s failed, %s closed by the proxy), RSS %s -> %s KiB = %s KiB/conn (%s KiB once closed), fds %s -> %s, setup %s s' \
        "$t" "$tr" "$open" "$failed" "$closed" "$rss0" "$rss1" "$per" "$rss2" "$fds0" "$fds1" "$setup")"
}

# ---------------------------------------------------------------- upload
UPLOAD_RESULTS=() # "target|mode|run|result|bytes_at_sink|time_s|mb_s|rss_before|rss_peak|hwm|cpu_s|samples"
UPLOAD_BYTES=$((UPLOAD_MIB * 1048576))

# sample_rss PID FILE: VmRSS of PID in KiB every 100 ms, one per line, until killed or PID exits.
sample_rss() {
    local k v _
    while [[ -r /proc/$1/status ]]; do
        while read -r k v _; do
            if [[ $k == VmRSS: ]]; then
                echo "$v"
                break
            fi
        done <"/proc/$1/status" 2>/dev/null || true
        sleep 0.1
    done >"$2"
}

# run_upload TARGET MODE(length|chunked) ROUND: a fresh proxy process; UPLOAD_BYTES of zeros
# from `head` through curl (`-T -`: chunked; or with its Content-Length) to /upload/, which the
# proxy streams to the sink. The proxy's RSS is sampled every 100 ms during the upload.
run_upload() {
    local t=$1 mode=$2 run=$3 mpid='' rss0=- peak=- hwm=- ticks0=0 ticks1=0 cpu=- samples=0 rc=0
    local outf=$TMP/upload-$t-$mode-$run.out errf=$TMP/upload-$t-$mode-$run.err sfile=$TMP/upload-$t-$mode-$run.rss
    local code time_s got result mbs port
    local -a hdr=(-H 'Expect:') pids=()
    if [[ $mode == length ]]; then hdr+=(-H 'Transfer-Encoding:' -H "Content-Length: $UPLOAD_BYTES"); fi
    restart_proxy "$t"
    if [[ $t == direct ]]; then
        port=$SINK_PORT
    else
        port=${PORT[$t]}
        mpid=$(mem_pid "$t")
        mapfile -t pids < <(proxy_pids "$t")
        sleep 0.5
        rss0=$(proc_status_kib "$mpid" VmRSS)
        ticks0=$(proc_ticks "${pids[@]}")
        sample_rss "$mpid" "$sfile" &
        SAMPLER_PID=$!
    fi
    taskset -c "$LOAD_CPU" head -c "$UPLOAD_BYTES" /dev/zero |
        taskset -c "$LOAD_CPU" curl -sS --max-time 600 -T - "${hdr[@]}" -o "$outf" -w '%{http_code} %{time_total}' \
            "http://127.0.0.1:$port/upload/" >"$outf.w" 2>"$errf" &
    CLIENT_PID=$!
    wait "$CLIENT_PID" || rc=$?
    CLIENT_PID=
    if [[ $t != direct ]]; then
        ticks1=$(proc_ticks "${pids[@]}")
        hwm=$(proc_status_kib "$mpid" VmHWM)
        kill -TERM "$SAMPLER_PID" 2>/dev/null || true
        wait "$SAMPLER_PID" 2>/dev/null || true
        SAMPLER_PID=
        peak=$(sort -n "$sfile" | tail -n 1)
        samples=$(wc -l <"$sfile")
        peak=${peak:-$rss0}
        cpu=$(awk -v d=$((ticks1 - ticks0)) -v hz="$CLK_TCK" 'BEGIN{printf "%.2f", d / hz}')
    fi
    read -r code time_s <"$outf.w" || true
    got=$(head -c 100 "$outf" 2>/dev/null | tr -d '\n' || true)
    if ((rc != 0)); then
        result="curl exit $rc: $(head -n 1 "$errf")"
    elif [[ $code != 200 ]]; then
        result="HTTP $code"
    elif [[ $got != "$UPLOAD_BYTES" ]]; then
        result="sink got '$got' bytes"
    else
        result=ok
    fi
    mbs=$(awk -v b="$UPLOAD_BYTES" -v s="${time_s:-0}" 'BEGIN{ if (s > 0) printf "%.0f", b / 1e6 / s; else print "n/a" }')
    UPLOAD_RESULTS+=("$t|$mode|$run|$result|${got:-?}|${time_s:-?}|$mbs|$rss0|$peak|$hwm|$cpu|$samples")
    log "$(printf 'upload %-10s %-7s run %d: %s, %s s, %s MB/s, RSS %s KiB -> peak %s KiB (%s samples; VmHWM %s KiB), proxy CPU %s s' \
        "$t" "$mode" "$run" "$result" "${time_s:-?}" "$mbs" "$rss0" "$peak" "$samples" "$hwm" "$cpu")"
    if [[ $result != ok ]]; then log "upload $t ($mode): $(head -c 300 "$errf")"; fi
}

# ---------------------------------------------------------------- run everything
est=0
for sc in "${SCENARIO_LIST[@]}"; do
    for t in "${TARGET_LIST[@]}"; do
        applies "$sc" "$t" || continue
        case $sc in
        idle) est=$((est + 20)) ;;
        upload) est=$((est + UPLOAD_REPEATS * ${#UPLOAD_MODE_LIST[@]} * (2 + UPLOAD_MIB / 250))) ;;
        *) est=$((est + REPEATS * ($(dur_s "$DURATION") + $(dur_s "$WARMUP") + 1))) ;;
        esac
    done
done
log "scenarios: ${SCENARIO_LIST[*]}; targets: ${TARGET_LIST[*]}; DURATION=$DURATION REPEATS=$REPEATS WARMUP=$WARMUP CONNS=$CONNS H2=${H2_CONNS}x$H2_STREAMS IDLE_CONNS=$IDLE_CONNS UPLOAD_MIB=$UPLOAD_MIB PROXY_CPU=$PROXY_CPU LOAD_CPU=$LOAD_CPU; about $(((est + 59) / 60)) min to go"
for sc in "${SCENARIO_LIST[@]}"; do
    case $sc in
    idle)
        for t in "${TARGET_LIST[@]}"; do
            applies idle "$t" || continue
            run_idle "$t" plain
            run_idle "$t" tls
        done
        ;;
    upload)
        for ((r = 1; r <= UPLOAD_REPEATS; r++)); do
            for m in "${UPLOAD_MODE_LIST[@]}"; do
                for t in "${TARGET_LIST[@]}"; do
                    if applies upload "$t"; then run_upload "$t" "$m" "$r"; fi
                done
            done
        done
        ;;
    *)
        for ((r = 1; r <= REPEATS; r++)); do
            for t in "${TARGET_LIST[@]}"; do
                if applies "$sc" "$t"; then run_one "$sc" "$t" "$r"; fi
            done
        done
        ;;
    esac
done
bench_s=$((SECONDS - bench_start))

# ---------------------------------------------------------------- report
median() { # numbers on stdin -> median (mean of the two middle values for even counts)
    sort -g | awk '{a[NR]=$1} END { if (NR == 0) { print "nan"; exit }
        if (NR % 2) printf "%.2f", a[(NR+1)/2]; else printf "%.2f", (a[NR/2] + a[NR/2+1]) / 2 }'
}
ms() { awk -v u="$1" 'BEGIN{ if (u == "nan" || u == "") print "nan"; else printf "%.3f", u / 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b + 0 == 0 || a == "nan" || b == "nan" || a == "n/a" || b == "n/a") print "n/a"; else printf "%.3g", a / b }'; }
ratio3() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b + 0 == 0 || a == "nan" || b == "nan") print "n/a"; else printf "%.3f", a / b }'; }
col() { # col SCENARIO TARGET FIELDNO -> values of that field for the pair, one per line
    local row
    local -a f
    for row in "${RESULTS[@]}"; do
        IFS='|' read -ra f <<<"$row"
        [[ ${f[0]} == "$1" && ${f[1]} == "$2" ]] && echo "${f[$3]}"
    done
    return 0
}
# paired_ratios SCENARIO A B FIELDNO: A/B of that field round by round (the runs of one round
# are back to back, so these pairs share the machine's state), space-separated.
paired_ratios() {
    local -a a b
    local i out=
    mapfile -t a < <(col "$1" "$2" "$4")
    mapfile -t b < <(col "$1" "$3" "$4")
    for ((i = 0; i < ${#a[@]} && i < ${#b[@]}; i++)); do out+="${out:+ }$(ratio3 "${a[i]}" "${b[i]}")"; done
    echo "$out"
}
# spread "r1 r2 ...": "min–max" of the numeric ones
spread() {
    tr ' ' '\n' <<<"$1" | awk '$1 ~ /^[0-9.]+$/ { v = $1 + 0; if (n == 0 || v < lo) lo = v; if (n == 0 || v > hi) hi = v; n++ }
        END { if (n == 0) print "n/a"; else printf "%.3f–%.3f", lo, hi }'
}
# ratio_row LABEL SCENARIO A B FIELDNO MEDIAN_A MEDIAN_B NOTE: a row of the ratios table
ratio_row() {
    local pr
    pr=$(paired_ratios "$2" "$3" "$4" "$5")
    printf '| %s | **%s** | %s | %s | %s |\n' "$1" "$(ratio3 "$6" "$7")" "$(spread "$pr")" "$pr" "$8"
}
scenario_title() {
    case $1 in
    http) printf '%s\n' "plain HTTP/1.1, keep-alive, \`GET /\` → \`200 ok\\n\`" ;;
    http-paced) echo "plain HTTP/1.1, keep-alive, at the same offered load for every target: ${CONNS} connections, each waiting a random exponential think time (mean ${CONNS}/${PACED_RATE} s) after every response, about ${PACED_RATE} req/s in all (benches/paced.lua): latency at equal load" ;;
    https) echo "HTTPS (HTTP/1.1 over TLS), keep-alive: one handshake per wrk connection" ;;
    https-newconn) echo "HTTPS, \`Connection: close\`: a new TCP connection and TLS handshake for every request (wrk resumes its TLS 1.3 session: PSK + X25519, no certificate; see benches/README.md)" ;;
    1mib) echo "plain HTTP/1.1, keep-alive, \`GET /1mib.bin\`: a 1 MiB static file from the backend, streamed by the proxy" ;;
    h2) printf '%s\n' "HTTP/2 over TLS, \`h2load -c${H2_CONNS} -m${H2_STREAMS}\`: ${H2_CONNS} connections × ${H2_STREAMS} concurrent streams, \`GET /\` → \`200 ok\\n\`" ;;
    idle) echo "memory per idle keep-alive connection (${IDLE_CONNS} connections, each after one request)" ;;
    upload) echo "a $UPLOAD_MIB MiB request body streamed through the proxy to a backend that discards it" ;;
    esac
}

declare -A MED_RPS MED_CPU MED_L1 MED_L2 MED_MIN MED_SD SUM_ERR
for sc in "${SCENARIO_LIST[@]}"; do
    [[ $sc == idle || $sc == upload ]] && continue
    for t in "${TARGET_LIST[@]}"; do
        applies "$sc" "$t" || continue
        MED_RPS[$sc/$t]=$(col "$sc" "$t" 3 | median)
        MED_L1[$sc/$t]=$(col "$sc" "$t" 5 | median)
        MED_L2[$sc/$t]=$(col "$sc" "$t" 6 | median)
        SUM_ERR[$sc/$t]=$(col "$sc" "$t" 7 | awk '{s += $1} END {print s + 0}')
        if [[ $sc == h2 ]]; then
            MED_MIN[$sc/$t]=$(col "$sc" "$t" 9 | median)
            MED_SD[$sc/$t]=$(col "$sc" "$t" 10 | median)
        fi
        if [[ $t == direct ]]; then MED_CPU[$sc/$t]=-; else MED_CPU[$sc/$t]=$(col "$sc" "$t" 8 | median); fi
    done
done

# tls_params PORT: what an OpenSSL client with library defaults (as wrk's) negotiates.
tls_params() {
    local o
    o=$(openssl s_client -connect "127.0.0.1:$1" -servername 127.0.0.1 </dev/null 2>/dev/null) || true
    awk '/^New, /{gsub(/,/, ""); p = $2 " " $5} /^Server Temp Key:/{sub(/^Server Temp Key: /, ""); sub(/,.*/, ""); k = $0}
        END { if (p == "") print "?"; else print p (k == "" ? "" : " " k) }' <<<"$o"
}
tls_line=
if ((TLS)); then
    for t in nginx gatehouse gatehouse-limits gatehouse-nometrics haproxy h2o; do
        if want "$t"; then tls_line+="${tls_line:+; }$t: $(tls_params "${TLS_PORT[$t]}")"; fi
    done
fi

gh_rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$ROOT" status --porcelain -- src Cargo.toml 2>/dev/null || true) ]]; then gh_rev+="+dirty"; fi
if [[ $SKIP_BUILD == 1 || $GATEHOUSE_BIN != "$ROOT/target/release/gatehouse" ]]; then
    # the binary was not built by this run from this tree: say which one it was
    gh_rev+=" (tree at the time of the run; binary not built by it: ${GATEHOUSE_BIN#"$ROOT"/}, $(date -u -r "$GATEHOUSE_BIN" '+%Y-%m-%dT%H:%M:%SZ' 2>/dev/null || echo '?'))"
fi
nginx_ver=$(nginx -v 2>&1 | sed 's/^nginx version: //')
versions="nginx ${nginx_ver}"
if ((WRK)); then versions+=", wrk $(wrk --version 2>&1 | awk 'NR==1{print $2; exit}' || true)"; fi
if want_scenario h2; then versions+=", h2load $(h2load --version 2>&1 | awk 'NR==1{print $2; exit}' || true)"; fi
if want haproxy; then versions+=", haproxy $(haproxy -v 2>&1 | awk 'NR==1{print $3; exit}' || true)"; fi
if want h2o; then versions+=", h2o $(h2o --version 2>&1 | awk 'NR==1{print $3; exit}' || true)"; fi
versions+=", $(python3 --version 2>&1), $(curl --version 2>/dev/null | awk 'NR==1{print $1 " " $2; exit}')"
cpu_model=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo 2>/dev/null || true)
loadavg=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')

# report_rr SCENARIO: the table and ratios of a request/response scenario
report_rr() {
    local sc=$1 t k l1 l2
    l1=$(lat_name1 "$sc")
    l2=$(lat_name2 "$sc")
    if [[ $sc == h2 ]]; then
        echo "| target | req/s | mean | sd | min | max | errors (all rounds) | CPU µs/req |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    else
        echo "| target | req/s | $l1 | $l2 | errors (all rounds) | CPU µs/req |"
        echo "|---|---:|---:|---:|---:|---:|"
    fi
    for t in "${TARGET_LIST[@]}"; do
        applies "$sc" "$t" || continue
        k=$sc/$t
        if [[ $sc == h2 ]]; then
            printf '| %s | %s | %s ms | %s ms | %s ms | %s ms | %s | %s |\n' "$t" "${MED_RPS[$k]}" "$(ms "${MED_L1[$k]}")" "$(ms "${MED_SD[$k]}")" \
                "$(ms "${MED_MIN[$k]}")" "$(ms "${MED_L2[$k]}")" "${SUM_ERR[$k]}" "${MED_CPU[$k]}"
        else
            printf '| %s | %s | %s ms | %s ms | %s | %s |\n' "$t" "${MED_RPS[$k]}" "$(ms "${MED_L1[$k]}")" "$(ms "${MED_L2[$k]}")" "${SUM_ERR[$k]}" "${MED_CPU[$k]}"
        fi
    done
    echo
    echo "| ratio | of the medians | rounds min–max | round by round | note |"
    echo "|---|---:|---:|---|---|"
    if want gatehouse && want nginx; then
        ratio_row "gatehouse/nginx CPU µs/req" "$sc" gatehouse nginx 8 "${MED_CPU[$sc/gatehouse]}" "${MED_CPU[$sc/nginx]}" "lower is better for Gatehouse"
        ratio_row "gatehouse/nginx req/s" "$sc" gatehouse nginx 3 "${MED_RPS[$sc/gatehouse]}" "${MED_RPS[$sc/nginx]}" "higher is better"
        ratio_row "gatehouse/nginx $l2" "$sc" gatehouse nginx 6 "${MED_L2[$sc/gatehouse]}" "${MED_L2[$sc/nginx]}" "lower is better"
    fi
    if want gatehouse && want haproxy; then
        ratio_row "gatehouse/haproxy CPU µs/req" "$sc" gatehouse haproxy 8 "${MED_CPU[$sc/gatehouse]}" "${MED_CPU[$sc/haproxy]}" "lower is better for Gatehouse"
        ratio_row "gatehouse/haproxy req/s" "$sc" gatehouse haproxy 3 "${MED_RPS[$sc/gatehouse]}" "${MED_RPS[$sc/haproxy]}" "higher is better"
        ratio_row "gatehouse/haproxy $l2" "$sc" gatehouse haproxy 6 "${MED_L2[$sc/gatehouse]}" "${MED_L2[$sc/haproxy]}" "lower is better"
    fi
    if want gatehouse && want h2o; then
        ratio_row "gatehouse/h2o CPU µs/req" "$sc" gatehouse h2o 8 "${MED_CPU[$sc/gatehouse]}" "${MED_CPU[$sc/h2o]}" "lower is better for Gatehouse"
        ratio_row "gatehouse/h2o req/s" "$sc" gatehouse h2o 3 "${MED_RPS[$sc/gatehouse]}" "${MED_RPS[$sc/h2o]}" "higher is better"
        ratio_row "gatehouse/h2o $l2" "$sc" gatehouse h2o 6 "${MED_L2[$sc/gatehouse]}" "${MED_L2[$sc/h2o]}" "lower is better"
    fi
    if want haproxy && want nginx; then
        ratio_row "haproxy/nginx CPU µs/req" "$sc" haproxy nginx 8 "${MED_CPU[$sc/haproxy]}" "${MED_CPU[$sc/nginx]}" ""
    fi
    if want h2o && want nginx; then
        ratio_row "h2o/nginx CPU µs/req" "$sc" h2o nginx 8 "${MED_CPU[$sc/h2o]}" "${MED_CPU[$sc/nginx]}" ""
    fi
    if applies "$sc" direct && want direct; then
        for t in gatehouse nginx haproxy h2o; do
            if want "$t"; then
                ratio_row "$t/direct req/s" "$sc" "$t" direct 3 "${MED_RPS[$sc/$t]}" "${MED_RPS[$sc/direct]}" "share of the load generator + backend's ceiling"
            fi
        done
    fi
    if want gatehouse && want gatehouse-nometrics; then
        ratio_row "gatehouse/gatehouse-nometrics CPU µs/req" "$sc" gatehouse gatehouse-nometrics 8 "${MED_CPU[$sc/gatehouse]}" "${MED_CPU[$sc/gatehouse-nometrics]}" "the cost of per-request metrics; target < 1.03"
        ratio_row "gatehouse/gatehouse-nometrics req/s" "$sc" gatehouse gatehouse-nometrics 3 "${MED_RPS[$sc/gatehouse]}" "${MED_RPS[$sc/gatehouse-nometrics]}" ""
    fi
    if want gatehouse && want gatehouse-limits; then
        ratio_row "gatehouse-limits/gatehouse CPU µs/req" "$sc" gatehouse-limits gatehouse 8 "${MED_CPU[$sc/gatehouse-limits]}" "${MED_CPU[$sc/gatehouse]}" "the cost of an enabled rate limit + body limit; target < 1.05"
        ratio_row "gatehouse-limits/gatehouse req/s" "$sc" gatehouse-limits gatehouse 3 "${MED_RPS[$sc/gatehouse-limits]}" "${MED_RPS[$sc/gatehouse]}" ""
        ratio_row "gatehouse-limits/gatehouse $l2" "$sc" gatehouse-limits gatehouse 6 "${MED_L2[$sc/gatehouse-limits]}" "${MED_L2[$sc/gatehouse]}" ""
    fi
    if [[ $sc == h2 ]]; then
        echo
        local neg=
        for t in "${TARGET_LIST[@]}"; do
            if [[ -n ${H2_NEGOTIATED[$t]:-} ]]; then neg+="${neg:+; }$t: ${H2_NEGOTIATED[$t]}"; fi
        done
        echo "h2load negotiated: ${neg:-?}. h2load gives no percentiles: the latencies are its \"time for request\" mean, sd, min and max (each the median over the rounds)."
    fi
}

report_idle() {
    local row t tr open failed closed r0 r1 per f0 f1 setup r2
    echo "| target | transport | connections held | failed | closed by the proxy | RSS before | RSS with them | **KiB per connection** | RSS after they closed | fds before → with | set-up time |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for row in "${IDLE_RESULTS[@]}"; do
        IFS='|' read -r t tr open failed closed r0 r1 per f0 f1 setup r2 <<<"$row"
        printf '| %s | %s | %s | %s | %s | %s KiB | %s KiB | **%s** | %s KiB | %s → %s | %s s |\n' "$t" "$tr" "$open" "$failed" "$closed" "$r0" "$r1" "$per" "$r2" "$f0" "$f1" "$setup"
    done
    echo
    local a b other
    for tr in plain tls; do
        for other in nginx haproxy h2o; do
            if ! want gatehouse || ! want "$other"; then continue; fi
            a=$(idle_field gatehouse "$tr" 7)
            b=$(idle_field "$other" "$tr" 7)
            echo "- gatehouse/$other KiB per connection, $tr: **$(ratio3 "$a" "$b")**"
        done
    done
}
idle_field() { # TARGET TRANSPORT FIELDNO
    local row
    local -a f
    for row in "${IDLE_RESULTS[@]}"; do
        IFS='|' read -ra f <<<"$row"
        if [[ ${f[0]} == "$1" && ${f[1]} == "$2" ]]; then
            echo "${f[$3]}"
            return 0
        fi
    done
    echo nan
}

report_upload() {
    local row t mode run result got time_s mbs r0 peak hwm cpu samples grow hgrow verdict
    echo "| target | body | run | result | time | MB/s | proxy RSS before | peak RSS (sampled) | **RSS growth** (sampled peak / VmHWM) | proxy CPU | CPU s/GB |"
    echo "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"
    for row in "${UPLOAD_RESULTS[@]}"; do
        IFS='|' read -r t mode run result got time_s mbs r0 peak hwm cpu samples <<<"$row"
        if [[ $t == direct ]]; then
            printf '| %s | %s | %s | %s | %s s | %s | – | – | – | – | – |\n' "$t" "$mode" "$run" "$result" "$time_s" "$mbs"
            continue
        fi
        grow=$(awk -v a="$r0" -v b="$peak" 'BEGIN{printf "%.1f", (b - a) / 1024}')
        hgrow=$(awk -v a="$r0" -v b="$hwm" 'BEGIN{printf "%.1f", (b - a) / 1024}')
        printf '| %s | %s | %s | %s | %s s | %s | %.1f MiB | %.1f MiB | **%s** / %s MiB | %s s | %s |\n' "$t" "$mode" "$run" "$result" "$time_s" "$mbs" \
            "$(awk -v k="$r0" 'BEGIN{print k / 1024}')" "$(awk -v k="$peak" 'BEGIN{print k / 1024}')" "$grow" "$hgrow" "$cpu" \
            "$(awk -v c="$cpu" -v b="$UPLOAD_BYTES" 'BEGIN{printf "%.2f", c / (b / 1e9)}')"
    done
    echo
    for t in gatehouse nginx haproxy; do
        want "$t" || continue
        verdict=$(for row in "${UPLOAD_RESULTS[@]}"; do
            IFS='|' read -r tt _m _r result _g _t _mb r0 peak hwm _c _s <<<"$row"
            [[ $tt == "$t" ]] || continue
            awk -v a="$r0" -v b="$peak" -v h="$hwm" -v res="$result" -v lim="$RSS_LIMIT_MIB" 'BEGIN{
                g = (b > h ? b : h) - a; printf "%.1f %s\n", g / 1024, (res == "ok" && g / 1024 < lim) ? "pass" : "FAIL" }'
        done | awk '{ if ($1 > m || NR == 1) m = $1; if ($2 != "pass") f = 1 } END { if (NR == 0) print "n/a"; else printf "largest growth %.1f MiB: %s", m, f ? "**FAIL**" : "pass" }')
        echo "- $t: RSS growth < $RSS_LIMIT_MIB MiB with every upload complete: $verdict"
    done
}

mkdir -p "$(dirname -- "$OUT")"
{
    echo "# Gatehouse vs nginx reverse proxy"
    echo
    echo "- date: $(date -u '+%Y-%m-%dT%H:%M:%SZ'), host: $(uname -srm), ${NCPU} CPUs (${cpu_model:-unknown CPU}); load average at the end: $loadavg; benchmark time (without the build): $((bench_s / 60)) min $((bench_s % 60)) s"
    echo "- gatehouse: ${gh_rev} (release build, \`workers = 1\`, \`RUST_LOG=${GATEHOUSE_RUST_LOG}\`); nginx \`worker_processes 1\`; haproxy \`nbthread 1\`; h2o \`num-threads: 1\`; all with keep-alive to the backend"
    echo "- tools: $versions"
    echo "- request/response scenarios: \`wrk -t1 -c${CONNS} -d${DURATION} --latency\` (h2: \`h2load -t1 -c${H2_CONNS} -m${H2_STREAMS} -D ${DURATION}\`); ${WARMUP} warm-up before each run; ${REPEATS} interleaved rounds; medians"
    echo "- pinning: proxy on CPU ${PROXY_CPU}; load generators, backend nginx and upload sink on CPU ${LOAD_CPU}"
    echo "- CPU µs/req = proxy utime+stime (/proc/PID/stat; nginx master+worker) during the run / requests completed"
    if ((TLS)); then
        echo "- TLS: one self-signed ECDSA P-256 certificate for every proxy, made for this run; TLS 1.2 + 1.3; session cache/tickets at each proxy's defaults; negotiated with wrk's OpenSSL defaults: ${tls_line:-?}"
    fi
    if want gatehouse-limits; then
        baseline_check=
        if want gatehouse; then baseline_check=", 200 through \`gatehouse\`"; fi
        echo "- \`gatehouse-limits\`: a second Gatehouse, the same config as \`gatehouse\` except its route's policy: \`rate_limit = { requests = 1000000000, per = \"1s\" }\` (never triggers; keyed by client address, all of wrk's requests share 127.0.0.1's cell) and \`max_body = \"1MB\"\`, where \`gatehouse\` has \`max_body = \"off\"\` and no rate limit (checked before the runs: a 1.5 MB POST gets 413 from \`gatehouse-limits\`${baseline_check})"
    fi
    for sc in "${SCENARIO_LIST[@]}"; do
        echo
        echo "## \`$sc\`: $(scenario_title "$sc")"
        echo
        case $sc in
        idle)
            echo "Each measurement on a freshly started proxy: RSS (VmRSS; nginx: its worker) before, 1 s after ${IDLE_CONNS} connections from \`benches/idle-conns.py\` have each had one \`GET /\` answered and sit idle (TLS: a full handshake each, no resumption, ALPN http/1.1), and 1 s after the client closed them. KiB per connection = (with − before) / connections held. 1 KiB = 1024 bytes."
            echo
            report_idle
            ;;
        upload)
            echo "Each upload against a freshly started proxy: \`head -c $UPLOAD_BYTES /dev/zero | curl -T - -H 'Expect:'\` (\`length\`: with \`Content-Length\`, \`chunked\`: \`Transfer-Encoding: chunked\`) to \`/upload/\`, proxied (nginx: \`proxy_request_buffering off\`, \`client_max_body_size 0\`; Gatehouse: \`max_body = \"off\"\`; haproxy: as is) to \`benches/upload-sink.py\`, which reads and discards it and answers with the byte count (checked). RSS (nginx: the worker) sampled every 100 ms; VmHWM is the process's exact peak. \`direct\`: curl straight to the sink (the ceiling). MB = 10^6 bytes."
            echo
            report_upload
            ;;
        *) report_rr "$sc" ;;
        esac
    done
    if ((${#RESULTS[@]} > 0)); then
        echo
        echo "## All request/response runs"
        echo
        echo "| scenario | target | round | req/s | p50 (h2: mean) | p99 (h2: max) | errors | CPU µs/req |"
        echo "|---|---|---:|---:|---:|---:|---:|---:|"
        for row in "${RESULTS[@]}"; do
            IFS='|' read -r sc t r rps _req l1 l2 err cpu _min _sd <<<"$row"
            printf '| %s | %s | %s | %s | %s ms | %s ms | %s | %s |\n' "$sc" "$t" "$r" "$rps" "$(ms "$l1")" "$(ms "$l2")" "$err" "$cpu"
        done
    fi
} >"$OUT.tmp"
mv -f -- "$OUT.tmp" "$OUT"
cat -- "$OUT"
log "written to ${OUT#"$ROOT"/}; benchmark time $((bench_s / 60)) min $((bench_s % 60)) s (build excluded)"

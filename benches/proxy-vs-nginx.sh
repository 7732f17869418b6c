#!/usr/bin/env bash
# Gatehouse vs nginx as a reverse proxy in front of the same backend: plain HTTP/1.1
# keep-alive, HTTPS keep-alive and HTTPS with a new TLS connection per request (both
# proxies serve the same certificate). See benches/README.md for what is measured and how.
# Optional target `gatehouse-nometrics`: the `gatehouse` config with `[server] metrics = false`,
# to measure what per-request metrics cost:
#   TARGETS="gatehouse gatehouse-nometrics" SCENARIOS=http REPEATS=5 DURATION=5s bash benches/proxy-vs-nginx.sh
# Optional target `gatehouse-limits`: a second Gatehouse, identical but for a rate limit that
# never triggers and a 1MB body limit on its route, to measure what the limits cost per request
# against `gatehouse` (whose route has neither):
#   TARGETS="gatehouse gatehouse-limits" SCENARIOS=http REPEATS=5 DURATION=5s bash benches/proxy-vs-nginx.sh
#
# Usage: bash benches/proxy-vs-nginx.sh
# Env knobs (defaults in brackets):
#   DURATION [10s]  wrk duration of each measured run
#   REPEATS  [3]    rounds per scenario; targets are interleaved: direct nginx gatehouse, direct nginx gatehouse, ...
#   CONNS    [64]   wrk connections (-c)
#   PROXY_CPU [0]   CPU the proxy under test is pinned to
#   LOAD_CPU  [1]   CPU wrk and the backend are pinned to
#   TARGETS  ["direct nginx gatehouse"]  subset/order of targets to run; `gatehouse-limits` is
#            also accepted (not in the default: see above)
#   SCENARIOS ["http https https-newconn"]  subset/order of scenarios (`direct` runs in `http` only):
#            http = HTTP/1.1 keep-alive; https = the same over TLS;
#            https-newconn = TLS with `Connection: close` (one connection + handshake per request)
#   WARMUP   [2s]   wrk warm-up before every measured run
#   SKIP_BUILD [0]  1 = don't run `cargo build --release` (binary must exist)
#   GATEHOUSE_BIN [target/release/gatehouse]
#   OUT      [bench-results/proxy-vs-nginx.md]
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd)

DURATION=${DURATION:-10s}
REPEATS=${REPEATS:-3}
CONNS=${CONNS:-64}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
TARGETS=${TARGETS:-direct nginx gatehouse}
SCENARIOS=${SCENARIOS:-http https https-newconn}
WARMUP=${WARMUP:-2s}
SKIP_BUILD=${SKIP_BUILD:-0}
GATEHOUSE_BIN=${GATEHOUSE_BIN:-$ROOT/target/release/gatehouse}
OUT=${OUT:-$ROOT/bench-results/proxy-vs-nginx.md}

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- validation
[[ $REPEATS =~ ^[1-9][0-9]*$ ]] || die "REPEATS must be a positive integer (got '$REPEATS')"
[[ $CONNS =~ ^[1-9][0-9]*$ ]] || die "CONNS must be a positive integer (got '$CONNS')"
[[ $DURATION =~ ^[1-9][0-9]*[smh]?$ ]] || die "DURATION must look like 10s / 1m (got '$DURATION')"
[[ $WARMUP =~ ^[0-9]+[smh]?$ ]] || die "WARMUP must look like 2s, or 0 to disable (got '$WARMUP')"
NCPU=$(getconf _NPROCESSORS_ONLN)
for v in PROXY_CPU LOAD_CPU; do
    if ! [[ ${!v} =~ ^[0-9]+$ ]] || ((${!v} >= NCPU)); then die "$v must be a CPU index in 0..$((NCPU - 1)) (got '${!v}')"; fi
done
((PROXY_CPU != LOAD_CPU)) || log "WARNING: PROXY_CPU == LOAD_CPU ($PROXY_CPU): proxy competes with wrk and the backend"
read -ra TARGET_LIST <<<"$TARGETS"
((${#TARGET_LIST[@]} > 0)) || die "TARGETS is empty"
for t in "${TARGET_LIST[@]}"; do
    case $t in direct | nginx | gatehouse | gatehouse-limits | gatehouse-nometrics) ;; *) die "unknown target '$t' (expected direct, nginx, gatehouse, gatehouse-limits, gatehouse-nometrics)" ;; esac
done
want() { [[ " ${TARGET_LIST[*]} " == *" $1 "* ]]; }
# Gatehouse targets: the same binary and config, `gatehouse-limits` with limits on its route.
GATEHOUSE_TARGETS=()
for t in gatehouse gatehouse-limits gatehouse-nometrics; do
    if want "$t"; then GATEHOUSE_TARGETS+=("$t"); fi
done
read -ra SCENARIO_LIST <<<"$SCENARIOS"
((${#SCENARIO_LIST[@]} > 0)) || die "SCENARIOS is empty"
for s in "${SCENARIO_LIST[@]}"; do
    case $s in http | https | https-newconn) ;; *) die "unknown scenario '$s' (expected http, https, https-newconn)" ;; esac
done
want_scenario() { [[ " ${SCENARIO_LIST[*]} " == *" $1 "* ]]; }
# applies SCENARIO TARGET: does this pair produce runs? (`direct` is the plain-HTTP backend.)
applies() { [[ $1 == http || $2 != direct ]]; }
TLS=0 # 1 = some scenario needs the proxies' TLS listeners
nruns=0
for s in "${SCENARIO_LIST[@]}"; do
    [[ $s == http ]] || TLS=1
    for t in "${TARGET_LIST[@]}"; do
        if applies "$s" "$t"; then nruns=$((nruns + 1)); fi
    done
done
if want_scenario https-newconn && ((${#GATEHOUSE_TARGETS[@]} > 0)) && ((CONNS > 120)); then
    log "WARNING: CONNS=$CONNS: with more than ~128 connections wrk's TLS sessions fall out of Gatehouse's 256-entry session cache, so https-newconn compares Gatehouse's full handshakes with nginx's resumed ones (benches/README.md)"
fi
((nruns > 0)) || die "nothing to run: target 'direct' only runs in scenario 'http' (SCENARIOS='$SCENARIOS', TARGETS='$TARGETS')"

# ---------------------------------------------------------------- tools
need_install=()
command -v nginx >/dev/null 2>&1 || need_install+=(nginx)
command -v wrk >/dev/null 2>&1 || need_install+=(wrk)
command -v curl >/dev/null 2>&1 || need_install+=(curl)
if ((TLS)); then command -v openssl >/dev/null 2>&1 || need_install+=(openssl); fi
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
for c in nginx wrk curl taskset getconf awk sort; do
    command -v "$c" >/dev/null 2>&1 || die "required command '$c' not found"
done
if ((TLS)); then command -v openssl >/dev/null 2>&1 || die "required command 'openssl' not found"; fi
CLK_TCK=$(getconf CLK_TCK)
GATEHOUSE_RUST_LOG=warn
if ((TLS)); then GATEHOUSE_RUST_LOG=warn,rustls::msgs::handshake=error; fi

# ---------------------------------------------------------------- cleanup
TMP=$(mktemp -d "${TMPDIR:-/tmp}/gatehouse-bench.XXXXXX")
chmod 755 "$TMP" # nginx workers may run as 'nobody'
STARTED_PIDS=()
cleanup() {
    local rc=$? pid i alive
    trap - EXIT INT TERM
    if [[ -n ${WRK_PID:-} ]]; then kill -TERM "$WRK_PID" 2>/dev/null || true; fi
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
    for pid in "${STARTED_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
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
        if command -v python3 >/dev/null 2>&1; then
            p=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1]);s.close()')
        else
            # Fallback: random high port that nothing is listening on.
            p=$((20000 + RANDOM % 30000))
            if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then continue; fi
        fi
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

# nginx_main DIR / nginx_http_common DIR: shared config bits keeping every path inside DIR.
nginx_main() {
    local dir=$1
    cat <<EOF
worker_processes 1;
worker_rlimit_nofile 16384;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 8192; }
EOF
}
nginx_http_common() {
    local dir=$1
    cat <<EOF
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
EOF
}

# nginx_proxy_location: the proxy's `location /`, the same for its HTTP and HTTPS servers.
nginx_proxy_location() {
    cat <<'EOF'
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }
EOF
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

# proxy_pids TARGET: pids whose CPU time is charged to the proxy.
proxy_pids() {
    case $1 in
    nginx)
        echo "$NGINX_PROXY_PID"
        pgrep -P "$NGINX_PROXY_PID" || true
        ;;
    gatehouse | gatehouse-limits | gatehouse-nometrics) echo "${GATEHOUSE_PID[$1]}" ;;
    direct) ;;
    esac
}

# to_us VALUE: wrk latency ("512.00us", "1.23ms", "2.00s") -> microseconds.
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
        (cd "$ROOT" && cargo build --release >&2) || die "cargo build --release failed"
    fi
    [[ -x $GATEHOUSE_BIN ]] || die "gatehouse binary not found at $GATEHOUSE_BIN"
fi

# ---------------------------------------------------------------- certificate
# One self-signed ECDSA P-256 certificate for both proxies, made fresh for every run:
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
fi

# ---------------------------------------------------------------- backend
BACKEND_PORT=$(free_port)
bdir=$TMP/backend
mkdir -p "$bdir"
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
    }
}
EOF
} >"$bdir/nginx.conf"
start_nginx backend "$LOAD_CPU"
BACKEND_PID=$NGINX_PID
wait_ready "backend nginx" "$BACKEND_PID" "http://127.0.0.1:$BACKEND_PORT/" "$bdir"

declare -A PORT TLS_PORT
PORT[direct]=$BACKEND_PORT
nginx_workers=()

# ---------------------------------------------------------------- nginx proxy
if want nginx; then
    PORT[nginx]=$(free_port)
    if ((TLS)); then TLS_PORT[nginx]=$(free_port); fi
    ndir=$TMP/nginx-proxy
    mkdir -p "$ndir"
    upstream_keepalive=$((CONNS > 64 ? CONNS : 64))
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
    server {
        listen 127.0.0.1:${PORT[nginx]} backlog=4096;
EOF
        nginx_proxy_location
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
            nginx_proxy_location
            echo "    }"
        fi
        echo "}"
    } >"$ndir/nginx.conf"
    start_nginx nginx-proxy "$PROXY_CPU"
    NGINX_PROXY_PID=$NGINX_PID
    wait_ready "nginx proxy" "$NGINX_PROXY_PID" "http://127.0.0.1:${PORT[nginx]}/" "$ndir"
    if ((TLS)); then
        wait_ready "nginx proxy (TLS)" "$NGINX_PROXY_PID" "https://127.0.0.1:${TLS_PORT[nginx]}/" "$ndir"
    fi
    # Also track workers so cleanup can reach them even if the master is killed hard.
    mapfile -t nginx_workers < <(pgrep -P "$NGINX_PROXY_PID" || true)
    ((${#nginx_workers[@]} > 0)) || die "nginx proxy has no worker processes"
fi

# ---------------------------------------------------------------- gatehouse
# The route's request policy (README "Request policy") is the only difference between the two
# Gatehouse targets. `gatehouse`: no limits at all on its route (max_body defaults to 1MB, so it
# is lifted explicitly; no rate_limit anywhere). `gatehouse-limits`: a rate limit that never
# triggers (10^9 requests per second, burst 10^9, keyed by client address: every wrk request
# comes from 127.0.0.1, so all of them take from the same GCRA cell) and a 1MB body limit.
gatehouse_route_policy() {
    case $1 in
    gatehouse | gatehouse-nometrics) echo 'max_body = "off"' ;;
    gatehouse-limits) printf '%s\n' 'rate_limit = { requests = 1000000000, per = "1s" }' 'max_body = "1MB"' ;;
    esac
}

# start_gatehouse TARGET: writes TARGET's config, starts it pinned to PROXY_CPU, waits until it
# answers on every listener. Sets PORT, TLS_PORT and GATEHOUSE_PID for TARGET.
declare -A GATEHOUSE_PID
start_gatehouse() {
    local t=$1 gdir=$TMP/$1 listen_https='' site_tls='' pid
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
    cat >"$gdir/gatehouse.toml" <<EOF
[listen]
http = "127.0.0.1:${PORT[$t]}"
$listen_https

[server]
workers = 1
$([[ $t == gatehouse-nometrics ]] && echo 'metrics = false')

[[site]]
$site_tls
  [[site.route]]
  path = "/"
  upstream = "backend"
$(gatehouse_route_policy "$t" | sed 's/^/  /')

[upstream.backend]
servers = ["127.0.0.1:$BACKEND_PORT"]
EOF
    # RUST_LOG=warn: keep per-request INFO access-log lines out of the measurement.
    # With TLS, also rustls's per-handshake WARN "Illegal SNI extension: ignoring IP address
    # presented as hostname": wrk sends the URL's host, 127.0.0.1, as SNI (browsers and curl
    # send none for an IP), so that line would be written once per https-newconn request.
    RUST_LOG=$GATEHOUSE_RUST_LOG taskset -c "$PROXY_CPU" "$GATEHOUSE_BIN" run --config "$gdir/gatehouse.toml" --log-format json \
        >"$gdir/stdout.log" 2>"$gdir/gatehouse.log" &
    pid=$!
    GATEHOUSE_PID[$t]=$pid
    STARTED_PIDS+=("$pid")
    wait_ready "$t" "$pid" "http://127.0.0.1:${PORT[$t]}/" "$gdir"
    if ((TLS)); then
        wait_ready "$t (TLS)" "$pid" "https://127.0.0.1:${TLS_PORT[$t]}/" "$gdir"
    fi
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

for t in "${GATEHOUSE_TARGETS[@]}"; do
    start_gatehouse "$t"
done
if want gatehouse; then check_body_limit gatehouse 200; fi
if want gatehouse-limits; then check_body_limit gatehouse-limits 413; fi

# nginx workers are children of masters we started; add them last so cleanup TERMs the
# masters first (graceful) and only then the workers (no-op if already gone).
mapfile -t -O "${#nginx_workers[@]}" nginx_workers < <(pgrep -P "$BACKEND_PID" || true)
for pid in "${nginx_workers[@]}"; do
    if [[ -n $pid ]]; then STARTED_PIDS+=("$pid"); fi
done

# ---------------------------------------------------------------- runs
RESULTS=() # "scenario|target|run|rps|requests|p50_us|p99_us|errors|cpu_us_per_req"

# run_wrk OUTFILE WRK_ARGS...: wrk pinned to LOAD_CPU. Runs as a background job + wait so
# a TERM/INT to this script is handled at once (cleanup then kills wrk too).
WRK_PID=
run_wrk() {
    local outf=$1 rc=0
    shift
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" "$@" >"$outf" 2>&1 &
    WRK_PID=$!
    wait "$WRK_PID" || rc=$?
    WRK_PID=
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
    http) echo "http://127.0.0.1:${PORT[$2]}/" ;;
    https | https-newconn) echo "https://127.0.0.1:${TLS_PORT[$2]}/" ;;
    esac
}

run_one() {
    local sc=$1 target=$2 run=$3 url out before after requests rps p50 p99 sock non2xx errors cpu
    local opens_before opens_after newconns='?' raw
    local -a pids args=()
    url=$(scenario_url "$sc" "$target")
    # https-newconn: the server answers with "Connection: close" and wrk opens a new
    # connection (new TCP connect + TLS handshake) for the next request.
    if [[ $sc == https-newconn ]]; then args=(-H "Connection: close"); fi
    if [[ $WARMUP != 0 && $WARMUP != 0s ]]; then
        run_wrk "$TMP/warmup.txt" -d"$WARMUP" "${args[@]}" "$url" ||
            { cat "$TMP/warmup.txt" >&2; die "wrk warm-up against $target ($sc, $url) failed"; }
    fi
    mapfile -t pids < <(proxy_pids "$target")
    before=0 after=0
    raw=$TMP/wrk-$sc-$target-$run.txt
    opens_before=$(passive_opens)
    if ((${#pids[@]} > 0)); then before=$(proc_ticks "${pids[@]}"); fi
    run_wrk "$raw" -d"$DURATION" --latency "${args[@]}" "$url" ||
        { cat "$raw" >&2; die "wrk against $target ($sc, $url) failed"; }
    if ((${#pids[@]} > 0)); then after=$(proc_ticks "${pids[@]}"); fi
    opens_after=$(passive_opens)
    out=$(<"$raw")

    requests=$(awk '/ requests in /{print $1; exit}' <<<"$out")
    rps=$(awk '/^Requests\/sec:/{print $2; exit}' <<<"$out")
    p50=$(to_us "$(awk '$1=="50%"{print $2; exit}' <<<"$out")")
    p99=$(to_us "$(awk '$1=="99%"{print $2; exit}' <<<"$out")")
    sock=$(awk '/Socket errors:/{gsub(/,/,""); print $4+$6+$8+$10; exit}' <<<"$out")
    non2xx=$(awk '/Non-2xx or 3xx responses:/{print $NF; exit}' <<<"$out")
    [[ $requests =~ ^[0-9]+$ && -n $rps ]] || { printf '%s\n' "$out" >&2; die "could not parse wrk output for $target ($sc)"; }
    errors=$((${sock:-0} + ${non2xx:-0}))
    if ((errors > 0)); then log "$sc $target run $run: $(grep -E 'Socket errors|Non-2xx' <<<"$out" | tr -s ' ' | paste -sd ';' -)"; fi
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
    RESULTS+=("$sc|$target|$run|$rps|$requests|$p50|$p99|$errors|$cpu")
    log "$(printf '%-13s %-16s run %d: %10s req/s  p50 %8s us  p99 %8s us  errors %s  cpu %s us/req  new conns/req %s' \
        "$sc" "$target" "$run" "$rps" "$p50" "$p99" "$errors" "$cpu" "$newconns")"
}

log "scenarios: ${SCENARIO_LIST[*]}; targets: ${TARGET_LIST[*]}; DURATION=$DURATION REPEATS=$REPEATS CONNS=$CONNS PROXY_CPU=$PROXY_CPU LOAD_CPU=$LOAD_CPU WARMUP=$WARMUP"
for sc in "${SCENARIO_LIST[@]}"; do
    for ((r = 1; r <= REPEATS; r++)); do
        for t in "${TARGET_LIST[@]}"; do
            if applies "$sc" "$t"; then run_one "$sc" "$t" "$r"; fi
        done
    done
done

# ---------------------------------------------------------------- report
median() { # numbers on stdin -> median (mean of the two middle values for even counts)
    sort -g | awk '{a[NR]=$1} END { if (NR == 0) { print "nan"; exit }
        if (NR % 2) printf "%.2f", a[(NR+1)/2]; else printf "%.2f", (a[NR/2] + a[NR/2+1]) / 2 }'
}
ms() { awk -v u="$1" 'BEGIN{ if (u == "nan") print "nan"; else printf "%.3f", u / 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b + 0 == 0 || a == "nan" || b == "nan") print "n/a"; else printf "%.3g", a / b }'; }
ratio3() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b + 0 == 0 || a == "nan" || b == "nan") print "n/a"; else printf "%.3f", a / b }'; }
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
col() { # col SCENARIO TARGET FIELDNO -> values of that field for the pair, one per line
    local row
    local -a f
    for row in "${RESULTS[@]}"; do
        IFS='|' read -ra f <<<"$row"
        [[ ${f[0]} == "$1" && ${f[1]} == "$2" ]] && echo "${f[$3]}"
    done
    return 0
}
scenario_title() {
    case $1 in
    http) echo "plain HTTP/1.1, keep-alive" ;;
    https) echo "HTTPS (HTTP/1.1 over TLS), keep-alive: one handshake per wrk connection" ;;
    https-newconn) echo "HTTPS, \`Connection: close\`: a new TCP connection and TLS handshake for every request (wrk resumes its TLS 1.3 session: PSK + X25519, no certificate; see benches/README.md)" ;;
    esac
}

declare -A MED_RPS MED_CPU MED_P50 MED_P99
for sc in "${SCENARIO_LIST[@]}"; do
    for t in "${TARGET_LIST[@]}"; do
        applies "$sc" "$t" || continue
        MED_RPS[$sc/$t]=$(col "$sc" "$t" 3 | median)
        MED_P50[$sc/$t]=$(col "$sc" "$t" 5 | median)
        MED_P99[$sc/$t]=$(col "$sc" "$t" 6 | median)
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
    for t in nginx gatehouse gatehouse-limits gatehouse-nometrics; do
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
wrk_ver=$(wrk --version 2>&1 | awk 'NR==1{print $2; exit}' || true)
cpu_model=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo 2>/dev/null || true)

mkdir -p "$(dirname -- "$OUT")"
{
    echo "# Gatehouse vs nginx reverse proxy"
    echo
    echo "- date: $(date -u '+%Y-%m-%dT%H:%M:%SZ'), host: $(uname -srm), ${NCPU} CPUs (${cpu_model:-unknown CPU})"
    echo "- gatehouse: ${gh_rev} (release build, \`workers = 1\`, \`RUST_LOG=${GATEHOUSE_RUST_LOG}\`); nginx: ${nginx_ver} (\`worker_processes 1\`, upstream keepalive); wrk ${wrk_ver:-?}"
    echo "- load: \`wrk -t1 -c${CONNS} -d${DURATION} --latency\`, GET / -> backend \`200 ok\\n\` (plain HTTP/1.1 keep-alive); ${WARMUP} warm-up before each run; ${REPEATS} interleaved rounds per scenario"
    echo "- scenarios:"
    for sc in "${SCENARIO_LIST[@]}"; do
        echo "  - \`$sc\`: $(scenario_title "$sc")"
    done
    if ((TLS)); then
        echo "- TLS: one self-signed ECDSA P-256 certificate for both proxies, made for this run; TLS 1.2 + 1.3; session cache/tickets at each proxy's defaults; negotiated with wrk's OpenSSL defaults: ${tls_line:-?}"
    fi
    if want gatehouse-limits; then
        baseline_check=
        if want gatehouse; then baseline_check=", 200 through \`gatehouse\`"; fi
        echo "- \`gatehouse-limits\`: a second Gatehouse, the same config as \`gatehouse\` except its route's policy: \`rate_limit = { requests = 1000000000, per = \"1s\" }\` (never triggers; keyed by client address, all of wrk's requests share 127.0.0.1's cell) and \`max_body = \"1MB\"\`, where \`gatehouse\` has \`max_body = \"off\"\` and no rate limit (checked before the runs: a 1.5 MB POST gets 413 from \`gatehouse-limits\`${baseline_check})"
    fi
    echo "- pinning: proxy on CPU ${PROXY_CPU}; wrk + backend nginx on CPU ${LOAD_CPU}"
    echo "- CPU µs/req = proxy utime+stime (/proc/PID/stat, nginx master+worker) during the run / requests completed"
    echo
    echo "| scenario | target | run | req/s | p50 | p99 | errors | CPU µs/req |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|"
    for row in "${RESULTS[@]}"; do
        IFS='|' read -r sc t r rps _req p50 p99 err cpu <<<"$row"
        printf '| %s | %s | %s | %s | %s ms | %s ms | %s | %s |\n' "$sc" "$t" "$r" "$rps" "$(ms "$p50")" "$(ms "$p99")" "$err" "$cpu"
    done
    echo
    echo "## Summary (medians over ${REPEATS} runs)"
    for sc in "${SCENARIO_LIST[@]}"; do
        echo
        echo "### \`$sc\`: $(scenario_title "$sc")"
        echo
        echo "| target | req/s | p50 | p99 | CPU µs/req |"
        echo "|---|---:|---:|---:|---:|"
        for t in "${TARGET_LIST[@]}"; do
            applies "$sc" "$t" || continue
            k=$sc/$t
            printf '| %s | %s | %s ms | %s ms | %s |\n' "$t" "${MED_RPS[$k]}" "$(ms "${MED_P50[$k]}")" "$(ms "${MED_P99[$k]}")" "${MED_CPU[$k]}"
        done
        echo
        if want gatehouse && want nginx; then
            echo "- gatehouse/nginx req/s: **$(ratio "${MED_RPS[$sc/gatehouse]}" "${MED_RPS[$sc/nginx]}")** (higher is better)"
            echo "- gatehouse/nginx CPU µs/req: **$(ratio "${MED_CPU[$sc/gatehouse]}" "${MED_CPU[$sc/nginx]}")** (lower is better)"
            echo "- gatehouse/nginx p99: $(ratio "${MED_P99[$sc/gatehouse]}" "${MED_P99[$sc/nginx]}") (lower is better)"
        fi
        if want gatehouse && want gatehouse-nometrics; then
            echo "- gatehouse/gatehouse-nometrics CPU µs/req: **$(ratio3 "${MED_CPU[$sc/gatehouse]}" "${MED_CPU[$sc/gatehouse-nometrics]}")** (the cost of per-request metrics; target < 1.03); round by round: $(paired_ratios "$sc" gatehouse gatehouse-nometrics 8)"
            echo "- gatehouse/gatehouse-nometrics req/s: **$(ratio3 "${MED_RPS[$sc/gatehouse]}" "${MED_RPS[$sc/gatehouse-nometrics]}")** (higher is better)"
        fi
        if want gatehouse && want gatehouse-limits; then
            echo "- gatehouse-limits/gatehouse CPU µs/req: **$(ratio3 "${MED_CPU[$sc/gatehouse-limits]}" "${MED_CPU[$sc/gatehouse]}")** (the cost of an enabled rate limit + body limit; target < 1.05); round by round: $(paired_ratios "$sc" gatehouse-limits gatehouse 8)"
            echo "- gatehouse-limits/gatehouse req/s: **$(ratio3 "${MED_RPS[$sc/gatehouse-limits]}" "${MED_RPS[$sc/gatehouse]}")** (higher is better); round by round: $(paired_ratios "$sc" gatehouse-limits gatehouse 3)"
            echo "- gatehouse-limits/gatehouse p99: $(ratio3 "${MED_P99[$sc/gatehouse-limits]}" "${MED_P99[$sc/gatehouse]}") (lower is better)"
        fi
        if applies "$sc" direct && want direct; then
            if want gatehouse; then
                echo "- gatehouse/direct req/s: **$(ratio "${MED_RPS[$sc/gatehouse]}" "${MED_RPS[$sc/direct]}")**"
            fi
            if want nginx; then
                echo "- nginx/direct req/s: $(ratio "${MED_RPS[$sc/nginx]}" "${MED_RPS[$sc/direct]}")"
            fi
        fi
    done
} >"$OUT.tmp"
mv -f -- "$OUT.tmp" "$OUT"
cat -- "$OUT"
log "written to ${OUT#"$ROOT"/}"

#!/usr/bin/env bash
# What 100 concurrent wrong passwords on a `basic_auth` route do to the latency of other clients
# on a route without auth, same Gatehouse process. Two runs of the same paced load on `/open`
# (wrk + benches/paced.lua: PACED_RATE req/s over PACED_CONNS connections, p50/p99 from wrk's
# latency distribution): one alone, one while FLOOD_CONNS connections send back-to-back requests
# with a wrong password to `/admin/` (no rate limit on it: the worst case, as many attackers
# from as many addresses). The hashes computed during the flood come from /metrics.
#
# Usage: bash benches/auth-flood.sh   (about 1 min; needs wrk and curl)
# Env knobs (defaults in brackets):
#   BIN          [target/release/gatehouse if built, else target/debug/gatehouse]
#   DURATION     [15s]  each measured run
#   PACED_RATE   [200]  req/s offered on /open
#   PACED_CONNS  [8]
#   FLOOD_CONNS  [100]  concurrent wrong-password connections
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-15s}
PACED_RATE=${PACED_RATE:-200}
PACED_CONNS=${PACED_CONNS:-8}
FLOOD_CONNS=${FLOOD_CONNS:-100}
if [[ -z "${BIN:-}" ]]; then
    BIN=target/debug/gatehouse
    [[ -x target/release/gatehouse ]] && BIN=target/release/gatehouse
fi
for tool in wrk curl; do
    command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done

tmp=$(mktemp -d)
pid=""
cleanup() {
    [[ -n "$pid" ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT

hash=$(printf '%s' 'the right password' | "$BIN" hash-password)
cat >"$tmp/gatehouse.toml" <<EOF
[listen]
http = "127.0.0.1:0"
admin = "127.0.0.1:0"

[server]
max_connections_per_ip = 1000

[[site]]
  [[site.route]]
  path = "/admin/"
  respond = { body = "secret" }
  basic_auth = { realm = "admin", users = { alice = "$hash" } }

  [[site.route]]
  path = "/open"
  respond = { body = "ok" }
EOF
"$BIN" run --config "$tmp/gatehouse.toml" --log-format json 2>"$tmp/log" &
pid=$!
addr="" admin=""
for _ in $(seq 100); do
    addr=$(grep -o '"listener":"http"[^}]*"addr":"[^"]*"\|"addr":"[^"]*"[^}]*"listener":"http"' "$tmp/log" | grep -o '127.0.0.1:[0-9]*' | head -1 || true)
    admin=$(grep -o '"listener":"admin"[^}]*"addr":"[^"]*"\|"addr":"[^"]*"[^}]*"listener":"admin"' "$tmp/log" | grep -o '127.0.0.1:[0-9]*' | head -1 || true)
    [[ -n "$addr" && -n "$admin" ]] && break
    sleep 0.1
done
[[ -n "$addr" ]] || { echo "gatehouse did not start:" >&2; cat "$tmp/log" >&2; exit 1; }

wrong="Authorization: Basic $(printf '%s' 'alice:a wrong guess' | base64)"
hashes() { curl -s "http://$admin/metrics" | awk '/^gatehouse_auth_hashes_total /{print $2}'; }
paced() {
    wrk -t2 -c"$PACED_CONNS" -d"$DURATION" --latency -s benches/paced.lua \
        "http://$addr/open" -- "$PACED_RATE" "$PACED_CONNS" |
        awk '/^ +50%/{p50=$2} /^ +99%/{p99=$2} /Requests\/sec/{rps=$2} END{printf "p50 %s  p99 %s  %s req/s", p50, p99, rps}'
}

echo "gatehouse: $BIN, $(nproc) CPUs; /open paced at $PACED_RATE req/s over $PACED_CONNS connections, $DURATION each"
wrk -t1 -c"$PACED_CONNS" -d2s "http://$addr/open" >/dev/null # warm-up
echo "alone:                      $(paced)"
before=$(hashes)
wrk -t2 -c"$FLOOD_CONNS" -d"$((${DURATION%s} + 4))s" -H "$wrong" "http://$addr/admin/" >"$tmp/flood" &
flood=$!
sleep 2
echo "with $FLOOD_CONNS wrong passwords: $(paced)"
wait "$flood"
after=$(hashes)
secs=$((${DURATION%s} + 4))
echo "flood: $(awk '/Requests\/sec/{print $2}' "$tmp/flood") req/s answered 401, $(( (${after%.*} - ${before%.*}) / secs )) hashes/s"

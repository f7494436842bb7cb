#!/usr/bin/env bash
# A cache box's hit latency while it fills: wrk asks for 1 MiB pieces of a content the box holds,
# once with the box idle and once while one curl pulls a cold FILL_MIB content through it (the
# box fetching, verifying and storing it from the nginx origin), and prints p50, p99 and max of
# the hits side by side.
#
#   bash benches/box_hits_during_fill.sh      # FILL_MIB=1024 DURATION=4s CONNECTIONS=16
#
# The box runs on SERVER_CPU (one worker, its fill thread beside it); wrk, curl, the origin and
# the metadata service on CLIENT_CPU.
set -euo pipefail
cd "$(dirname "$0")/.."

FILL_MIB=${FILL_MIB:-1024}
DURATION=${DURATION:-4s}
CONNECTIONS=${CONNECTIONS:-16}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}

# shellcheck source=benches/common.sh
source benches/common.sh
install_missing nginx wrk curl
pin_setup

bench_setup hits
ORIGIN_PORT=$PORT_BASE
BOX_PORT=$((PORT_BASE + 1))
SEED_PORT=$((PORT_BASE + 2))
SERVICE_PORT=$((PORT_BASE + 3))

echo "== preparing a 64 MiB hot content and a $FILL_MIB MiB cold one in $WORK" >&2
mkdir -p "$WORK/www"
head -c $((64 << 20)) /dev/urandom > "$WORK/www/hot.bin"
head -c $((FILL_MIB << 20)) /dev/urandom > "$WORK/www/cold.bin"
box_upstream_setup "$ORIGIN_PORT" "$SEED_PORT" "$SERVICE_PORT" hot cold
box_start "$BOX_PORT" "$SERVICE_PORT"
BOX="http://127.0.0.1:$BOX_PORT"
curl -sf "$BOX/v1/content/hot" | cmp - "$WORK/www/hot.bin"

cat > "$WORK/hits.lua" <<'LUA'
local counter = 0
request = function()
    counter = counter + 1
    return wrk.format("GET", "/v1/content/hot/piece/" .. (counter % 64))
end
done = function(summary, latency, requests)
    io.write(string.format("RESULT %d %d %d %d %d\n", summary.requests, latency:percentile(50),
        latency:percentile(99), latency.max, summary.errors.status + summary.errors.read))
end
LUA

# Prints "<req/s> <p50 ms> <p99 ms> <max ms> <errors>".
hits() {
    local line
    line=$($PIN_CLIENT wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -s "$WORK/hits.lua" "$BOX" | grep '^RESULT')
    # shellcheck disable=SC2086
    set -- $line
    awk -v n="$2" -v p50="$3" -v p99="$4" -v max="$5" -v e="$6" -v d="${DURATION%s}" 'BEGIN {
        printf "%.0f %.2f %.2f %.2f %d\n", n / d, p50 / 1000, p99 / 1000, max / 1000, e }'
}

echo "== hits, box idle" >&2
IDLE=$(hits)
echo "== hits while $FILL_MIB MiB fill" >&2
start=$(date +%s.%N)
$PIN_CLIENT curl -sf -o "$WORK/cold.out" "$BOX/v1/content/cold" &
FILL=$!
DURING=$(hits)
wait "$FILL"
end=$(date +%s.%N)
cmp "$WORK/cold.out" "$WORK/www/cold.bin"
filled_s=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')

echo
echo "hits: 1 MiB pieces, wrk -t1 -c$CONNECTIONS -d$DURATION; box on CPU $SERVER_CPU, the rest on CPU $CLIENT_CPU; $(uname -r)"
printf "%-22s %8s %8s %8s %8s %7s\n" "" "req/s" "p50 ms" "p99 ms" "max ms" errors
# shellcheck disable=SC2086
printf "%-22s %8s %8s %8s %8s %7s\n" "box idle" $IDLE
# shellcheck disable=SC2086
printf "%-22s %8s %8s %8s %8s %7s\n" "during a cold fill" $DURING
echo "the $FILL_MIB MiB fill took ${filled_s}s (byte-exact)"

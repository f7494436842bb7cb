#!/usr/bin/env bash
# tessera serve vs nginx (sendfile on), one worker each, the same wrk load in the same run.
#
#   bash benches/serve_vs_nginx.sh            # DURATION=8s CONNECTIONS=16 MANY_CONNECTIONS=512
#
# Publishes 64 random 1 MiB pieces, writes the same bytes as files for nginx, then measures
#   1. whole 1 MiB pieces (GB/s, p50, p99), 2. 64 KiB ranges at random offsets (req/s, p50, p99),
#   3. whole 1 MiB pieces over MANY_CONNECTIONS connections (GB/s, p99, max: fairness),
# for nginx (tcp_nopush on and off), tessera on io_uring (sendfile, the default; copying sendmsg; SendMsgZc)
# and tessera on epoll (sendfile), and prints the
# iperf3 loopback single-stream rate as the ceiling. Servers run on CPU 0, wrk on CPU 1.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-8s}
THREADS=${THREADS:-1}
CONNECTIONS=${CONNECTIONS:-16}
MANY_CONNECTIONS=${MANY_CONNECTIONS:-512}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}

# shellcheck source=benches/common.sh
source benches/common.sh
install_missing nginx wrk iperf3 curl
command -v nstat >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get install -y -qq iproute2 >/dev/null; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
pin_setup

bench_setup bench
NGINX_PORT=$PORT_BASE
TESSERA_PORT=$((PORT_BASE + 1))
IPERF_PORT=$((PORT_BASE + 2))

echo "== preparing 64 x 1 MiB random pieces in $WORK" >&2
mkdir -p "$WORK/www/p" "$WORK/data"
head -c $((64 << 20)) /dev/urandom > "$WORK/www/blob"
for i in $(seq 0 63); do
    dd if="$WORK/www/blob" of="$WORK/www/p/$i" bs=1M skip="$i" count=1 status=none
done
"$TESSERA" publish "$WORK/www/blob" --id bench --data-dir "$WORK/data" >&2
# nginx workers run as an unprivileged user: let them read the files.
chmod 755 "$WORK"
chmod -R a+rX "$WORK/www"

write_nginx_conf() { # tcp_nopush on|off
    cat > "$WORK/nginx.conf" <<NGINX
worker_processes 1;
worker_cpu_affinity 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush $1;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    default_type application/octet-stream;
    server { listen 127.0.0.1:$NGINX_PORT reuseport; root $WORK/www; }
}
NGINX
}

# Both scripts end with the same report line, parsed by run_wrk.
cat > "$WORK/done.lua" <<'LUA'
done = function(summary, latency, requests)
    io.write(string.format("RESULT %d %d %d %d %d %d %d\n", summary.bytes, summary.duration, summary.requests,
        latency:percentile(50), latency:percentile(99), summary.errors.status + summary.errors.read, latency.max))
end
LUA

cat > "$WORK/pieces.lua" <<'LUA'
local prefix = os.getenv("BENCH_PREFIX")
local counter = 0
request = function()
    local path = prefix .. (counter % 64)
    counter = counter + 1
    return wrk.format("GET", path)
end
LUA

cat > "$WORK/ranges.lua" <<'LUA'
local path = os.getenv("BENCH_PATH")
local total = 64 * 1048576
local size = 65536
init = function(args) math.randomseed(42) end
request = function()
    local start = math.random(0, total - size)
    return wrk.format("GET", path, { ["Range"] = "bytes=" .. start .. "-" .. (start + size - 1) })
end
LUA
cat "$WORK/done.lua" >> "$WORK/pieces.lua"
cat "$WORK/done.lua" >> "$WORK/ranges.lua"

start_tessera() { # backend zero_copy_bytes_min [file_bytes_min]
    cat > "$WORK/tessera.toml" <<TOML
data_dir = "$WORK/data"
[serve]
listen = "127.0.0.1:$TESSERA_PORT"
workers = 1
backend = "$1"
send_zc_bytes_min = $2
send_file_bytes_min = ${3:-16384}
connections_per_worker_max = 4096
# The data plane alone: no embedded metadata service (its fixed port) and no announces.
[service]
enabled = false
[announce]
enabled = false
TOML
    RUST_LOG=warn $PIN_SERVER "$TESSERA" serve --config "$WORK/tessera.toml" 2>>"$WORK/tessera.log" &
    TESSERA_PID=$!
    PIDS+=("$TESSERA_PID")
    wait_ready "http://127.0.0.1:$TESSERA_PORT/healthz"
    # The bytes served must be the bytes published.
    curl -sf "http://127.0.0.1:$TESSERA_PORT/v1/content/bench/piece/5" | cmp - "$WORK/www/p/5"
}

stop_tessera() {
    kill -TERM "$TESSERA_PID"
    wait "$TESSERA_PID" || { echo "tessera exited badly" >&2; exit 1; }
}

# Prints "<GB/s> <req/s> <p50 ms> <p99 ms> <errors> <max ms>" for one wrk run (WRK_CONNECTIONS
# connections, CONNECTIONS by default).
run_wrk() { # script url [env...]
    local script=$1 url=$2
    shift 2
    local line
    line=$(env "$@" $PIN_CLIENT wrk -t"$THREADS" -c"${WRK_CONNECTIONS:-$CONNECTIONS}" -d"$DURATION" --latency -s "$script" "$url" | grep '^RESULT')
    # shellcheck disable=SC2086
    set -- $line
    awk -v bytes="$2" -v us="$3" -v reqs="$4" -v p50="$5" -v p99="$6" -v errors="$7" -v max="$8" 'BEGIN {
        printf "%.2f %.0f %.2f %.2f %d %.2f\n", bytes / us / 1000, reqs / (us / 1e6), p50 / 1000, p99 / 1000, errors, max / 1000 }'
}

# The kernel's count of TCP retransmission timeouts or of retransmitted segments (since boot).
tcp_counter() { nstat -az "$1" | awk -v name="$1" '$1 == name { print $2 }'; }

declare -A PIECES RANGES MANY
measure() { # name base_url pieces_prefix range_path
    # An unmeasured second of load first: in some runs a row's ranges came out at about half the
    # rate the same code had in the next row (docs/performance.md, stops 20 and 21).
    DURATION=1s run_wrk "$WORK/ranges.lua" "$2" BENCH_PATH="$4" >/dev/null
    PIECES[$1]=$(run_wrk "$WORK/pieces.lua" "$2" BENCH_PREFIX="$3")
    RANGES[$1]=$(run_wrk "$WORK/ranges.lua" "$2" BENCH_PATH="$4")
    # A response that lost a segment waits for the retransmission timeout (200 ms and doubling on
    # loopback): the 512-connection row also counts them, to tell a late response from unfairness.
    local timeouts retransmits
    timeouts=$(tcp_counter TcpExtTCPTimeouts)
    retransmits=$(tcp_counter TcpRetransSegs)
    MANY[$1]="$(WRK_CONNECTIONS=$MANY_CONNECTIONS run_wrk "$WORK/pieces.lua" "$2" BENCH_PREFIX="$3")\
 $(($(tcp_counter TcpExtTCPTimeouts) - timeouts)) $(($(tcp_counter TcpRetransSegs) - retransmits))"
}

# nginx is measured twice: tcp_nopush (TCP_CORK) on is the usual sendfile setting, but it stalls
# small keep-alive responses on the delayed ACK; each workload is compared with nginx's better run.
for nopush in on off; do
    echo "== nginx (sendfile, tcp_nopush $nopush, 1 worker)" >&2
    write_nginx_conf "$nopush"
    $PIN_SERVER "$NGINX" -c "$WORK/nginx.conf" -p "$WORK" &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
    wait_ready "http://127.0.0.1:$NGINX_PORT/p/0"
    measure "nginx-nopush-$nopush" "http://127.0.0.1:$NGINX_PORT" /p/ /blob
    kill -QUIT "$NGINX_PID"
    wait "$NGINX_PID" 2>/dev/null || true
done

TESSERA_URL="http://127.0.0.1:$TESSERA_PORT"
echo "== tessera uring (sendfile for stored slices, the default; 1 worker)" >&2
start_tessera uring 0
measure tessera-uring "$TESSERA_URL" /v1/content/bench/piece/ /v1/content/bench
stop_tessera
echo "== tessera uring (copying sendmsg for every body, 1 worker)" >&2
start_tessera uring 0 0
measure tessera-uring-copy "$TESSERA_URL" /v1/content/bench/piece/ /v1/content/bench
stop_tessera
echo "== tessera uring (SendMsgZc for every body, 1 worker)" >&2
start_tessera uring 1 0
measure tessera-uring-zc "$TESSERA_URL" /v1/content/bench/piece/ /v1/content/bench
stop_tessera
echo "== tessera epoll (1 worker)" >&2
start_tessera epoll 0
measure tessera-epoll "$TESSERA_URL" /v1/content/bench/piece/ /v1/content/bench
stop_tessera

echo "== iperf3 loopback, one stream" >&2
$PIN_SERVER iperf3 -s -1 -p "$IPERF_PORT" >/dev/null 2>&1 &
PIDS+=("$!")
sleep 0.5
IPERF=$($PIN_CLIENT iperf3 -c 127.0.0.1 -p "$IPERF_PORT" -t 5 -f g | awk '/receiver/ { print $(NF-2) }')

echo
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION; servers on CPU $SERVER_CPU, wrk on CPU $CLIENT_CPU; $(uname -r)"
echo
table() { # title, then the name of an associative array
    local -n rows=$2
    echo "$1          GB/s     req/s   p50 ms   p99 ms  errors"
    for name in nginx-nopush-on nginx-nopush-off tessera-uring tessera-uring-copy tessera-uring-zc tessera-epoll; do
        # shellcheck disable=SC2086
        set -- ${rows[$name]}
        printf "%-18s %8s %9s %8s %8s %7s\n" "$name" "$1" "$2" "$3" "$4" "$5"
    done
    echo
}
table "1 MiB pieces " PIECES
table "64 KiB ranges" RANGES
echo "1 MiB pieces, $MANY_CONNECTIONS connections    GB/s   p99 ms   max ms  errors  TCP RTOs  retransmits"
for name in nginx-nopush-on nginx-nopush-off tessera-uring tessera-uring-copy tessera-uring-zc tessera-epoll; do
    # shellcheck disable=SC2086
    set -- ${MANY[$name]}
    printf "%-30s %6s %8s %8s %7s %9s %12s\n" "$name" "$1" "$4" "$6" "$5" "$7" "$8"
done
echo
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
best() { awk -v a="$1" -v b="$2" 'BEGIN { print (a > b ? a : b) }'; }
field() { # array-row field-number
    local index=$2
    # shellcheck disable=SC2086
    set -- $1
    shift $((index - 1))
    echo "$1"
}
nginx_gbs=$(best "$(field "${PIECES[nginx-nopush-on]}" 1)" "$(field "${PIECES[nginx-nopush-off]}" 1)")
nginx_rps=$(best "$(field "${RANGES[nginx-nopush-on]}" 2)" "$(field "${RANGES[nginx-nopush-off]}" 2)")
uring_gbs=$(field "${PIECES[tessera-uring]}" 1)
uring_rps=$(field "${RANGES[tessera-uring]}" 2)
echo "tessera(uring)/best nginx, 1 MiB pieces (GB/s):  $(ratio "$uring_gbs" "$nginx_gbs")x   (goal >= 1.0x)"
echo "tessera(uring)/best nginx, 64 KiB ranges (req/s): $(ratio "$uring_rps" "$nginx_rps")x   (goal >= 1.5x)"
nginx_many_gbs=$(best "$(field "${MANY[nginx-nopush-on]}" 1)" "$(field "${MANY[nginx-nopush-off]}" 1)")
nginx_many_max=$(awk -v a="$(field "${MANY[nginx-nopush-on]}" 6)" -v b="$(field "${MANY[nginx-nopush-off]}" 6)" 'BEGIN { print (a < b ? a : b) }')
echo "tessera(uring)/best nginx, $MANY_CONNECTIONS connections (GB/s): $(ratio "$(field "${MANY[tessera-uring]}" 1)" "$nginx_many_gbs")x   (goal >= 1.0x)"
echo "tessera(uring) max latency / nginx's, $MANY_CONNECTIONS connections: $(ratio "$(field "${MANY[tessera-uring]}" 6)" "$nginx_many_max")x   (goal <= 1.0x)"
echo "iperf3 loopback single stream:        $(awk -v g="$IPERF" 'BEGIN { printf "%.2f", g / 8 }') GB/s ($IPERF Gbit/s)"

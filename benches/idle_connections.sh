#!/usr/bin/env bash
# Memory per idle keep-alive connection, tessera (io_uring and epoll) vs nginx, one worker each.
#
#   bash benches/idle_connections.sh          # N=2000 idle connections (at most 30000)
#
# For each server: opens N connections, each served one small request and then left idle
# (keep-alive), reads the server's RSS before and while they are held, and prints the RSS per
# idle connection and the time a fresh client needs to fetch a 1 MiB piece while they are held.
# Servers run on CPU 0, the clients on CPU 1.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-2000}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
if [ "$N" -lt 1 ] || [ "$N" -gt 30000 ]; then
    echo "N=$N: give 1..30000 idle connections" >&2
    exit 2
fi

# shellcheck source=benches/common.sh
source benches/common.sh
install_missing nginx curl python3
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
pin_setup
# Every connection is a descriptor in the holder and in the server.
ulimit -n $((N * 2 + 256)) 2>/dev/null || {
    echo "cannot raise the descriptor limit to $((N * 2 + 256)); lower N" >&2
    exit 2
}

bench_setup idle
NGINX_PORT=$PORT_BASE
TESSERA_PORT=$((PORT_BASE + 1))

mkdir -p "$WORK/www/p" "$WORK/data"
head -c $((4 << 20)) /dev/urandom > "$WORK/www/blob"
dd if="$WORK/www/blob" of="$WORK/www/p/0" bs=1M count=1 status=none
echo ok > "$WORK/www/small"
"$TESSERA" publish "$WORK/www/blob" --id bench --data-dir "$WORK/data" >&2
chmod 755 "$WORK"
chmod -R a+rX "$WORK/www"

# Opens N connections, gets one small response on each (so each is an idle keep-alive
# connection, not a silent one), prints "held" and keeps them until its stdin closes.
cat > "$WORK/hold.py" <<'PY'
import socket, sys
port, path, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
held = []
for _ in range(count):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(request)
    held.append(s)
for s in held:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            sys.exit("server closed a connection before answering")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n")[0]:
        sys.exit(f"unexpected answer: {head[:80]!r}")
    length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += s.recv(4096)
print("held", flush=True)
sys.stdin.read()
PY

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# Prints "<RSS before KiB> <RSS held KiB> <bytes per idle connection> <fetch ms>".
measure() { # pid port small_path piece_url
    local pid=$1 port=$2 small=$3 piece=$4
    curl -sf -o /dev/null "http://127.0.0.1:$port$small"
    local before held_rss fetch
    before=$(rss_kib "$pid")
    coproc HOLD { $PIN_CLIENT python3 "$WORK/hold.py" "$port" "$small" "$N"; }
    local line=""
    read -r line <&"${HOLD[0]}" || true
    if [ "$line" != "held" ]; then
        echo "could not hold $N connections on port $port" >&2
        exit 1
    fi
    held_rss=$(rss_kib "$pid")
    fetch=$($PIN_CLIENT curl -sf -o "$WORK/fetched" -w '%{time_total}' "$piece")
    cmp -s "$WORK/fetched" "$WORK/www/p/0" || { echo "the fresh client got the wrong bytes" >&2; exit 1; }
    local to_holder=${HOLD[1]}
    exec {to_holder}>&-
    wait "$HOLD_PID" 2>/dev/null || true
    awk -v b="$before" -v h="$held_rss" -v n="$N" -v t="$fetch" 'BEGIN {
        printf "%d %d %.0f %.2f\n", b, h, (h - b) * 1024 / n, t * 1000 }'
}

declare -A RESULT
cat > "$WORK/nginx.conf" <<NGINX
worker_processes 1;
master_process off;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections $((N + 256)); }
http {
    access_log off;
    sendfile on;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    default_type application/octet-stream;
    server { listen 127.0.0.1:$NGINX_PORT; root $WORK/www; }
}
NGINX
echo "== nginx (1 worker, no master), $N idle connections" >&2
$PIN_SERVER "$NGINX" -c "$WORK/nginx.conf" -p "$WORK" &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
wait_ready "http://127.0.0.1:$NGINX_PORT/small"
RESULT[nginx]=$(measure "$NGINX_PID" "$NGINX_PORT" /small "http://127.0.0.1:$NGINX_PORT/p/0")
kill -QUIT "$NGINX_PID"
wait "$NGINX_PID" 2>/dev/null || true

for backend in uring epoll; do
    cat > "$WORK/tessera.toml" <<TOML
data_dir = "$WORK/data"
[serve]
listen = "127.0.0.1:$TESSERA_PORT"
workers = 1
backend = "$backend"
idle_timeout_ms = 300000
[service]
enabled = false
[announce]
enabled = false
TOML
    echo "== tessera $backend (1 worker), $N idle connections" >&2
    RUST_LOG=warn $PIN_SERVER "$TESSERA" serve --config "$WORK/tessera.toml" 2>>"$WORK/tessera.log" &
    TESSERA_PID=$!
    PIDS+=("$TESSERA_PID")
    wait_ready "http://127.0.0.1:$TESSERA_PORT/healthz"
    RESULT[tessera-$backend]=$(measure "$TESSERA_PID" "$TESSERA_PORT" /healthz \
        "http://127.0.0.1:$TESSERA_PORT/v1/content/bench/piece/0")
    kill -TERM "$TESSERA_PID"
    wait "$TESSERA_PID" || { echo "tessera exited badly" >&2; exit 1; }
done

echo
echo "$N idle keep-alive connections, one worker; servers on CPU $SERVER_CPU, clients on CPU $CLIENT_CPU; $(uname -r)"
echo
echo "server          RSS before KiB  RSS held KiB  bytes/idle conn  fresh 1 MiB fetch ms"
for name in nginx tessera-uring tessera-epoll; do
    # shellcheck disable=SC2086
    set -- ${RESULT[$name]}
    printf "%-15s %14s %13s %16s %21s\n" "$name" "$1" "$2" "$3" "$4"
done

#!/usr/bin/env bash
# tessera as a cache box vs nginx as a cache with lancache's settings, the same nginx origin and
# the same curl clients in the same run.
#
#   bash benches/box_vs_nginx.sh         # SIZE_MIB=256 CLIENTS=32 RUNS=3 SCENARIOS="cold cold-32 warm warm-32"
#
# The origin is nginx serving one file of SIZE_MIB random bytes (access log: bytes sent per
# request). tessera's upstream metadata service is a second tessera holding the content's
# manifest and hash file only (`publish --no-store`, the origin URL as the HTTP source), so the
# box fills every piece from the origin with Range requests. nginx caches with `slice 1m`,
# `proxy_cache_lock on` and the slice range in the cache key, as lancache does.
#
# Three runs, each RUNS times with the two caches alternated, medians printed:
#   cold: one client, empty cache;  cold-32: CLIENTS concurrent clients, empty cache;
#   warm: one client, everything cached;  warm-32: CLIENTS concurrent clients, everything cached
#   (no goal: the least time cold-32 could take with these clients on this machine).
# Each prints the time ratio (nginx time / tessera time: > 1 means tessera is faster) and the
# origin bytes divided by the content size. The caches run on SERVER_CPU; the origin and the
# clients on CLIENT_CPU.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MIB=${SIZE_MIB:-256}
CLIENTS=${CLIENTS:-32}
RUNS=${RUNS:-3}
SCENARIOS=${SCENARIOS:-cold cold-32 warm warm-32}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}

# shellcheck source=benches/common.sh
source benches/common.sh
install_missing nginx curl
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
pin_setup

bench_setup box
ORIGIN_PORT=$PORT_BASE
CACHE_PORT=$((PORT_BASE + 1))
BOX_PORT=$((PORT_BASE + 2))
SEED_PORT=$((PORT_BASE + 3))
SERVICE_PORT=$((PORT_BASE + 4))
SIZE=$((SIZE_MIB << 20))

echo "== preparing $SIZE_MIB MiB of random bytes in $WORK" >&2
mkdir -p "$WORK/www"
head -c "$SIZE" /dev/urandom > "$WORK/www/content.bin"

box_upstream_setup "$ORIGIN_PORT" "$SEED_PORT" "$SERVICE_PORT" content
ORIGIN_URL="http://127.0.0.1:$ORIGIN_PORT/content.bin"

# --- the two caches, each started empty ---
start_box() {
    box_start "$BOX_PORT" "$SERVICE_PORT"
    CACHE_PID=$BOX_PID
}

# lancache's cache settings (lancachenet/monolithic): 1 MiB slices, the slice range in the key,
# one request fills a slice while the others wait on the lock, upstream keep-alive.
start_nginx_cache() {
    rm -rf "$WORK/ncache"
    mkdir -p "$WORK/ncache"
    cat > "$WORK/cache.conf" <<NGINX
worker_processes 1;
daemon off;
pid $WORK/cache.pid;
error_log $WORK/cache-error.log;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000000;
    proxy_cache_path $WORK/ncache levels=2:2 keys_zone=generic:64m inactive=200d max_size=100g use_temp_path=off;
    upstream origin { server 127.0.0.1:$ORIGIN_PORT; keepalive 32; }
    server {
        listen 127.0.0.1:$CACHE_PORT;
        location / {
            slice 1m;
            proxy_cache generic;
            proxy_cache_key \$uri\$slice_range;
            proxy_set_header Range \$slice_range;
            proxy_cache_valid 200 206 3650d;
            proxy_ignore_headers Expires Cache-Control;
            proxy_cache_lock on;
            proxy_cache_lock_age 2m;
            proxy_cache_lock_timeout 1h;
            proxy_max_temp_file_size 40960m;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://origin;
        }
    }
}
NGINX
    $PIN_SERVER "$NGINX" -c "$WORK/cache.conf" -p "$WORK" &
    CACHE_PID=$!
    PIDS+=("$CACHE_PID")
    for _ in $(seq 1 100); do
        curl -s -o /dev/null "http://127.0.0.1:$CACHE_PORT/" && break
        sleep 0.1
    done
}

stop_cache() {
    kill -TERM "$CACHE_PID" 2>/dev/null || true
    wait "$CACHE_PID" 2>/dev/null || true
}

url_of() { # cache
    case $1 in
        tessera) echo "http://127.0.0.1:$BOX_PORT/v1/content/content" ;;
        nginx) echo "$ORIGIN_URL" | sed "s/:$ORIGIN_PORT/:$CACHE_PORT/" ;;
    esac
}

# Seconds for N concurrent whole-content downloads through URL; each must be SIZE bytes.
fetch_all() { # url n
    local url=$1 n=$2 start end i pid clients=()
    start=$(date +%s.%N)
    for i in $(seq 1 "$n"); do
        $PIN_CLIENT curl -sf --max-time 300 -o /dev/null -w '%{size_download}\n' "$url" > "$WORK/got.$i" &
        clients+=("$!")
    done
    for pid in "${clients[@]}"; do wait "$pid" || { echo "a client of $url failed" >&2; exit 1; }; done
    end=$(date +%s.%N)
    for i in $(seq 1 "$n"); do
        [ "$(cat "$WORK/got.$i")" = "$SIZE" ] || { echo "client $i of $url got $(cat "$WORK/got.$i") bytes, not $SIZE" >&2; exit 1; }
    done
    awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }'
}

origin_offset() { stat -c %s "$WORK/origin-access.log" 2>/dev/null || echo 0; }
# Origin bytes since OFFSET, divided by the content size.
origin_ratio() { # offset
    tail -c +$(($1 + 1)) "$WORK/origin-access.log" | awk -v size="$SIZE" '{ sum += $1 } END { printf "%.2f", sum / size }'
}

declare -A TIMES EGRESS
run() { # cache scenario
    local cache=$1 scenario=$2 url offset seconds
    url=$(url_of "$cache")
    case $cache in tessera) start_box ;; nginx) start_nginx_cache ;; esac
    if [ "$scenario" = warm ] || [ "$scenario" = warm-32 ]; then
        fetch_all "$url" 1 >/dev/null
        # The warm copy must be the origin's bytes.
        curl -sf "$url" | cmp - "$WORK/www/content.bin"
    fi
    offset=$(origin_offset)
    case $scenario in *-32) seconds=$(fetch_all "$url" "$CLIENTS") ;; *) seconds=$(fetch_all "$url" 1) ;; esac
    sleep 0.2 # the origin writes its access log after the response
    TIMES[$cache,$scenario]+="$seconds "
    EGRESS[$cache,$scenario]+="$(origin_ratio "$offset") "
    echo "   $cache $scenario: ${seconds}s, origin bytes / size $(origin_ratio "$offset")" >&2
    stop_cache
}

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

for scenario in $SCENARIOS; do
    echo "== $scenario" >&2
    for i in $(seq 1 "$RUNS"); do
        if [ $((i % 2)) -eq 1 ]; then order="tessera nginx"; else order="nginx tessera"; fi
        for cache in $order; do run "$cache" "$scenario"; done
    done
done

echo
echo "$SIZE_MIB MiB content, $RUNS runs each (medians), caches on CPU $SERVER_CPU, origin and curl on CPU $CLIENT_CPU; $(uname -r)"
echo
printf "%-8s %12s %12s %8s %14s %14s\n" run "tessera s" "nginx s" ratio "tessera egress" "nginx egress"
for scenario in $SCENARIOS; do
    t=$(echo "${TIMES[tessera,$scenario]}" | median)
    n=$(echo "${TIMES[nginx,$scenario]}" | median)
    te=$(echo "${EGRESS[tessera,$scenario]}" | median)
    ne=$(echo "${EGRESS[nginx,$scenario]}" | median)
    ratio=$(awk -v a="$n" -v b="$t" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
    case $scenario in cold) goal="goal >= 2.0x" ;; cold-32) goal="goal >= 3.0x" ;; warm) goal="goal >= 1.35x" ;;
        warm-32) goal="no goal: the floor of cold-32 with these clients" ;; esac
    printf "%-8s %12s %12s %7sx %14s %14s   (%s, egress 1.0)\n" "$scenario" "$t" "$n" "$ratio" "$te" "$ne" "$goal"
done
echo "all runs (s): $(for k in "${!TIMES[@]}"; do printf '%s=[%s] ' "$k" "${TIMES[$k]% }"; done)"

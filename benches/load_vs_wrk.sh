#!/usr/bin/env bash
# tessera load vs wrk, closed loop, against the same nginx, the same threads and connections,
# each client pinned to CLIENT_CPU.
#
#   bash benches/load_vs_wrk.sh            # DURATION=8s THREADS=1 CONNECTIONS=16 ROUNDS=2
#
# Targets: a 1 KiB file (the client's cost per request dominates) and a 1 MiB file (bytes
# dominate). Each client runs ROUNDS times per target, alternated (tessera, wrk, tessera, wrk)
# so drift on a shared machine hits both alike; prints req/s of every run, the means and the
# ratio tessera / wrk. Goal: >= 1.3 on the 1 KiB file with one thread. Also prints each client's
# CPU time (user + system) per request, and how busy nginx's workers were during the run.
#
# Two layouts of nginx, each measured in full:
#   dedicated: one worker pinned to SERVER_CPU, the client alone on CLIENT_CPU. On a 2-core
#              machine that worker saturates first (busy near 100 %) and then sets both clients'
#              rate: the CPU per request is what tells them apart (a line says so).
#   shared:    a worker pinned to every CPU, the client on CLIENT_CPU beside one of them, as when
#              a load generator runs on the server's host. nginx has room to spare, and the
#              client's own cost per request (CPU, wake-ups) is what it takes from the target.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-8s} # in seconds: Ns
THREADS=${THREADS:-1}
CONNECTIONS=${CONNECTIONS:-16}
ROUNDS=${ROUNDS:-2}
BACKEND=${BACKEND:-auto}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}

# shellcheck source=benches/common.sh
source benches/common.sh
install_missing nginx wrk curl
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
pin_setup
bench_setup load
NGINX_PORT=$PORT_BASE

mkdir -p "$WORK/www"
head -c 1024 /dev/urandom > "$WORK/www/1k"
head -c $((1 << 20)) /dev/urandom > "$WORK/www/1m"
chmod 755 "$WORK"
chmod -R a+rX "$WORK/www"
CPUS=$(nproc)
write_nginx_conf() { # workers affinity
    cat > "$WORK/nginx.conf" <<NGINX
worker_processes $1;
worker_cpu_affinity $2;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 4096; }
http {
    access_log off;
    # The target should cost as little per request as nginx can, so that the clients are what is
    # measured: the small file is read from nginx's open file cache by read+write (sendfile would
    # send its head and body in two segments), the large one by sendfile.
    open_file_cache max=16;
    sendfile on;
    tcp_nopush off;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    default_type application/octet-stream;
    server {
        listen 127.0.0.1:$NGINX_PORT reuseport;
        root $WORK/www;
        location = /1k { sendfile off; }
    }
}
NGINX
}

# A worker_cpu_affinity mask with only CPU $1 set.
cpu_mask() { # cpu
    local mask="1"
    for _ in $(seq 1 "$1"); do mask="${mask}0"; done
    echo "$mask"
}

start_nginx() { # layout
    if [ "$1" = dedicated ]; then
        write_nginx_conf 1 "$(cpu_mask "$SERVER_CPU")"
    else
        local masks=()
        for cpu in $(seq 0 $((CPUS - 1))); do masks+=("$(cpu_mask "$cpu")"); done
        write_nginx_conf "$CPUS" "${masks[*]}"
    fi
    "$NGINX" -c "$WORK/nginx.conf" -p "$WORK" &
    NGINX_PID=$!
    PIDS+=("$NGINX_PID")
    wait_ready "http://127.0.0.1:$NGINX_PORT/1k"
    NGINX_WORKERS=$(pgrep -P "$NGINX_PID" | tr '\n' ' ')
}

stop_nginx() {
    kill -QUIT "$NGINX_PID"
    wait "$NGINX_PID" 2>/dev/null || true
}

server_ticks() { # CPU clock ticks (user + system) of nginx's workers so far
    local worker
    for worker in $NGINX_WORKERS; do cat "/proc/$worker/stat"; done | awk '{ t += $14 + $15 } END { print t }'
}

measured() { # command... (prints req/s, client CPU µs per request, nginx workers busy %)
    local TIMEFORMAT='%U %S' rate cpu ticks_before ticks_after
    ticks_before=$(server_ticks)
    rate=$( { time "$@" 2>>"$WORK/client.log"; } 2>"$WORK/cpu")
    ticks_after=$(server_ticks)
    read -r -a cpu < "$WORK/cpu"
    awk -v rate="$rate" -v user="${cpu[0]}" -v sys="${cpu[1]}" -v seconds="${DURATION%s}" \
        -v ticks=$((ticks_after - ticks_before)) -v hz="$(getconf CLK_TCK)" 'BEGIN {
        printf "%.0f %.1f %.0f\n", rate, (rate > 0 ? (user + sys) * 1e6 / (rate * seconds) : 0), 100 * ticks / hz / seconds }'
}

tessera_rate() { # url
    $PIN_CLIENT "$TESSERA" load "$1" --duration "$DURATION" --threads "$THREADS" --connections "$CONNECTIONS" \
        --backend "$BACKEND" --json | grep -o '"achieved_rate_per_s":[0-9.e+]*' | cut -d: -f2
}

wrk_rate() { # url
    $PIN_CLIENT wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" "$1" | awk '/^Requests\/sec:/ { print $2 }'
}

mean() { # field
    awk -v f="$1" '{ s += $f; n++ } END { printf "%.1f", (n ? s / n : 0) }'
}

echo "closed loop, -t$THREADS -c$CONNECTIONS -d$DURATION, clients on CPU $CLIENT_CPU; $(uname -r)"
for layout in dedicated shared; do
    start_nginx "$layout"
    echo
    if [ "$layout" = dedicated ]; then
        echo "dedicated: one nginx worker on CPU $SERVER_CPU, the client alone on CPU $CLIENT_CPU"
    else
        echo "shared: one nginx worker on each of $CPUS CPUs, the client beside one (busy: all workers, of $((CPUS * 100)) %)"
    fi
    printf "%-8s %-8s %s\n" target client "req/s (client CPU µs/request, nginx workers busy) per run"
    for target in 1k 1m; do
        url="http://127.0.0.1:$NGINX_PORT/$target"
        tessera_runs=()
        wrk_runs=()
        for _ in $(seq 1 "$ROUNDS"); do
            tessera_runs+=("$(measured tessera_rate "$url")")
            wrk_runs+=("$(measured wrk_rate "$url")")
        done
        for client in tessera wrk; do
            declare -n runs="${client}_runs"
            line=""
            for run in "${runs[@]}"; do
                set -- $run
                line+="$1 ($2 µs, nginx $3 %)  "
            done
            printf "%-8s %-8s %s mean %s req/s, %s µs/request\n" "$target" "$client" "$line" \
                "$(printf "%s\n" "${runs[@]}" | mean 1)" "$(printf "%s\n" "${runs[@]}" | mean 2)"
            unset -n runs
        done
        tessera_mean=$(printf "%s\n" "${tessera_runs[@]}" | mean 1)
        wrk_mean=$(printf "%s\n" "${wrk_runs[@]}" | mean 1)
        awk -v a="$tessera_mean" -v b="$wrk_mean" -v t="$target" -v l="$layout" \
            'BEGIN { printf "%-8s ratio tessera/wrk %.2f (req/s, %s)%s\n", t, (b > 0 ? a / b : 0), l, (t == "1k" ? "   (goal >= 1.3)" : "") }'
        # When nginx's one worker was (nearly) saturated in every run, it set the rate, not the client.
        if [ "$layout" = dedicated ]; then
            printf "%s\n" "${tessera_runs[@]}" "${wrk_runs[@]}" | awk -v t="$target" '
                { busy = $3; least = (NR == 1 || busy < least) ? busy : least }
                END { if (least >= 95) printf "%-8s nginx worker >= %d %% busy in every run: the target bounds both clients here\n", t, least }'
        fi
    done
    stop_nginx
done

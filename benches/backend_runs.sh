#!/usr/bin/env bash
# io_uring vs epoll on the same load, in alternated fresh-process runs: the distribution of each
# backend's rate, not one run. For the "occasional slow io_uring runs" question (docs/performance.md).
#
#   bash benches/backend_runs.sh            # RUNS=10 DURATION=4s CONNECTIONS=16
#   SERVE_EXTRA='send_bytes_per_turn_max = 1048576' bash benches/backend_runs.sh   # extra [serve] keys
#
# One worker pinned on CPU 0, wrk on CPU 1, 64 random 1 MiB pieces requested round-robin. Each
# run starts a fresh `tessera serve`; the backends alternate (uring, epoll, uring, …). Prints every
# run's GB/s, then each backend's median, worst and best, and the uring/epoll ratios.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-10}
DURATION=${DURATION:-4s}
CONNECTIONS=${CONNECTIONS:-16}
command -v wrk >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null
cargo build --release --bin tessera >&2
TESSERA=$PWD/target/release/tessera
WORK=$(mktemp -d /tmp/tessera-bench.XXXXXX)
PID=""
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
PORT=$((20000 + RANDOM % 20000))

head -c $((64 << 20)) /dev/urandom > "$WORK/blob"
"$TESSERA" publish "$WORK/blob" --id bench --data-dir "$WORK/data" >/dev/null
cat > "$WORK/pieces.lua" <<'LUA'
local counter = 0
request = function()
    counter = counter + 1
    return wrk.format("GET", "/v1/content/bench/piece/" .. (counter % 64))
end
done = function(summary, latency, requests)
    io.write(string.format("RESULT %d %d %d\n", summary.bytes, summary.duration, summary.errors.status + summary.errors.read))
end
LUA

one_run() { # backend -> GB/s
    cat > "$WORK/tessera.toml" <<TOML
data_dir = "$WORK/data"
[serve]
listen = "127.0.0.1:$PORT"
workers = 1
backend = "$1"
${SERVE_EXTRA:-}
[service]
enabled = false
[announce]
enabled = false
TOML
    RUST_LOG=warn taskset -c 0 "$TESSERA" serve --config "$WORK/tessera.toml" 2>>"$WORK/serve.log" &
    PID=$!
    for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/healthz" && break; sleep 0.05; done
    local line
    line=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"$DURATION" -s "$WORK/pieces.lua" "http://127.0.0.1:$PORT" | grep '^RESULT')
    kill -TERM "$PID"
    wait "$PID" || true
    PID=""
    # shellcheck disable=SC2086
    set -- $line
    [ "$4" -eq 0 ] || echo "run had $4 errors" >&2
    awk -v bytes="$2" -v us="$3" 'BEGIN { printf "%.2f\n", bytes / us / 1000 }'
}

uring=()
epoll=()
for run in $(seq 1 "$RUNS"); do
    uring+=("$(one_run uring)")
    epoll+=("$(one_run epoll)")
    echo "run $run: uring ${uring[-1]} GB/s, epoll ${epoll[-1]} GB/s" >&2
done
python3 - "${uring[*]}" "${epoll[*]}" <<'PY'
import statistics, sys
uring = [float(x) for x in sys.argv[1].split()]
epoll = [float(x) for x in sys.argv[2].split()]
for name, runs in (("uring", uring), ("epoll", epoll)):
    print(f"{name}: runs {' '.join(f'{x:.2f}' for x in runs)}")
    print(f"{name}: median {statistics.median(runs):.2f}  worst {min(runs):.2f}  best {max(runs):.2f} GB/s")
print(f"uring/epoll median: {statistics.median(uring) / statistics.median(epoll):.2f}x (goal >= 1.0x)")
print(f"uring/epoll worst:  {min(uring) / min(epoll):.2f}x (goal >= 0.9x)")
PY

# Shared by the bench scripts (sourced, not run): tools from Debian, CPU pinning, readiness.

# Installs with apt the packages whose command is missing: install_missing nginx wrk curl ...
# (nginx is also looked for in /usr/sbin, off root's PATH on some systems).
install_missing() {
    local missing=() tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing+=("$tool")
    done
    [ ${#missing[@]} -eq 0 ] && return
    echo "installing: ${missing[*]}" >&2
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# Sets PIN_SERVER and PIN_CLIENT (taskset prefixes for SERVER_CPU and CLIENT_CPU) when there are
# two CPUs or more.
pin_setup() {
    PIN_SERVER=""
    PIN_CLIENT=""
    if command -v taskset >/dev/null 2>&1 && [ "$(nproc)" -ge 2 ]; then
        PIN_SERVER="taskset -c $SERVER_CPU"
        PIN_CLIENT="taskset -c $CLIENT_CPU"
    fi
}

# Waits (at most 10 s) until URL answers.
wait_ready() {
    for _ in $(seq 1 100); do
        curl -sf -o /dev/null "$1" && return 0
        sleep 0.1
    done
    echo "server at $1 did not come up" >&2
    return 1
}

# Builds the release binary (TESSERA), makes a work dir (WORK, removed at exit) and kills the
# servers whose pids the script adds to PIDS at exit: bench_setup NAME
bench_setup() {
    cargo build --release --bin tessera >&2
    TESSERA=$PWD/target/release/tessera
    WORK=$(mktemp -d "/tmp/tessera-$1.XXXXXX")
    PIDS=()
    trap bench_cleanup EXIT
    PORT_BASE=$((20000 + RANDOM % 20000))
}

bench_cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}

# A cache box's upstream for the box benches: nginx as the origin of the files under $WORK/www
# (its access log in $WORK/origin-access.log: bytes sent per request) on PIN_CLIENT, and a
# tessera metadata service (data dir $WORK/seed) that holds the manifest and hash file of each
# NAME.bin as content NAME, its origin URL as the HTTP source, and none of the pieces. Adds the
# servers to PIDS.
box_upstream_setup() { # origin_port seed_port service_port name...
    local origin_port=$1 seed_port=$2 service_port=$3 name nginx
    shift 3
    nginx=$(command -v nginx || echo /usr/sbin/nginx)
    mkdir -p "$WORK/seed"
    # nginx workers run as an unprivileged user: let them read the files.
    chmod 755 "$WORK"
    chmod -R a+rX "$WORK/www"
    cat > "$WORK/origin.conf" <<NGINX
worker_processes 1;
daemon off;
pid $WORK/origin.pid;
error_log $WORK/origin-error.log;
events { worker_connections 4096; }
http {
    log_format sent '\$body_bytes_sent "\$http_range" \$status';
    access_log $WORK/origin-access.log sent;
    sendfile on;
    keepalive_requests 100000000;
    default_type application/octet-stream;
    server { listen 127.0.0.1:$origin_port; root $WORK/www; }
}
NGINX
    $PIN_CLIENT "$nginx" -c "$WORK/origin.conf" -p "$WORK" &
    PIDS+=("$!")
    wait_ready "http://127.0.0.1:$origin_port/$1.bin"
    cat > "$WORK/seed.toml" <<TOML
data_dir = "$WORK/seed"
[serve]
listen = "127.0.0.1:$seed_port"
workers = 1
[service]
listen = "127.0.0.1:$service_port"
[announce]
enabled = false
TOML
    for name in "$@"; do
        "$TESSERA" publish "$WORK/www/$name.bin" --id "$name" --no-store --config "$WORK/seed.toml" \
            --source "http://127.0.0.1:$origin_port/$name.bin" >&2
    done
    RUST_LOG=warn $PIN_CLIENT "$TESSERA" serve --config "$WORK/seed.toml" 2>>"$WORK/seed.log" &
    PIDS+=("$!")
    wait_ready "http://127.0.0.1:$seed_port/healthz"
}

# Starts an empty cache box (data dir $WORK/box, one worker, on PIN_SERVER) on PORT whose upstream
# is the metadata service of box_upstream_setup, plus BOX_SERVE_EXTRA and BOX_UPSTREAM_EXTRA (lines
# of its `[serve]` and `[upstream]` sections); sets BOX_PID and adds it to PIDS.
box_start() { # port service_port
    rm -rf "$WORK/box"
    mkdir -p "$WORK/box"
    cat > "$WORK/box.toml" <<TOML
data_dir = "$WORK/box"
[serve]
listen = "127.0.0.1:$1"
workers = 1
${BOX_SERVE_EXTRA:-}
[service]
enabled = false
[announce]
enabled = false
[upstream]
service_url = "https://localhost:$2"
ca_file = "$WORK/seed/tls/ca.pem"
${BOX_UPSTREAM_EXTRA:-}
TOML
    RUST_LOG=warn $PIN_SERVER "$TESSERA" serve --config "$WORK/box.toml" 2>>"$WORK/box.log" &
    BOX_PID=$!
    PIDS+=("$BOX_PID")
    wait_ready "http://127.0.0.1:$1/healthz"
}

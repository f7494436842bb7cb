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

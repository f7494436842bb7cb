#!/usr/bin/env bash
# tessera get from two seeds vs aria2c from one nginx origin, same 256 MiB file, same SHA-256
# piece hashes (aria2 gets them in a Metalink and verifies every piece too). Prints the time ratio,
# and that of `get --sha256`, which also hashes the whole file (aria2c does not).
#
# Two seeds: `tessera serve --workers 1 --no-service`, each on its own data dir; the metadata
# service runs alone (`tessera service`) with a development CA in seed1/tls. Given as `--peer`,
# they are the site's boxes (issue 14): the one ranked first for this device and content serves
# the download, the other stands by to take over.
#
# Usage: benches/get_vs_aria2.sh [SIZE_MIB]   (default 256)
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MIB=${1:-256}
ID=bench-content
WORK=$(mktemp -d /tmp/tessera-bench.XXXXXX)
# nginx workers run unprivileged: let them read the origin file.
chmod 755 "$WORK"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

need() { command -v "$1" >/dev/null 2>&1; }
if ! need aria2c || ! need nginx; then
    echo "installing aria2 and nginx" >&2
    (apt-get update -qq && apt-get install -y -qq aria2 nginx) >/dev/null
fi

cargo build --release --quiet
TESSERA=target/release/tessera

# One file, published into two seed data directories and served by nginx. Published without
# `--with-sha256`: a manifest that names the whole-file SHA-256 makes every `get` check it (rule 6),
# and aria2c does not check it (below); `get --sha256` is timed apart.
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom >"$WORK/content.bin"
SHA=$(sha256sum "$WORK/content.bin" | cut -d' ' -f1)
ORIGIN_PORT=18080
for seed in 1 2; do
    $TESSERA publish "$WORK/content.bin" --id "$ID" --data-dir "$WORK/seed$seed" \
        --source "http://127.0.0.1:$ORIGIN_PORT/content.bin" >/dev/null
done

cat >"$WORK/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    server {
        listen 127.0.0.1:$ORIGIN_PORT;
        root $WORK;
    }
}
CONF
nginx -c "$WORK/nginx.conf"

# Seeds (data plane) and the metadata service (control plane, TLS with a dev CA).
$TESSERA serve --data-dir "$WORK/seed1" --listen 127.0.0.1:17681 --workers 1 --no-service >"$WORK/seed1.log" 2>&1 &
PIDS+=($!)
$TESSERA serve --data-dir "$WORK/seed2" --listen 127.0.0.1:17682 --workers 1 --no-service >"$WORK/seed2.log" 2>&1 &
PIDS+=($!)
$TESSERA cert init "$WORK/seed1/tls" >/dev/null
$TESSERA service --listen 127.0.0.1:17443 --data-dir "$WORK/seed1" >"$WORK/service.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:17681/healthz" >/dev/null && curl -sf "http://127.0.0.1:17682/healthz" >/dev/null && break
    sleep 0.1
done

# A Metalink with the same SHA-256 piece hashes, read back from the published hash file.
python3 - "$WORK/seed1/catalog/$ID.hashfile" "$WORK/content.meta4" "$SHA" "$ORIGIN_PORT" <<'PY'
import struct, sys
hashfile, out, sha, port = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
data = open(hashfile, "rb").read()
piece_size, length, count = struct.unpack_from("<IQQ", data, 12)
pieces = "\n".join(f"        <hash>{data[32 + 32 * i:64 + 32 * i].hex()}</hash>" for i in range(count))
open(out, "w").write(f"""<?xml version="1.0" encoding="UTF-8"?>
<metalink xmlns="urn:ietf:params:xml:ns:metalink">
  <file name="content.bin">
    <size>{length}</size>
    <hash type="sha-256">{sha}</hash>
    <pieces length="{piece_size}" type="sha-256">
{pieces}
    </pieces>
    <url>http://127.0.0.1:{port}/content.bin</url>
  </file>
</metalink>
""")
PY

# Seconds a command takes, read from bash's own clock: no process starts inside the interval (a
# python3 per reading put about 40 ms of interpreter start-up into every tool's time).
seconds() { # command...
    local start=$EPOCHREALTIME end
    "$@"
    end=$EPOCHREALTIME
    awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }' >"$WORK/seconds"
}

RUNS=${RUNS:-3}
# Both verify every piece against its SHA-256. aria2c does not check the Metalink's whole-file
# hash on a fresh download: given a wrong one, it still finishes with exit 0 and "OK" (checked in
# docs/performance.md). So the like-for-like `get` has no `--sha256` (and its manifest names no
# whole-file hash, see above). `get --sha256` also hashes the whole file once more as one stream
# (rule 6); it is timed too and shown beside it.
run_tessera() { # [--sha256 SHA]
    rm -f "$WORK/out-tessera"
    $TESSERA get "$ID" --service https://127.0.0.1:17443 --ca "$WORK/seed1/tls/ca.pem" \
        --peer 127.0.0.1:17681 --peer 127.0.0.1:17682 "$@" --json -o "$WORK/out-tessera" >"$WORK/tessera.json"
    grep -q '"mode":"p2p"' "$WORK/tessera.json" || { echo "tessera get did not run in P2P mode:" >&2; cat "$WORK/tessera.json" >&2; exit 1; }
    # The summary names the whole-file SHA-256 exactly when it was checked: only with --sha256.
    if [ $# -gt 0 ]; then grep -q "\"sha256\":\"$SHA\"" "$WORK/tessera.json"; else grep -q '"sha256":null' "$WORK/tessera.json"; fi \
        || { echo "tessera get checked the whole file when it should not, or the reverse:" >&2; cat "$WORK/tessera.json" >&2; exit 1; }
}
run_aria2() {
    rm -rf "$WORK/aria2" && mkdir -p "$WORK/aria2"
    # (aria2 first checks the missing file against the hashes and logs a checksum error: harmless.)
    aria2c --console-log-level=error --summary-interval=0 --download-result=hide --dir "$WORK/aria2" \
        --check-integrity=true --max-connection-per-server=4 --split=4 --file-allocation=none "$WORK/content.meta4" \
        2>&1 | grep -v "Checksum error detected" | grep -v '^$' || true
}
# Each timed run starts with no dirty pages (sync), so no tool pays for the writeback of what the
# one before it wrote; the tools alternate, and the median of RUNS runs is reported.
tessera_times=()
whole_times=()
aria2_times=()
for _ in $(seq 1 "$RUNS"); do
    sync
    seconds run_tessera; tessera_times+=("$(cat "$WORK/seconds")")
    cmp "$WORK/out-tessera" "$WORK/content.bin" # (untimed)
    sync
    seconds run_aria2; aria2_times+=("$(cat "$WORK/seconds")")
    sync
    seconds run_tessera --sha256 "$SHA"; whole_times+=("$(cat "$WORK/seconds")")
    cmp "$WORK/out-tessera" "$WORK/content.bin"
done
median() { python3 -c 'import statistics, sys; print(statistics.median(map(float, sys.argv[1:])))' "$@"; }
tessera_s=$(median "${tessera_times[@]}")
whole_s=$(median "${whole_times[@]}")
aria2_s=$(median "${aria2_times[@]}")
echo "tessera runs (s):          ${tessera_times[*]}"
echo "tessera --sha256 runs (s): ${whole_times[*]}"
echo "aria2c runs (s):           ${aria2_times[*]}"

cmp "$WORK/aria2/content.bin" "$WORK/content.bin"
python3 - "$tessera_s" "$whole_s" "$aria2_s" <<'PY'
import sys
tessera, whole, aria2 = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
print(f"tessera get (ranked seed, P2P, every piece verified): {tessera:7.3f} s (median)")
print(f"tessera get --sha256 (and the whole file hashed):     {whole:7.3f} s (median)")
print(f"aria2c (nginx origin, metalink, every piece verified): {aria2:7.3f} s (median)")
print(f"speed-up aria2 time / tessera time:        {aria2 / tessera:7.2f}x  (goal >= 2.5x, issue 12)")
print(f"speed-up aria2 time / tessera --sha256:    {aria2 / whole:7.2f}x  (tessera does more work here)")
PY
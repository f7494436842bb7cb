#!/usr/bin/env bash
# SHA-256 on 1 MiB pieces: tessera (one core) against `openssl speed -evp sha256` (one core).
# Prints both rates in GB/s and the ratio tessera/openssl (goal: >= 0.95).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v openssl >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq openssl >/dev/null
fi
cargo build --release --quiet
tessera_json=$(./target/release/tessera info --hash-speed --json)
tessera_bps=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["hash_one_core_bytes_per_s"])' "$tessera_json")
tessera_all=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["hash_all_cores_bytes_per_s"])' "$tessera_json")
backend=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["sha256_backend"])' "$tessera_json")
# openssl prints the rate in thousands of bytes per second, e.g. "sha256   2031616.00k".
openssl_k=$(openssl speed -evp sha256 -bytes 1048576 -seconds 3 2>/dev/null | awk '$1 ~ /^sha256$|^SHA256$|^sha2-256$/ {v=$NF} END {sub(/k$/, "", v); print v}')
if [ -z "$openssl_k" ]; then
    echo "could not read openssl's rate" >&2
    exit 1
fi
python3 - "$tessera_bps" "$openssl_k" "$tessera_all" "$backend" <<'PY'
import sys
tessera, openssl_k, tessera_all, backend = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
openssl = openssl_k * 1000
print(f"tessera ({backend}), one core : {tessera / 1e9:6.2f} GB/s")
print(f"openssl speed -evp sha256   : {openssl / 1e9:6.2f} GB/s")
print(f"ratio tessera/openssl       : {tessera / openssl:6.3f}  (goal >= 0.95)")
print(f"tessera, all cores (batch)  : {tessera_all / 1e9:6.2f} GB/s")
PY

#!/usr/bin/env bash
# SHA-256 on 1 MiB pieces, tessera against `openssl speed -evp sha256`, in one run:
#   - tessera, one stream (one piece at a time, SHA-NI where present), one core;
#   - tessera, batch (16 pieces side by side with AVX-512 where present), one core;
#   - tessera, batches on all cores;
#   - openssl, one stream, one core;
#   - the ratio batch (one core) / openssl. Goal: >= 2.0 on a CPU with AVX-512.
# One-core figures are per CPU second (thread CPU time, as `openssl speed` counts), so they hold up
# on a busy machine better than wall time; the all-cores figure is wall time and needs a quiet one.
# OPENSSL_SECONDS (default 3) shortens openssl's run for a quick check of the script.
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/common.sh
install_missing openssl python3
cargo build --release --quiet
tessera_json=$(./target/release/tessera info --hash-speed --json)
# openssl prints the rate in thousands of bytes per second, e.g. "sha256   2031616.00k".
openssl_k=$(openssl speed -evp sha256 -bytes 1048576 -seconds "${OPENSSL_SECONDS:-3}" 2>/dev/null |
    awk '$1 ~ /^sha256$|^SHA256$|^sha2-256$/ {v=$NF} END {sub(/k$/, "", v); print v}')
if [ -z "$openssl_k" ]; then
    echo "could not read openssl's rate" >&2
    exit 1
fi
python3 - "$tessera_json" "$openssl_k" <<'PY'
import json, sys
info, openssl = json.loads(sys.argv[1]), float(sys.argv[2]) * 1000
single = info["hash_single_stream_bytes_per_s"]
batch = info["hash_one_core_bytes_per_s"]
every = info["hash_all_cores_bytes_per_s"]
rows = [
    (f"tessera one stream ({info['sha256_backend']}), one core", f"{single / 1e9:6.2f} GB/s"),
    (f"tessera batch ({info['sha256_batch_backend']}), one core", f"{batch / 1e9:6.2f} GB/s"),
    (f"tessera batch, all {info['cores']} cores", f"{every / 1e9:6.2f} GB/s"),
    ("openssl speed -evp sha256, one core", f"{openssl / 1e9:6.2f} GB/s"),
    ("ratio one stream / openssl", f"{single / openssl:6.3f}"),
    ("ratio batch / openssl (goal >= 2.0)", f"{batch / openssl:6.3f}"),
]
width = max(len(label) for label, _ in rows)
for label, value in rows:
    print(f"{label.ljust(width)} : {value}")
PY

#!/usr/bin/env bash
# Peer registry cost: announces/s and peer lookups/s in memory and on Redis (a local
# redis-server the bench starts on a free loopback port; benches/registry.rs says the shape).
# Usage: benches/registry.sh [criterion args], e.g. `benches/registry.sh --quick` for a check.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
install_missing redis-server
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo bench --bench registry -- "$@" 2>&1 | tee "$log"
echo
echo "backend  operation  per second (criterion's middle estimate)"
awk '/^registry\/[a-z]+\/[a-z]+/ { name = $1 }
     /thrpt:/ && name != "" { v = $4; u = $5; printf "%s  %s %s\n", name, v, u; name = "" }' "$log" \
    | sed 's#registry/##; s#/#  #'

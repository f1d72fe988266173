#!/usr/bin/env bash
# Quick start: install what is missing, build, and run the edge site
# edge-factory-01 (two controllers, four compute hosts) on this machine.
# Its API URL and admin password are printed; Ctrl-C stops it. Data is kept
# in .roost/ in the repository, so a second run finds the same site.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

echo "[quickstart] building roost-agent (release; the first build takes a few minutes)"
cargo build --release --locked --bin roost-agent

SITE=${SITE:-edge-factory-01}
DATA=".roost/$SITE"
mkdir -p "$DATA"
echo "[quickstart] starting site $SITE (data in $DATA)"
exec ./target/release/roost-agent run --config "site-configs/$SITE.yaml" --data-dir "$DATA" "$@"

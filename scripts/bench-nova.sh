#!/usr/bin/env bash
# Installs OpenStack Nova (the peer for the scheduler benchmark) into
# .roost/novaenv, once. `cargo bench -p roost-tests --bench agent` then runs
# Nova's filter scheduler on the same hosts as Roost's and prints both.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.roost/novaenv
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import nova" 2>/dev/null; then
  echo "[bench-nova] Nova already installed in $VENV"
  exit 0
fi
echo "[bench-nova] installing nova==34.0.0 into $VENV (a few minutes)"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "nova==34.0.0"
echo "[bench-nova] done: $VENV/bin/python"

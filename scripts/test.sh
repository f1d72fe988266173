#!/usr/bin/env bash
# Installs what is missing, then runs every test: unit tests of each crate
# and the cross-process tests in tests/ that start the real binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

echo "[test] building and running the whole test suite"
cargo test --workspace --locked "$@"

#!/usr/bin/env bash
# Installs what is missing, then runs every test: unit tests of each crate
# and the cross-process tests in tests/ that start the real binaries. Ends
# with one line counting every test that ran.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRA_PACKAGES=(chromium chromium-driver cpio)
source scripts/setup.sh
# The tiny bootable guest the compute tests run (from Debian's kernel and
# busybox packages), and whether this host's KVM can boot it.
./scripts/guest-image.sh
# The stock `openstack` client the OpenStack-compatibility tests drive.
./scripts/openstack-client.sh

echo "[test] building and running the whole test suite"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "summary: %d passed, %d failed\n", p, f }' "$log"
exit "$status"

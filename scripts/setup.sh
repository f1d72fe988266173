#!/usr/bin/env bash
# Installs what this machine lacks to build and run Roost, and nothing else.
# Safe to run again: packages already present are left alone. Sourced by
# quickstart.sh and test.sh; run it on its own to prepare a machine.
set -euo pipefail

# Debian packages Roost needs to build and run today.
#   build-essential: the C compiler that builds the bundled SQLite
#   pkg-config:      finds system libraries for -sys crates
#   curl:            the README's tour
#   libvirt-dev:     libvirt's library, which the agent's compute driver links
#   libvirt-daemon-driver-qemu, qemu-system-x86: libvirt's QEMU driver and
#                    QEMU itself, which run the site's VMs (no daemon needed)
#   qemu-utils:      qemu-img, which makes the servers' qcow2 disks
#   dnsmasq-base:    the DHCP server that gives guests their ports' addresses
#   nftables:        nft, which loads the security groups' rules on the host
#   libclang-dev:    bindgen's libclang, for SQLite's session extension (the
#                    edge HA replication log), whose bindings are made at build
PACKAGES=(build-essential pkg-config curl libvirt-dev libvirt-daemon-driver-qemu qemu-system-x86 qemu-utils dnsmasq-base nftables libclang-dev)
# test.sh adds what only the tests need:
#   chromium, chromium-driver: headless Chromium driven over WebDriver
#   cpio:            packs the test guest's initramfs (scripts/guest-image.sh)
PACKAGES+=(${EXTRA_PACKAGES[@]+"${EXTRA_PACKAGES[@]}"})

say() { printf '[setup] %s\n' "$*"; }

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    say "cargo is not installed. Install Rust with rustup (https://rustup.rs), then run this again."
    exit 1
  fi
fi

missing_packages() {
  missing=()
  for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$p")
    fi
  done
}

missing_packages
if [ ${#missing[@]} -eq 0 ]; then
  say "system packages present: ${PACKAGES[*]}"
else
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
      say "not root and no sudo: run as root: apt-get update && apt-get install -y ${missing[*]}"
      exit 1
    fi
  fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # Twice at most: apt may remove a package to settle a conflict (a
  # backported qemu-utils beside the release's qemu-system-x86, say); the
  # second round installs the release's version of what it removed.
  for round in 1 2; do
    say "installing: ${missing[*]}"
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
    say "installed: ${missing[*]}"
    missing_packages
    [ ${#missing[@]} -eq 0 ] && break
    if [ "$round" -eq 2 ]; then
      say "apt removed ${missing[*]} while installing the rest; install them by hand (apt-get install ${missing[*]}), then run this again"
      exit 1
    fi
  done
fi
# libvirt's QEMU driver refuses to start without these (libvirtd's package
# would make them; Roost runs the driver inside the agent instead).
if ! getent passwd libvirt-qemu >/dev/null || ! getent group kvm >/dev/null; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
      say "libvirt's QEMU driver needs a libvirt-qemu user and a kvm group: as root run: groupadd -r kvm; useradd -r -M libvirt-qemu"
      exit 1
    fi
  fi
  getent group kvm >/dev/null || $SUDO groupadd -r kvm
  getent passwd libvirt-qemu >/dev/null || $SUDO useradd -r -M -s /usr/sbin/nologin libvirt-qemu
  say "created libvirt's libvirt-qemu user and kvm group"
fi
say "rust: $(cargo --version)"

#!/usr/bin/env bash
# Builds the tiny bootable guest the compute tests and benchmarks run, from
# Debian's packages: the cloud kernel (direct kernel boot), an initramfs
# holding a static busybox whose /init prints one line on the serial
# console, and a blank qcow2 base image the servers' root disks overlay.
# With a NIC, /init loads virtio-net (the cloud kernel has it as a module),
# asks DHCP for an address and pings the gateway, printing each result.
#
#   scripts/guest-image.sh [DIR]     (default: target/roost-guest)
#
# Safe to run again: a complete DIR of this FORMAT is left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-${ROOST_GUEST_DIR:-target/roost-guest}}
say() { printf '[guest-image] %s\n' "$*"; }
# Bump when what the guest does changes: an older DIR is rebuilt.
FORMAT=2

# Can this host's KVM boot the guest? /dev/kvm opening is not enough: on
# some nested hosts guests hang in firmware. Boots it once, with QEMU's
# default CPU model, and writes kvm or tcg to $dir/accel for the tests.
probe_kvm() {
  [ -s "$dir/accel" ] && { say "accelerator: $(cat "$dir/accel")"; return; }
  local verdict="tcg: /dev/kvm cannot be opened"
  if [ -w /dev/kvm ]; then
    # The guest never exits: timeout always ends QEMU, so its status is
    # ignored (under pipefail it would fail the pipeline) and grep decides.
    if { timeout 20 qemu-system-x86_64 -enable-kvm -m 128 -display none -serial stdio -no-reboot \
         -kernel "$dir/vmlinuz" -initrd "$dir/initrd.img" \
         -append "console=ttyS0 rdinit=/init quiet panic=-1" 2>/dev/null || true; } \
       | grep -a -m1 -q "roost-guest: init reached"; then
      verdict="kvm"
    else
      verdict="tcg: /dev/kvm opens but a KVM guest did not reach its init within 20 s (seen on nested hosts)"
    fi
  fi
  echo "$verdict" > "$dir/accel"
  say "accelerator: $verdict"
}

if [ -s "$dir/vmlinuz" ] && [ -s "$dir/initrd.img" ] && [ -s "$dir/base.qcow2" ] \
   && [ "$(cat "$dir/FORMAT" 2>/dev/null)" = "$FORMAT" ]; then
  say "present in $dir ($(cat "$dir/VERSION" 2>/dev/null || echo unknown kernel))"
  probe_kvm
  exit 0
fi
for tool in apt-get dpkg-deb cpio gzip qemu-img qemu-system-x86_64; do
  command -v "$tool" >/dev/null || { say "$tool is missing: run scripts/setup.sh first"; exit 1; }
done

kernel_pkg=$( (apt-cache depends linux-image-cloud-amd64 2>/dev/null || true) | awk '/Depends: linux-image-/ { print $2; exit }')
busybox_candidate=$( (apt-cache policy busybox-static 2>/dev/null || true) | awk '/Candidate:/ { print $2 }')
if [ -z "$kernel_pkg" ] || [ -z "$busybox_candidate" ] || [ "$busybox_candidate" = "(none)" ]; then
  say "package lists lack the kernel or busybox: updating them"
  if [ "$(id -u)" -eq 0 ]; then apt-get update -qq; else sudo apt-get update -qq; fi
  kernel_pkg=$( (apt-cache depends linux-image-cloud-amd64 2>/dev/null || true) | awk '/Depends: linux-image-/ { print $2; exit }')
fi
[ -n "$kernel_pkg" ] || { say "no linux-image-cloud-amd64 in the package lists"; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 777 "$work"  # apt fetches as its own user where it can
say "downloading $kernel_pkg and busybox-static"
(cd "$work" && apt-get download -qq "$kernel_pkg" busybox-static)
mkdir -p "$work/kernel" "$work/busybox"
dpkg-deb -x "$work"/linux-image-*.deb "$work/kernel"
dpkg-deb -x "$work"/busybox-static_*.deb "$work/busybox"

root="$work/initramfs"
mkdir -p "$root"/{bin,dev,proc,sys,tmp}
cp "$work/busybox/bin/busybox" "$root/bin/busybox"
# virtio-net and what it needs, in load order (modules in this kernel).
mods=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net)
mkdir -p "$root/lib/modules"
for m in "${mods[@]}"; do
  f=$(find "$work/kernel/lib/modules" -name "$m.ko*" | head -1)
  [ -n "$f" ] || { say "the kernel package lacks $m.ko"; exit 1; }
  case "$f" in
    *.xz) xz -dc "$f" > "$root/lib/modules/$m.ko" ;;
    *.zst) zstd -qdc "$f" > "$root/lib/modules/$m.ko" ;;
    *) cp "$f" "$root/lib/modules/$m.ko" ;;
  esac
done
echo "${mods[*]}" > "$root/lib/modules/order"
# udhcpc's hook: configure the lease and say so on the console.
cat > "$root/bin/dhcp-hook" <<'HOOK'
#!/bin/busybox sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
    echo "${router%% *}" > /tmp/gateway
    echo "roost-guest: dhcp $ip/$mask on $interface, gateway ${router%% *}" > /dev/console
    ;;
esac
HOOK
chmod 755 "$root/bin/dhcp-hook"
# The initial console, where the kernel points /init's output (needs root;
# /init also reopens the console from devtmpfs, so it is not required).
mknod -m 600 "$root/dev/console" c 5 1 2>/dev/null || true
cat > "$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
exec >/dev/console 2>&1 </dev/console
echo "roost-guest: init reached: kernel $(uname -r), $(nproc) vcpu, $(awk '/MemTotal/ {print $2 $3}' /proc/meminfo) memory"
echo "roost-guest: up $(cut -d' ' -f1 /proc/uptime)s"
for m in $(cat /lib/modules/order); do insmod /lib/modules/$m.ko 2>/dev/null; done
if [ -e /sys/class/net/eth0 ]; then
  ip link set lo up
  ip link set eth0 up
  echo "roost-guest: eth0 $(cat /sys/class/net/eth0/address)"
  if udhcpc -i eth0 -n -q -t 8 -T 2 -s /bin/dhcp-hook >/dev/null 2>&1; then
    gw=$(cat /tmp/gateway 2>/dev/null)
    if [ -n "$gw" ] && ping -c 1 -W 3 "$gw" >/dev/null 2>&1; then
      echo "roost-guest: gateway $gw reachable"
    else
      echo "roost-guest: gateway $gw unreachable"
    fi
  else
    echo "roost-guest: dhcp got no lease on eth0"
  fi
fi
while :; do sleep 3600; done
INIT
chmod 755 "$root/init"

mkdir -p "$dir"
cp "$work"/kernel/boot/vmlinuz-* "$dir/vmlinuz.part"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -9) > "$dir/initrd.img.part"
qemu-img create -q -f qcow2 "$dir/base.qcow2.part" 64M
mv "$dir/vmlinuz.part" "$dir/vmlinuz"
mv "$dir/initrd.img.part" "$dir/initrd.img"
mv "$dir/base.qcow2.part" "$dir/base.qcow2"
echo "$kernel_pkg, busybox-static $(dpkg-deb -f "$work"/busybox-static_*.deb Version)" > "$dir/VERSION"
echo "$FORMAT" > "$dir/FORMAT"
say "built in $dir: $(cat "$dir/VERSION")"
probe_kvm

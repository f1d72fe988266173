#!/usr/bin/env bash
# Quick start: install what is missing, build, and run a whole region on
# this machine: the regional controller (site-configs/region.yaml) and the
# sites edge-factory-01 and vehicle-07, each enrolled with a one-time join
# token and syncing with the controller over QUIC.
#
# Data and logs are kept in .roost/ in the repository, so a second run finds
# the same region and sites (already enrolled). Ctrl-C stops everything.
#
# vehicle-07 runs its servers as real VMs (libvirt's QEMU driver inside the
# agent, no daemon), booting the tiny guest scripts/guest-image.sh builds;
# edge-factory-01 records its servers without starting VMs.
#
# SITE=vehicle-07 ./scripts/quickstart.sh runs that one site alone, without
# a controller.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

say() { printf '[quickstart] %s\n' "$*"; }

say "building roost-agent and roost-controller (release; the first build takes a few minutes)"
cargo build --release --locked --bin roost-agent --bin roost-controller

# The guest vehicle-07's image list points at, and whether KVM can boot it.
GUEST=/var/lib/roost/images/busybox
./scripts/guest-image.sh "$GUEST"
ACCEL=tcg
[ "$(cat "$GUEST/accel")" = kvm ] && ACCEL=kvm
# Appended to vehicle-07's config: its servers become libvirt domains, and
# its networks bridges on this machine (one host: no tunnel to peers; a
# dnsmasq per network gives guests their addresses).
real_vms() {
  printf '\ncompute:\n  driver: libvirt\n  libvirt:\n    uri: "qemu:///embed?root=/var/lib/roost/%s/libvirt"\n    accel: %s\n    cpu_mode: qemu-default\n    shutdown_timeout_secs: 5\nnetwork:\n  host: node-0\n' "$1" "$ACCEL"
}

if [ -n "${SITE:-}" ]; then
  DATA=".roost/$SITE"
  mkdir -p "$DATA"
  cfg="site-configs/$SITE.yaml"
  if [ "$SITE" = vehicle-07 ]; then
    cfg="$DATA.yaml"
    { cat "site-configs/$SITE.yaml"; real_vms "$SITE"; } >"$cfg"
  fi
  say "starting site $SITE alone (data in $DATA)"
  exec ./target/release/roost-agent run --config "$cfg" --data-dir "$DATA" "$@"
fi

REGION_CFG=site-configs/region.yaml
REGION_NAME=eu-central
API=http://127.0.0.1:7443
QUIC=127.0.0.1:7444
SITES=(edge-factory-01 vehicle-07)
mkdir -p .roost/region

pids=()
stop() {
  say "stopping"
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop EXIT
trap 'exit 130' INT TERM

# Waits until a log file has a line starting with "  $2" and prints its rest.
banner_field() {
  local log=$1 field=$2 i
  for i in $(seq 1 100); do
    if line=$(grep -m1 "^  $field " "$log" 2>/dev/null); then
      echo "${line#  $field }" | sed 's/^ *//'
      return 0
    fi
    sleep 0.1
  done
  say "no '$field' line in $log after 10 s; its end:"
  tail -n 20 "$log" >&2
  return 1
}

say "starting the regional controller $REGION_NAME (log: .roost/region/controller.log)"
./target/release/roost-controller serve --config "$REGION_CFG" --data-dir .roost/region \
  >.roost/region/controller.log 2>&1 &
pids+=($!)
banner_field .roost/region/controller.log API >/dev/null

for site in "${SITES[@]}"; do
  data=".roost/$site"
  cfg="$data.yaml"
  mkdir -p "$data"
  if [ ! -f "$data/pki/identity.crt" ]; then
    say "site $site: new; creating its one-time join token"
    token=$(./target/release/roost-controller token create --config "$REGION_CFG" \
      --data-dir .roost/region --site-id "$site" --ttl 1h 2>/dev/null)
    {
      cat "site-configs/$site.yaml"
      printf '\nregion:\n  name: %s\n  address: %s\n  central_api: %s\n  join_token: %s\n' \
        "$REGION_NAME" "$QUIC" "$API" "$token"
      if [ "$site" = vehicle-07 ]; then real_vms "$site"; fi
    } >"$cfg"
  fi
  say "starting site $site (log: $data/agent.log)"
  ./target/release/roost-agent run --config "$cfg" --data-dir "$data" >"$data/agent.log" 2>&1 &
  pids+=($!)
done

CTL=(./target/release/roost-controller)
SITE_ARGS=(--config "$REGION_CFG" --data-dir .roost/region)
say "waiting for the sites to come online"
online=0
for i in $(seq 1 100); do
  online=$("${CTL[@]}" site list "${SITE_ARGS[@]}" --output json 2>/dev/null \
    | grep -c '"availability": "online"' || true)
  [ "$online" -ge "${#SITES[@]}" ] && break
  sleep 0.2
done

echo
"${CTL[@]}" site list "${SITE_ARGS[@]}" || true
echo
echo "Roost region $REGION_NAME is running on this machine."
echo "  controller API   $API/roost/v1/sites   (admin token in .roost/region/admin.token)"
echo "  fleet view       ./target/release/roost-controller site list --config $REGION_CFG --data-dir .roost/region"
echo "  dashboard        $API/#token=$(cat .roost/region/admin.token)   (read-only: viewer.token)"
for site in "${SITES[@]}"; do
  url=$(banner_field ".roost/$site/agent.log" API)
  echo "  site $site   $url   admin password in .roost/$site/admin-password"
done
echo "  sites online     ${online:-0} of ${#SITES[@]}"
echo "Ctrl-C stops the region; data stays in .roost/."
wait

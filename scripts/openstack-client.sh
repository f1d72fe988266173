#!/usr/bin/env bash
# Installs the stock OpenStack command-line client (python-openstackclient,
# pinned) into its own Python virtualenv under target/, for the tests and
# for trying a site by hand:
#
#   ./scripts/openstack-client.sh && export PATH="$PWD/target/openstack-client/bin:$PATH"
#
# Safe to run again: a venv already holding the pinned version is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=10.5.0
VENV=target/openstack-client
say() { printf '[openstack-client] %s\n' "$*"; }

if [ -x "$VENV/bin/openstack" ] \
  && "$VENV/bin/python" -c "import importlib.metadata as m; assert m.version('python-openstackclient') == '$VERSION'" 2>/dev/null; then
  say "python-openstackclient $VERSION present in $VENV"
  exit 0
fi
if ! command -v python3 >/dev/null 2>&1; then
  say "python3 is missing: install Debian's python3 and python3-venv, then run this again"
  exit 1
fi
say "installing python-openstackclient $VERSION into $VENV (about a minute)"
rm -rf "$VENV"
if ! python3 -m venv "$VENV"; then
  say "python3 cannot make a virtualenv: install Debian's python3-venv, then run this again"
  exit 1
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check "python-openstackclient==$VERSION"
say "installed: $("$VENV/bin/openstack" --version 2>&1)"

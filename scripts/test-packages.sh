#!/usr/bin/env bash
# Installs the Debian packages the tests use, when missing (needs root and apt): ping (the RTT
# reference), mtr (the traceroute reference), nft (loss and reject rules), ip (network namespaces), setpriv and unshare (the
# ICMP permission tests), curl (the HTTP phase reference), openssl (the certificates operators
# make), prometheus (promtool, and a real Prometheus scraping the server), python3 (the upgrade
# lab's release file server), binutils (strip, for the upgrade lab's binaries), chromium and
# chromium-driver (the mesh page's browser test and scripts/bench-mesh-page.sh), systemd
# (systemd-analyze for the units), supervisor (a real supervisord runs the agent's program),
# python3-venv (kubernetes-validate from PyPI) (scripts/check-packaging.sh). Called by
# scripts/test.sh, so the README's test command works on a fresh machine.
set -euo pipefail
packages="iputils-ping mtr-tiny nftables iproute2 util-linux curl prometheus openssl python3 binutils chromium chromium-driver systemd supervisor python3-venv"
missing=""
for p in $packages; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "the tests need these Debian packages:$missing (install them as root)" >&2
    exit 1
  fi
  echo "installing:$missing"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  # The package starts a Prometheus on :9090 when this run installed it; the tests start
  # their own on free ports.
  case " $missing " in *" prometheus "*) systemctl stop prometheus 2>/dev/null || pkill -x prometheus 2>/dev/null || true ;; esac
  # Likewise supervisor's own supervisord, when this run installed supervisor and so started
  # it (the check runs its own); a supervisord the machine already had is left alone.
  case " $missing " in *" supervisor "*) systemctl stop supervisor 2>/dev/null || true ;; esac
fi

#!/usr/bin/env bash
# Builds the release bundle probermesh-<version>-linux-<arch>.tar.gz (and its .sha256): the
# binary (stripped), install-agent.sh, the systemd units and drop-in, the supervisor program,
# the dashboards, the alert rules and the docs, with a SHA256SUMS of its files.
#
#   scripts/build-release.sh [--binary PATH] [--version V] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
binary="" version="" out="target/release-bundle"
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "usage: $0 [--binary PATH] [--version V] [--out DIR]" >&2; exit 64 ;;
  esac
done
if [ -z "$binary" ]; then
  for candidate in "${CARGO_TARGET_DIR:-target}/release/probermesh" "${CARGO_TARGET_DIR:-target}/debug/probermesh"; do
    if [ -x "$candidate" ]; then binary="$candidate"; break; fi
  done
fi
[ -x "$binary" ] || { echo "no probermesh binary (build it, or pass --binary)" >&2; exit 1; }
[ -n "$version" ] || version="$("$binary" version | awk '{print $2}')"
arch="$(uname -m)"
name="probermesh-${version}-linux-${arch}"
stage="$out/stage/$name"
rm -rf "$stage"
install -d "$stage"
install -m 0755 "$binary" "$stage/probermesh"
strip --strip-unneeded "$stage/probermesh"
install -m 0755 scripts/install-agent.sh "$stage/install-agent.sh"
install -m 0644 README.md "$stage/README.md"
install -D -m 0644 docs/operations.md "$stage/docs/operations.md"
install -D -m 0644 -t "$stage/systemd" packaging/systemd/probermesh-server.service packaging/systemd/probermesh-agent.service
install -D -m 0644 -t "$stage/systemd/probermesh-agent.service.d" packaging/systemd/probermesh-agent.service.d/self-upgrade.conf
install -D -m 0644 -t "$stage/supervisor" packaging/supervisor/probermesh-agent.conf
install -D -m 0644 -t "$stage/grafana" packaging/grafana/*.json
install -D -m 0644 -t "$stage/prometheus" packaging/prometheus/alerts.yml
(cd "$stage" && find . -type f ! -name SHA256SUMS | sort | xargs sha256sum > SHA256SUMS)
tarball="$out/$name.tar.gz"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@${SOURCE_DATE_EPOCH:-0}" \
  -C "$out/stage" -czf "$tarball" "$name"
(cd "$out" && sha256sum "$name.tar.gz" > "$name.tar.gz.sha256")
echo "$tarball"

#!/usr/bin/env bash
# Builds the Debian package of ProberMesh with dpkg-deb from a staging tree: the binary
# (stripped), the systemd units, the default configuration under /etc (conffiles), the
# maintainer scripts (system user, generated token; CAP_NET_RAW comes from the agent unit),
# the dashboards, the alert
# rules and the docs. dpkg-deb --root-owner-group is Debian's own tool; cargo-deb would build
# the same tree but takes minutes to compile in CI.
#
#   scripts/build-deb.sh [--binary PATH] [--version V] [--out DIR] [--fast]
#
# Defaults: target/release/probermesh (else target/debug/probermesh), the binary's own
# `probermesh version`, target/deb; xz -6, or xz -1 with --fast (CI). Prints the path of the
# .deb.
set -euo pipefail
cd "$(dirname "$0")/.."
binary="" version="" out="target/deb" level=6
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --fast) level=1; shift ;;
    *) echo "usage: $0 [--binary PATH] [--version V] [--out DIR] [--fast]" >&2; exit 64 ;;
  esac
done
if [ -z "$binary" ]; then
  for candidate in "${CARGO_TARGET_DIR:-target}/release/probermesh" "${CARGO_TARGET_DIR:-target}/debug/probermesh"; do
    if [ -x "$candidate" ]; then binary="$candidate"; break; fi
  done
fi
[ -x "$binary" ] || { echo "no probermesh binary (build it, or pass --binary)" >&2; exit 1; }
if [ -z "$version" ]; then
  version="$("$binary" version | awk '{print $2}')"
fi
arch="$(dpkg --print-architecture)"
stage="$out/stage/probermesh_${version}_${arch}"
rm -rf "$stage"
install -d "$stage/DEBIAN"
install -D -m 0755 "$binary" "$stage/usr/bin/probermesh"
strip --strip-unneeded "$stage/usr/bin/probermesh"
install -D -m 0644 packaging/systemd/probermesh-server.service "$stage/lib/systemd/system/probermesh-server.service"
install -D -m 0644 packaging/systemd/probermesh-agent.service "$stage/lib/systemd/system/probermesh-agent.service"
install -D -m 0644 packaging/debian/probe.yaml "$stage/etc/probermesh/probe.yaml"
install -D -m 0644 packaging/debian/default-server "$stage/etc/default/probermesh-server"
install -D -m 0644 packaging/debian/default-agent "$stage/etc/default/probermesh-agent"
doc="$stage/usr/share/doc/probermesh"
install -D -m 0644 README.md "$doc/README.md"
install -D -m 0644 docs/operations.md "$doc/operations.md"
install -D -m 0644 packaging/systemd/probermesh-agent.service.d/self-upgrade.conf "$doc/examples/self-upgrade.conf"
install -D -m 0644 packaging/supervisor/probermesh-agent.conf "$doc/examples/supervisor-probermesh-agent.conf"
printf 'ProberMesh\nLicense: Apache-2.0 (see /usr/share/common-licenses/Apache-2.0)\n' > "$doc/copyright"
chmod 0644 "$doc/copyright"
share="$stage/usr/share/probermesh"
for f in packaging/grafana/*.json; do install -D -m 0644 "$f" "$share/grafana/$(basename "$f")"; done
install -D -m 0644 packaging/prometheus/alerts.yml "$share/prometheus/alerts.yml"
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$stage/DEBIAN/"
printf '%s\n' /etc/probermesh/probe.yaml /etc/default/probermesh-server /etc/default/probermesh-agent > "$stage/DEBIAN/conffiles"
size="$(du -sk --exclude=DEBIAN "$stage" | cut -f1)"
cat > "$stage/DEBIAN/control" <<CONTROL
Package: probermesh
Version: $version
Architecture: $arch
Maintainer: ProberMesh maintainers <probermesh@localhost>
Installed-Size: $size
Depends: libc6 (>= 2.34), passwd
Section: net
Priority: optional
Homepage: https://github.com/probermesh/probermesh
Description: network mesh prober (ICMP region to region, HTTP region to URL)
 Agents in many regions ping each other and probe URLs; one server pools what every
 agent of a region saw and serves it to Prometheus (the metric names of the Go
 ProberMesh). Ships hardened systemd units for the server and the agent, Grafana
 dashboards and Prometheus alert rules (/usr/share/probermesh).
CONTROL
deb="$out/probermesh_${version}_${arch}.deb"
dpkg-deb --build --root-owner-group -Zxz -z"$level" "$stage" "$deb" >/dev/null
echo "$deb"

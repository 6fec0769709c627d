#!/usr/bin/env bash
# One-command agent install, the successor of the Go `probermesh_agent_deploy.sh <region>`:
# installs the binary, the system user probermesh, the token, the agent's settings and its
# service (systemd when it runs, else supervisord), then starts it.
#
#   scripts/install-agent.sh --region R --server HOST:PORT --token-file F --fingerprint FP
#       [--binary PATH] [--init systemd|supervisor] [--upgrade] [--root DIR]
#
#   --binary   the probermesh binary to install (default: ./probermesh beside this script, as in
#              the release bundle, else `probermesh` on PATH)
#   --init     the service manager (default: systemd if it runs, else supervisor; supervisor is
#              installed with apt-get when missing)
#   --upgrade  let the server upgrade the agent (-agent.upgrade): systemd gets the
#              self-upgrade drop-in; under supervisor the agent always runs from a copy it
#              may replace
#   --root     install into DIR instead of / and start nothing (how CI tests this script)
#
# systemd: /usr/local/bin/probermesh, /etc/systemd/system/probermesh-agent.service (the
# hardened unit of packaging/systemd: CAP_NET_RAW only, the token as a credential),
# /etc/default/probermesh-agent. supervisor: /var/lib/probermesh-agent/bin/probermesh,
# /etc/supervisor/conf.d/probermesh-agent.conf, and net.ipv4.ping_group_range for the
# probermesh group (/etc/sysctl.d/60-probermesh-ping.conf) since supervisord cannot grant
# capabilities. Both: /etc/probermesh/token (0600 root for systemd; 0640 root:probermesh for
# supervisor).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
usage() {
  sed -n '5,8p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 64
}
die() { echo "install-agent: $*" >&2; exit 1; }
# A packaging file: from the source tree (scripts/../packaging/), else from the release bundle
# (beside this script).
kit() { if [ -f "$here/../packaging/$1" ]; then echo "$here/../packaging/$1"; else echo "$here/$1"; fi; }

region="" server="" token_file="" fingerprint="" root="" binary="" init="" upgrade=0
while [ $# -gt 0 ]; do
  case "$1" in
    --region) region="${2-}"; shift 2 ;;
    --server) server="${2-}"; shift 2 ;;
    --token-file) token_file="${2-}"; shift 2 ;;
    --fingerprint) fingerprint="${2-}"; shift 2 ;;
    --root) root="${2-}"; shift 2 ;;
    --binary) binary="${2-}"; shift 2 ;;
    --init) init="${2-}"; shift 2 ;;
    --upgrade) upgrade=1; shift ;;
    -h|--help) usage ;;
    *) echo "install-agent: unknown option $1" >&2; usage ;;
  esac
done
[ -n "$region" ] && [ -n "$server" ] && [ -n "$token_file" ] && [ -n "$fingerprint" ] || usage
[[ "$region" =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$ ]] || die "--region $region: letters, digits, '.', '_' and '-' only"
host_port='^[][A-Za-z0-9.:_-]+:[0-9]{1,5}$'
[[ "$server" =~ $host_port ]] || die "--server $server: HOST:PORT"
hex="${fingerprint//:/}"
[[ "$hex" =~ ^[0-9A-Fa-f]{64}$ ]] || die "--fingerprint: the server certificate's SHA-256 (64 hex digits, colons optional)"
[ -f "$token_file" ] && [ -s "$token_file" ] || die "--token-file $token_file: not a non-empty file"
if [ -z "$binary" ]; then
  if [ -x "$here/probermesh" ]; then binary="$here/probermesh"; else binary="$(command -v probermesh || true)"; fi
fi
[ -n "$binary" ] && [ -x "$binary" ] || die "no probermesh binary: pass --binary PATH"
version="$("$binary" version)" || die "$binary does not run"
[ "$(id -u)" = 0 ] || [ -n "$root" ] || die "run as root (or with --root DIR)"
if [ -n "$root" ]; then
  mkdir -p "$root"
  root="$(cd "$root" && pwd)"
fi
if [ -z "$init" ]; then
  if [ -z "$root" ] && [ -d /run/systemd/system ]; then init=systemd
  elif [ -n "$root" ]; then init=systemd
  else init=supervisor; fi
fi
case "$init" in systemd|supervisor) ;; *) die "--init $init: systemd or supervisor" ;; esac
R="$root"

# The system user (useradd --prefix writes DIR/etc/passwd without chrooting).
prefix=()
if [ -n "$R" ]; then
  install -d -m 0755 "$R/etc"
  for f in passwd group; do [ -e "$R/etc/$f" ] || : > "$R/etc/$f"; done
  for f in shadow gshadow; do [ -e "$R/etc/$f" ] || install -m 0640 /dev/null "$R/etc/$f"; done
  prefix=(--prefix "$R")
fi
if ! grep -q '^probermesh:' "$R/etc/group" 2>/dev/null; then
  groupadd "${prefix[@]}" --system probermesh
fi
if ! grep -q '^probermesh:' "$R/etc/passwd" 2>/dev/null; then
  useradd "${prefix[@]}" --system --gid probermesh --home-dir /var/lib/probermesh-agent \
    --no-create-home --shell /usr/sbin/nologin --comment "ProberMesh agent" probermesh
fi
uid="$(awk -F: '$1 == "probermesh" {print $3}' "$R/etc/passwd")"
gid="$(awk -F: '$1 == "probermesh" {print $3}' "$R/etc/group")"
[ -n "$uid" ] && [ -n "$gid" ] || die "the user probermesh was not created"

# The token: root-only for systemd (handed over as a credential), group-readable otherwise.
install -d -m 0755 "$R/etc/probermesh"
if [ "$init" = systemd ]; then
  install -m 0600 -o 0 -g 0 "$token_file" "$R/etc/probermesh/token"
else
  install -m 0640 -o 0 -g "$gid" "$token_file" "$R/etc/probermesh/token"
fi
args="--region $region --rpc-report-addr $server --tls-server-fingerprint $fingerprint"

if [ "$init" = systemd ]; then
  install -D -m 0755 "$binary" "$R/usr/local/bin/probermesh"
  install -d -m 0755 "$R/etc/systemd/system" "$R/etc/default"
  sed 's#/usr/bin/probermesh#/usr/local/bin/probermesh#g' "$(kit systemd/probermesh-agent.service)" \
    > "$R/etc/systemd/system/probermesh-agent.service"
  chmod 0644 "$R/etc/systemd/system/probermesh-agent.service"
  if [ "$upgrade" = 1 ]; then
    dropin_src="$(kit systemd/probermesh-agent.service.d/self-upgrade.conf)"
    install -d -m 0755 "$R/etc/systemd/system/probermesh-agent.service.d"
    sed 's#/usr/bin/probermesh#/usr/local/bin/probermesh#g' "$dropin_src" \
      > "$R/etc/systemd/system/probermesh-agent.service.d/self-upgrade.conf"
    chmod 0644 "$R/etc/systemd/system/probermesh-agent.service.d/self-upgrade.conf"
  fi
  printf '# Written by install-agent.sh (%s).\nPROBERMESH_AGENT_ARGS="%s"\n' "$version" "$args" \
    > "$R/etc/default/probermesh-agent"
  chmod 0644 "$R/etc/default/probermesh-agent"
  if [ -z "$R" ]; then
    systemctl daemon-reload
    systemctl enable probermesh-agent.service
    systemctl restart probermesh-agent.service
    systemctl --no-pager status probermesh-agent.service | head -n 5
  fi
else
  if [ -z "$R" ] && ! command -v supervisord >/dev/null; then
    command -v apt-get >/dev/null || die "neither systemd nor supervisord here, and no apt-get to install supervisor"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq supervisor >/dev/null
  fi
  install -d -m 0700 -o "$uid" -g "$gid" "$R/var/lib/probermesh-agent"
  install -d -m 0755 -o "$uid" -g "$gid" "$R/var/lib/probermesh-agent/bin"
  install -m 0755 -o "$uid" -g "$gid" "$binary" "$R/var/lib/probermesh-agent/bin/probermesh"
  install -d -m 0750 -o "$uid" -g "$gid" "$R/var/log/probermesh"
  install -d -m 0755 "$R/etc/supervisor/conf.d" "$R/etc/sysctl.d"
  program_src="$(kit supervisor/probermesh-agent.conf)"
  upgrade_flags="--upgrade --upgrade-restart exit"
  [ "$upgrade" = 1 ] || upgrade_flags=""
  sed -e "s#--region REGION --rpc-report-addr SERVER --tls-server-fingerprint FINGERPRINT#$args#" \
      -e "s# --upgrade --upgrade-restart exit#${upgrade_flags:+ $upgrade_flags}#" \
      "$program_src" > "$R/etc/supervisor/conf.d/probermesh-agent.conf"
  chmod 0644 "$R/etc/supervisor/conf.d/probermesh-agent.conf"
  printf '# Written by install-agent.sh: unprivileged ICMP (ping) sockets for the probermesh group.\nnet.ipv4.ping_group_range = %s %s\n' "$gid" "$gid" \
    > "$R/etc/sysctl.d/60-probermesh-ping.conf"
  if [ -z "$R" ]; then
    sysctl -q -w net.ipv4.ping_group_range="$gid $gid"
    if supervisorctl status >/dev/null 2>&1 || [ $? -eq 3 ]; then
      supervisorctl reread && supervisorctl update
    else
      (systemctl start supervisor 2>/dev/null || service supervisor start 2>/dev/null || supervisord -c /etc/supervisor/supervisord.conf)
    fi
    supervisorctl status probermesh-agent || true
  fi
fi
echo "install-agent: $version installed for region $region under $init${R:+ in $R (not started)}"

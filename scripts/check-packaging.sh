#!/usr/bin/env bash
# Checks the operations kit (packaging/, docs/operations.md) with the real tools; called by
# scripts/test.sh after the tests (which build target/debug/probermesh; this packages that
# binary, stripped). Needs root (dpkg -i, useradd, setpriv) and the Debian packages of
# scripts/test-packages.sh (prometheus, systemd, supervisor, python3-venv, openssl, curl).
#
#   grafana     generate.py --check: the committed dashboards are what the generator makes
#               (their queries run against a live mesh in bins/probermesh/tests/dashboards.rs)
#   prometheus  promtool check rules and test rules; every alert has a unit test
#   flags       every command line of the kit parses with the binary's own flags
#   systemd     systemd-analyze verify (no output allowed) of the units, the agent with and
#               without the self-upgrade drop-in; systemd-analyze security exposure <= 2.5;
#               the required hardening settings
#   install     install-agent.sh into temporary roots (systemd with --upgrade, supervisor):
#               the files, the user, the secrets' modes; the unit it wrote passes verify; bad
#               arguments are refused
#   supervisor  a real supervisord runs the program install-agent.sh wrote: the agent
#               reaches a server on loopback, is restarted when killed (autorestart, which
#               --upgrade-restart exit relies on)
#   deb         build the .deb, dpkg -i: files, modes, user, token, capability, version,
#               verify of the installed units, the installed server and agent run as the
#               unprivileged user with only CAP_NET_RAW and measure ICMP; dpkg -r, dpkg
#               --purge: nothing left
#   release     the .tar.gz bundle: checksums, the binary runs, its install-agent.sh works
#   kubernetes  kubernetes-validate --strict (pinned, in a venv under target/) of the manifests
#   docker      the Dockerfile's structure (multi-stage, non-root, NET_RAW); no image is built
#
# Network traffic stays on loopback. Everything it creates is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
target="${CARGO_TARGET_DIR:-$repo/target}"
bin="$target/debug/probermesh"
work="$target/check-packaging"
step() { printf '\n--- %s (%ss)\n' "$*" "$SECONDS"; }
fail() { echo "check-packaging: FAILED: $*" >&2; exit 1; }
pids=()
ddir=""
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if dpkg -s probermesh >/dev/null 2>&1 && [ -e "$work/.deb-installed-by-us" ]; then
    dpkg --purge probermesh >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
  if [ -n "$ddir" ]; then rm -rf "$ddir"; fi
}
trap cleanup EXIT

[ "$(id -u)" = 0 ] || fail "run as root (dpkg -i, useradd, setpriv), as CI does"
if [ ! -x "$bin" ]; then
  cargo build --locked -p probermesh
fi
rm -rf "$work"
mkdir -p "$work"
chmod 0755 "$work"
stripped="$work/probermesh"
strip --strip-unneeded -o "$stripped" "$bin"
version="$("$stripped" version | awk '{print $2}')"
[ -n "$version" ] || fail "probermesh version printed nothing"

# A Python venv with the pinned kubernetes-validate (and PyYAML for check-flags.py).
venv="$target/packaging-venv"
if ! "$venv/bin/kubernetes-validate" --version 2>/dev/null | grep >/dev/null '1.37.0'; then
  step "venv (kubernetes-validate from PyPI)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r packaging/kubernetes/requirements.txt
fi

step "grafana: the committed dashboards are generate.py's output"
python3 packaging/grafana/generate.py --check

step "prometheus: promtool check rules, test rules"
promtool check rules packaging/prometheus/alerts.yml
(cd packaging/prometheus && promtool test rules alerts_test.yml)
for alert in $(sed -n 's/^ *- alert: *//p' packaging/prometheus/alerts.yml); do
  grep -q "alertname: $alert\$" packaging/prometheus/alerts_test.yml || fail "alert $alert has no unit test"
done

step "flags: every command line of the kit parses with the binary's flags"
"$venv/bin/python" scripts/check-flags.py "$stripped"

# A root for systemd-analyze --root: the host's units (sysinit.target, ...) and the programs
# the units run, so verify checks our units and nothing else.
verify_root() {
  local root="$1"
  mkdir -p "$root/usr/lib/systemd" "$root/bin" "$root/usr/bin" "$root/etc/systemd/system"
  [ -d "$root/usr/lib/systemd/system" ] || cp -a /lib/systemd/system "$root/usr/lib/systemd/"
  cp /bin/sh /bin/kill "$root/bin/"
  cp /usr/bin/install "$root/usr/bin/"
}
# systemd-analyze verify prints problems and often still exits 0: any output fails.
verify() {
  local root="$1"; shift
  local out
  out="$(systemd-analyze verify --man=no --root="$root" "$@" 2>&1)" || fail "systemd-analyze verify $*: $out"
  [ -z "$out" ] || fail "systemd-analyze verify $*: $out"
}

step "systemd: verify, security, hardening"
root="$work/systemd-root"
verify_root "$root"
install -D -m 0755 "$stripped" "$root/usr/bin/probermesh"
install -D -m 0755 "$stripped" "$root/var/lib/probermesh-agent/bin/probermesh"
cp packaging/systemd/probermesh-server.service packaging/systemd/probermesh-agent.service "$root/etc/systemd/system/"
verify "$root" probermesh-server.service probermesh-agent.service
for unit in probermesh-server probermesh-agent; do
  systemd-analyze security --offline=yes --root="$root" --threshold=25 "$unit.service" >/dev/null \
    || fail "$unit.service: systemd-analyze security exposure above 2.5"
done
server_unit=packaging/systemd/probermesh-server.service
agent_unit=packaging/systemd/probermesh-agent.service
for unit in "$server_unit" "$agent_unit"; do
  for line in User=probermesh NoNewPrivileges=yes ProtectSystem=strict Restart=always \
    'LoadCredential=token:/etc/probermesh/token' StateDirectoryMode=0700; do
    grep -qx "$line" "$unit" || fail "$unit lacks $line"
  done
  grep -q '^StateDirectory=' "$unit" || fail "$unit lacks StateDirectory="
  grep -q -- '--auth-token-file %d/token' "$unit" || fail "$unit does not read the token from its credential"
done
grep -qx 'AmbientCapabilities=CAP_NET_RAW' "$agent_unit" || fail "the agent lacks AmbientCapabilities=CAP_NET_RAW"
grep -qx 'CapabilityBoundingSet=CAP_NET_RAW' "$agent_unit" || fail "the agent's bounding set is not CAP_NET_RAW alone"
grep -qx 'CapabilityBoundingSet=' "$server_unit" || fail "the server keeps capabilities"
grep -qx 'AmbientCapabilities=' "$server_unit" || fail "the server has ambient capabilities"
mkdir -p "$root/etc/systemd/system/probermesh-agent.service.d"
cp packaging/systemd/probermesh-agent.service.d/self-upgrade.conf "$root/etc/systemd/system/probermesh-agent.service.d/"
verify "$root" probermesh-agent.service
systemd-analyze cat-config --root="$root" systemd/system/probermesh-agent.service 2>/dev/null | grep >/dev/null -- '--upgrade-restart exit' \
  || fail "the self-upgrade drop-in is not applied"

step "install: install-agent.sh into temporary roots"
fingerprint="AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89"
printf 'install-token-0123456789abcdef\n' > "$work/token"
chmod 0600 "$work/token"
root="$work/install-systemd"
bash scripts/install-agent.sh --region eu-west --server 10.0.0.1:6000 --token-file "$work/token" \
  --fingerprint "$fingerprint" --binary "$stripped" --upgrade --root "$root"
[ "$("$root/usr/local/bin/probermesh" version)" = "probermesh $version" ] || fail "installed binary"
grep -q '^probermesh:x:[0-9]*:[0-9]*:[^:]*:/var/lib/probermesh-agent:/usr/sbin/nologin$' "$root/etc/passwd" \
  || fail "no system user probermesh in $root/etc/passwd: $(cat "$root/etc/passwd")"
[ "$(stat -c '%a %u' "$root/etc/probermesh/token")" = "600 0" ] || fail "the token must be 0600 root"
cmp -s "$work/token" "$root/etc/probermesh/token" || fail "the token was not copied"
grep -qx "PROBERMESH_AGENT_ARGS=\"--region eu-west --rpc-report-addr 10.0.0.1:6000 --tls-server-fingerprint $fingerprint\"" \
  "$root/etc/default/probermesh-agent" || fail "the agent's settings: $(cat "$root/etc/default/probermesh-agent")"
grep -q 'ExecStart=/usr/local/bin/probermesh agent' "$root/etc/systemd/system/probermesh-agent.service" || fail "the unit's binary path"
[ -f "$root/etc/systemd/system/probermesh-agent.service.d/self-upgrade.conf" ] || fail "--upgrade wrote no drop-in"
verify_root "$root"
install -D -m 0755 "$stripped" "$root/var/lib/probermesh-agent/bin/probermesh"
verify "$root" probermesh-agent.service
# Bad arguments are refused, and nothing is written.
for bad in "--region eu/west" "--fingerprint 1234" "--server nohost" "--token-file /nonexistent"; do
  set -- --region eu --server 10.0.0.1:6000 --token-file "$work/token" --fingerprint "$fingerprint" --binary "$stripped" --root "$work/install-bad"
  # shellcheck disable=SC2086
  if bash scripts/install-agent.sh "$@" $bad 2>/dev/null; then fail "install-agent.sh accepted $bad"; fi
done
[ ! -e "$work/install-bad/etc/probermesh" ] || fail "a refused install wrote files"

step "supervisor: a real supervisord runs the installed program"
# A server on loopback for the agent to reach.
sdir="$work/server"
mkdir -p "$sdir"
cp "$work/token" "$sdir/token"
free_port() { python3 -c 'import socket,sys; s=socket.socket(socket.AF_INET, getattr(socket, sys.argv[1])); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' "$1"; }
link_port="$(free_port SOCK_DGRAM)"
http_port="$(free_port SOCK_STREAM)"
"$stripped" server --rpc-listen-addr "127.0.0.1:$link_port" --http-listen-addr "127.0.0.1:$http_port" \
  --aggregation-interval 2s --data-dir "$sdir/data" --auth-token-file "$sdir/token" 2> "$sdir/server.log" &
server_pid=$!
pids+=("$server_pid")
wait_until() { # seconds, description, command...
  local deadline=$((SECONDS + $1)) what="$2"; shift 2
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || fail "timed out waiting for $what"
    sleep 0.5
  done
}
wait_until 20 "the server's certificate" test -s "$sdir/data/server-cert.pem"
server_fp="$(openssl x509 -in "$sdir/data/server-cert.pem" -noout -fingerprint -sha256 | cut -d= -f2)"
metrics() { curl -s --max-time 2 "http://127.0.0.1:$http_port/metrics" || true; }
root="$work/install-supervisor"
bash scripts/install-agent.sh --init supervisor --region sv-test --server "127.0.0.1:$link_port" \
  --token-file "$work/token" --fingerprint "$server_fp" --binary "$stripped" --upgrade --root "$root"
program="$root/etc/supervisor/conf.d/probermesh-agent.conf"
uid="$(awk -F: '$1 == "probermesh" {print $3}' "$root/etc/passwd")"
gid="$(awk -F: '$1 == "probermesh" {print $3}' "$root/etc/group")"
[ "$(stat -c '%a %u' "$root/var/lib/probermesh-agent/bin/probermesh")" = "755 $uid" ] \
  || fail "the supervised binary must belong to probermesh (self-upgrade replaces it)"
[ "$(stat -c '%a %u' "$root/var/lib/probermesh-agent")" = "700 $uid" ] || fail "the agent's directory"
[ "$(stat -c '%a %u %g' "$root/etc/probermesh/token")" = "640 0 $gid" ] || fail "the token must be 0640 root:probermesh"
grep -qx "net.ipv4.ping_group_range = $gid $gid" "$root/etc/sysctl.d/60-probermesh-ping.conf" || fail "the ping sysctl"
grep -q -- "--region sv-test --rpc-report-addr 127.0.0.1:$link_port --tls-server-fingerprint $server_fp --auth-token-file /etc/probermesh/token --upgrade --upgrade-restart exit" "$program" \
  || fail "the program's command: $(grep command= "$program")"
# Run it as written, with the paths moved into the temporary root and as root (the user
# probermesh exists only in that root); the agent reports 127.0.0.77.
sed -e "s#/var/lib/probermesh-agent#$root/var/lib/probermesh-agent#g" -e "s#/etc/probermesh#$root/etc/probermesh#g" \
    -e "s#/var/log/probermesh#$root/var/log/probermesh#g" -e '/^user=/d' \
    -e 's#--upgrade-restart exit#--upgrade-restart exit --ip 127.0.0.77#' "$program" > "$work/program.conf"
cat > "$work/supervisord.conf" <<EOF
[unix_http_server]
file=$work/supervisor.sock
[supervisord]
logfile=$work/supervisord.log
pidfile=$work/supervisord.pid
childlogdir=$work
nodaemon=true
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[supervisorctl]
serverurl=unix://$work/supervisor.sock
[include]
files = $work/program.conf
EOF
supervisord -c "$work/supervisord.conf" &
pids+=($!)
ctl() { supervisorctl -c "$work/supervisord.conf" "$@"; }
running() { ctl status probermesh-agent 2>/dev/null | grep >/dev/null RUNNING; }
wait_until 30 "supervisord to run the agent" running
alive() { metrics | grep >/dev/null 'prober_agent_is_alive{ip="127.0.0.77",region="sv-test",version="'"$version"'"} 1'; }
wait_until 30 "the supervised agent in the server's /metrics" alive
first_pid="$(ctl pid probermesh-agent)"
kill -9 "$first_pid"
restarted() { local p; p="$(ctl pid probermesh-agent 2>/dev/null)"; [ -n "$p" ] && [ "$p" != 0 ] && [ "$p" != "$first_pid" ] && running; }
wait_until 30 "supervisord to restart the killed agent" restarted
ctl shutdown >/dev/null
kill "$server_pid"

step "deb: build, dpkg -i, check, run, dpkg -r, dpkg --purge"
# This step installs and purges the package on this machine: it must not destroy a real
# installation (purging removes the token, the server's certificate agents pin, its data and
# the probermesh user). Refused unless the machine has none, or PROBERMESH_CHECK_PURGE=1 says
# whoever runs it accepts that.
if [ "${PROBERMESH_CHECK_PURGE:-0}" != 1 ]; then
  for existing in /etc/probermesh /var/lib/probermesh-server /var/lib/probermesh-agent; do
    [ ! -e "$existing" ] || fail "$existing exists: this step would purge a real installation (set PROBERMESH_CHECK_PURGE=1 to allow it)"
  done
  ! dpkg -s probermesh >/dev/null 2>&1 || fail "a probermesh package is installed: this step would purge it (set PROBERMESH_CHECK_PURGE=1 to allow it)"
  ! getent passwd probermesh >/dev/null || fail "a probermesh user exists: this step would delete it (set PROBERMESH_CHECK_PURGE=1 to allow it)"
elif dpkg -s probermesh >/dev/null 2>&1; then
  echo "a probermesh package is installed: purging it first (PROBERMESH_CHECK_PURGE=1)"
  dpkg --purge probermesh >/dev/null
fi
leftovers() {
  find /etc /usr /lib /var/lib /var/log -name '*probermesh*' -not -path "$target/*" 2>/dev/null | sort
  getent passwd probermesh || true
  getent group probermesh || true
}
before="$(leftovers)"
deb="$(bash scripts/build-deb.sh --fast --binary "$bin" --out "$work/deb")"
dpkg-deb --field "$deb" Package | grep -x probermesh >/dev/null || fail "control file"
contents="$(dpkg-deb --contents "$deb")"
for f in ./usr/bin/probermesh ./lib/systemd/system/probermesh-server.service ./lib/systemd/system/probermesh-agent.service \
  ./etc/probermesh/probe.yaml ./etc/default/probermesh-server ./etc/default/probermesh-agent \
  ./usr/share/probermesh/grafana/probermesh-icmp.json ./usr/share/probermesh/prometheus/alerts.yml \
  ./usr/share/doc/probermesh/examples/self-upgrade.conf; do
  grep -q " $f\$" <<<"$contents" || fail "the package lacks $f"
done
if grep -v ' root/root ' <<<"$contents" | grep >/dev/null .; then fail "files not owned by root: $contents"; fi
touch "$work/.deb-installed-by-us"
dpkg -i "$deb" >/dev/null
[ "$(dpkg-query -W -f='${Status} ${Version}' probermesh)" = "install ok installed $version" ] || fail "dpkg status"
[ "$(/usr/bin/probermesh version)" = "probermesh $version" ] || fail "the installed probermesh version"
[ "$(stat -c '%a %U' /usr/bin/probermesh)" = "755 root" ] || fail "the binary's mode"
# No file capability: it would make the server's unit (empty bounding set) fail to execute it.
[ -z "$(getcap /usr/bin/probermesh)" ] || fail "/usr/bin/probermesh carries a file capability: $(getcap /usr/bin/probermesh)"
getent passwd probermesh | grep >/dev/null ':/usr/sbin/nologin$' || fail "no system user probermesh"
[ "$(getent passwd probermesh | cut -d: -f3)" -lt 1000 ] || fail "probermesh is not a system user"
[ "$(stat -c '%a %U' /etc/probermesh/token)" = "600 root" ] || fail "the generated token's mode"
[ "$(wc -c < /etc/probermesh/token)" -ge 64 ] || fail "the generated token is short"
dpkg-query -W -f='${Conffiles}\n' probermesh | grep >/dev/null /etc/default/probermesh-agent || fail "conffiles"
/usr/bin/probermesh check-probe-file /etc/probermesh/probe.yaml >/dev/null || fail "the default probe file"
out="$(systemd-analyze verify --man=no /lib/systemd/system/probermesh-server.service /lib/systemd/system/probermesh-agent.service 2>&1)" \
  || fail "verify of the installed units: $out"
[ -z "$out" ] || fail "verify of the installed units: $out"
# The installed server and agent as their units run them: the user probermesh with
# no_new_privs, the server with an empty bounding set, the agent with CAP_NET_RAW alone
# (ambient, as AmbientCapabilities= gives it); the agent must measure ICMP.
ddir="$(mktemp -d /tmp/probermesh-deb-run.XXXXXX)"
chown probermesh:probermesh "$ddir"
install -d -o probermesh -g probermesh -m 0700 "$ddir/state"
install -m 0400 -o probermesh -g probermesh /etc/probermesh/token "$ddir/token"
link_port="$(free_port SOCK_DGRAM)"
http_port="$(free_port SOCK_STREAM)"
printf 'prober_configs:\n  - prober_type: icmp\n    region: loop\n    targets: [127.0.0.1]\n' > "$ddir/probe.yaml"
chmod 0644 "$ddir/probe.yaml"
setpriv --reuid=probermesh --regid=probermesh --init-groups --no-new-privs --bounding-set=-all --inh-caps=-all \
  /usr/bin/probermesh server --data-dir "$ddir/state" --auth-token-file "$ddir/token" --probe-file "$ddir/probe.yaml" \
  --rpc-listen-addr "127.0.0.1:$link_port" --http-listen-addr "127.0.0.1:$http_port" --aggregation-interval 2s \
  2> "$ddir/server.log" &
pids+=($!)
wait_until 20 "the installed server's certificate" test -s "$ddir/state/server-cert.pem"
deb_fp="$(openssl x509 -in "$ddir/state/server-cert.pem" -noout -fingerprint -sha256 | cut -d= -f2)"
setpriv --reuid=probermesh --regid=probermesh --init-groups --no-new-privs --bounding-set=-all,+net_raw \
  --inh-caps=-all,+net_raw --ambient-caps=-all,+net_raw \
  /usr/bin/probermesh agent --auth-token-file "$ddir/token" --region deb-test --ip 127.0.0.78 \
  --rpc-report-addr "127.0.0.1:$link_port" --tls-server-fingerprint "$deb_fp" --probe-interval 2s \
  2> "$ddir/agent.log" &
pids+=($!)
# A successful probe (an echo came back) is what makes the rtt series appear.
measured() { metrics | grep >/dev/null '^prober_icmp_duration_seconds{phase="rtt",source_region="deb-test",target_region="loop"} [0-9]'; }
wait_until 40 "the installed agent's ICMP results (as probermesh with CAP_NET_RAW only)" measured
grep -q 'CapEff:\s*0000000000002000' "/proc/${pids[-1]}/status" || fail "the agent's effective capabilities are not CAP_NET_RAW alone: $(grep Cap "/proc/${pids[-1]}/status")"
kill "${pids[-1]}" "${pids[-2]}"
wait "${pids[-1]}" "${pids[-2]}" 2>/dev/null || true
rm -rf "$ddir"
ddir=""
dpkg -r probermesh >/dev/null
[ ! -e /usr/bin/probermesh ] || fail "dpkg -r left /usr/bin/probermesh"
[ ! -e /lib/systemd/system/probermesh-agent.service ] || fail "dpkg -r left the units"
[ -e /etc/default/probermesh-agent ] || fail "dpkg -r removed a conffile (only --purge should)"
dpkg --purge probermesh >/dev/null
rm -f "$work/.deb-installed-by-us"
after="$(leftovers)"
[ "$before" = "$after" ] || fail "dpkg --purge left: $(diff <(echo "$before") <(echo "$after") || true)"
dpkg -s probermesh >/dev/null 2>&1 && fail "still installed after --purge"

step "release: the .tar.gz bundle"
tarball="$(bash scripts/build-release.sh --binary "$bin" --out "$work/release")"
(cd "$(dirname "$tarball")" && sha256sum -c --quiet "$(basename "$tarball").sha256") || fail "the bundle's .sha256"
mkdir -p "$work/unpacked"
tar -xzf "$tarball" -C "$work/unpacked"
bundle="$work/unpacked/$(basename "$tarball" .tar.gz)"
(cd "$bundle" && sha256sum -c --quiet SHA256SUMS) || fail "the bundle's SHA256SUMS"
[ "$("$bundle/probermesh" version)" = "probermesh $version" ] || fail "the bundle's binary"
for f in install-agent.sh systemd/probermesh-agent.service systemd/probermesh-server.service supervisor/probermesh-agent.conf \
  grafana/probermesh-http.json prometheus/alerts.yml docs/operations.md; do
  [ -f "$bundle/$f" ] || fail "the bundle lacks $f"
done
bash "$bundle/install-agent.sh" --region eu --server 10.0.0.1:6000 --token-file "$work/token" \
  --fingerprint "$fingerprint" --root "$work/install-bundle" >/dev/null
[ -x "$work/install-bundle/usr/local/bin/probermesh" ] && [ -f "$work/install-bundle/etc/systemd/system/probermesh-agent.service" ] \
  || fail "the bundle's install-agent.sh (its own binary and unit)"

step "kubernetes: kubernetes-validate --strict"
"$venv/bin/kubernetes-validate" --strict --quiet packaging/kubernetes/*.yaml
grep -q "topology.kubernetes.io/region" packaging/kubernetes/agent.yaml || fail "the agent's region must come from the node label"
grep -q "spec.nodeName" packaging/kubernetes/agent.yaml || fail "the init step needs the node's name"

step "docker: the Dockerfile's structure (no container runtime here: the image is not built)"
dockerfile=packaging/docker/Dockerfile
[ "$(grep -c '^FROM ' "$dockerfile")" -ge 2 ] || fail "the Dockerfile is not multi-stage"
grep -qx 'USER 10001:10001' "$dockerfile" || fail "the image does not run as a non-root user"
grep -q 'setcap cap_net_raw+ep /usr/bin/probermesh' "$dockerfile" || fail "the image's binary lacks cap_net_raw"

echo
echo "packaging checks passed (${SECONDS}s)"

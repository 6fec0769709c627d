#!/usr/bin/env bash
# The upgrade walk-through of docs/operations.md, recorded from two release binaries: a server
# and three agents on loopback (127.0.0.21-23) run A; a B that exits at start is rolled back by
# the canary and the rollout halts; the real B rolls out (canary, then batches) and completes.
# Usage: scripts/upgrade-walkthrough.sh A B  where A reports 0.1.0 and B 0.2.0, e.g.
#   cargo build --release -p probermesh && cp target/release/probermesh /tmp/pm-a
#   PROBERMESH_VERSION=0.2.0 cargo build --release -p probermesh && cp target/release/probermesh /tmp/pm-b
# Needs root (ICMP), python3 (serves the release files), minisign, curl. Ports 16000, 16001, 18080.
set -u
[ $# -eq 2 ] || { echo "usage: $0 A B (release binaries reporting 0.1.0 and 0.2.0)" >&2; exit 64; }
A=$(realpath "$1"); B=$(realpath "$2")
W=$(mktemp -d /tmp/pm-upgrade-walk.XXXXXX)
trap 'kill ${AG[@]:-} ${SERVER:-} ${FILES:-} 2>/dev/null; sleep 1; pkill -f "$W/" 2>/dev/null; true' EXIT
mkdir -p $W/files $W/data
cd $W
cp "$A" files/probermesh-0.1.0; cp "$B" files/probermesh-0.2.0
printf '#!/bin/sh\n[ "$1" = version ] && { echo "probermesh 0.2.0"; exit 0; }\necho "cannot open /etc/missing.conf" >&2; exit 1\n' > files/probermesh-0.2.0-broken
chmod +x files/*
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > token
export PROBERMESH_TOKEN=$(cat token)
run() { echo "\$ $*"; "$@"; local rc=$?; echo; return $rc; }
# release key (operator's workstation)
minisign -G -W -p release.pub -s release.key >/dev/null
for f in probermesh-0.2.0 probermesh-0.2.0-broken; do minisign -S -W -s release.key -m files/$f >/dev/null; done
python3 -m http.server 18080 --bind 127.0.0.1 --directory files >/dev/null 2>&1 & FILES=$!
./files/probermesh-0.1.0 server --rpc-listen-addr 127.0.0.1:16000 --http-listen-addr 127.0.0.1:16001 \
  --data-dir data --upgrade-pubkey release.pub 2>server.log & SERVER=$!
sleep 2
FP=$(grep -o 'fingerprint=[0-9A-Fa-f:]*' server.log | head -1 | cut -d= -f2)
echo "server fingerprint: $FP"
AG=()
for i in 1 2 3; do
  mkdir -p agent$i; cp files/probermesh-0.1.0 agent$i/probermesh
  ./agent$i/probermesh agent --region r$i --ip 127.0.0.2$i --rpc-report-addr 127.0.0.1:16000 \
    --tls-server-fingerprint "$FP" --probe-interval 5s --upgrade --upgrade-pubkey release.pub 2>agent$i.log & AG+=($!)
done
sleep 8
run curl -s 127.0.0.1:16001/metrics -o metrics.txt; grep '^prober_server_agent_versions' metrics.txt; echo
S=127.0.0.1:16001
run ./files/probermesh-0.1.0 upgrade --server-http-url $S --version 0.2.0 \
  --download-url http://127.0.0.1:18080/probermesh-0.2.0-broken \
  --sha256 $(sha256sum files/probermesh-0.2.0-broken | cut -d' ' -f1) \
  --signature-file files/probermesh-0.2.0-broken.minisig --soak 10s
echo "exit status $?"; echo
run ./files/probermesh-0.1.0 upgrade --server-http-url $S --abort
T0=$(date +%s)
run ./files/probermesh-0.1.0 upgrade --server-http-url $S --version 0.2.0 \
  --download-url http://127.0.0.1:18080/probermesh-0.2.0 \
  --sha256 $(sha256sum files/probermesh-0.2.0 | cut -d' ' -f1) \
  --signature-file files/probermesh-0.2.0.minisig --soak 10s
echo "exit status $? after $(( $(date +%s) - T0 )) s"; echo
run ./files/probermesh-0.1.0 upgrade --server-http-url $S --status
sleep 3
curl -s $S/metrics | grep -E '^prober_server_(agent_versions|upgrade_)' | grep -v ' 0$'; echo
for i in 1 2 3; do echo "\$ agent$i/probermesh version; agent$i/probermesh.prev version"; ./agent$i/probermesh version; ./agent$i/probermesh.prev version; done
echo "(files kept in $W)"

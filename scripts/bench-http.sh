#!/usr/bin/env bash
# HTTP prober benchmark: `probermesh http-probe` against prometheus-blackbox-exporter (its
# `http` prober) on the same local origin, the same number of probes and the same concurrency,
# in the same run. Prints probes per CPU-second for each and the ratio ours / blackbox.
# The origin runs in its own process; only the prober's CPU is counted (for blackbox, the
# exporter process, read from /proc before and after; the curl driving it is not counted).
#
#   bash scripts/bench-http.sh [PROBES] [CONCURRENCY]     # default 4000 and 50
set -euo pipefail
cd "$(dirname "$0")/.."

probes=${1:-4000}
concurrency=${2:-50}
exporter=$(command -v prometheus-blackbox-exporter || true)
[ -n "$exporter" ] || { echo "needs prometheus-blackbox-exporter (apt-get install prometheus-blackbox-exporter)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "needs GNU time (apt-get install time)" >&2; exit 1; }
cargo build --release -q -p probermesh -p probermesh-tests

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

target/release/http_origin > "$work/origin.port" &
pids+=($!)
for _ in $(seq 50); do [ -s "$work/origin.port" ] && break; sleep 0.1; done
url="http://127.0.0.1:$(cat "$work/origin.port")/status/200"

# --- ours
/usr/bin/time -o "$work/ours.time" -f "%U %S" \
  target/release/probermesh http-probe --quiet -n "$probes" --concurrency "$concurrency" "$url" > "$work/ours.out"
ours_cpu=$(tail -n 1 "$work/ours.time" | awk '{ print $1 + $2 }')
ours_failed=$(awk '/probes of/ { print $(NF - 1) }' "$work/ours.out")

# --- blackbox_exporter
cat > "$work/blackbox.yml" <<YAML
modules:
  http_2xx:
    prober: http
    timeout: 10s
    http:
      preferred_ip_protocol: ip4
YAML
port=$((20000 + RANDOM % 20000))
"$exporter" --config.file="$work/blackbox.yml" --web.listen-address="127.0.0.1:$port" > "$work/blackbox.log" 2>&1 &
bb=$!
pids+=("$bb")
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/-/healthy" > /dev/null 2>&1 && break; sleep 0.1; done
probe_url="http://127.0.0.1:$port/probe?module=http_2xx&target=$(printf %s "$url" | sed 's/:/%3A/g; s#/#%2F#g')"
for _ in $(seq "$probes"); do printf 'url = "%s"\noutput = /dev/null\n' "$probe_url"; done > "$work/curl.cfg"
ticks=$(getconf CLK_TCK)
cpu_of() { awk -v t="$ticks" '{ print ($14 + $15) / t }' "/proc/$1/stat"; }
before=$(cpu_of "$bb")
curl -s --parallel --parallel-max "$concurrency" -K "$work/curl.cfg" > /dev/null 2>&1
after=$(cpu_of "$bb")
bb_cpu=$(awk -v a="$after" -v b="$before" 'BEGIN { print a - b }')
# Make sure blackbox really probed successfully (else its CPU would be for failures).
curl -s "$probe_url" | grep -q '^probe_success 1' || { echo "blackbox_exporter probes fail:" >&2; curl -s "$probe_url" >&2; exit 1; }

awk -v n="$probes" -v o="$ours_cpu" -v b="$bb_cpu" -v c="$concurrency" -v f="$ours_failed" 'BEGIN {
  printf "%d probes, %d concurrent, one local origin (full phase breakdown on both sides)\n", n, c
  printf "%-22s %10s %18s\n", "prober", "cpu_s", "probes/cpu_s"
  printf "%-22s %10.3f %18.0f   (failed: %s)\n", "probermesh", o, n / o, f
  printf "%-22s %10.3f %18.0f\n", "blackbox_exporter", b, n / b
  printf "ratio ours/blackbox (probes per CPU-second) = %.2f\n", (n / o) / (n / b)
}'

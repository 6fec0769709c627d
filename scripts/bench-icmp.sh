#!/usr/bin/env bash
# ICMP engine benchmark: `probermesh ping` against fping 5 on the same loopback targets, with
# the same packet count, per-target period, reply timeout and send rate, in the same run.
# Prints, per tool and target count: CPU seconds (user + system) per 1,000 echoes, peak RSS,
# echoes answered, and the ratio ours / fping.  Needs root (raw ICMP), fping and GNU time.
#
#   bash scripts/bench-icmp.sh            # N = 1,000 and 10,000
#   bash scripts/bench-icmp.sh 2000       # other target counts
set -euo pipefail
cd "$(dirname "$0")/.."

command -v fping >/dev/null || { echo "needs fping (apt-get install fping)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "needs GNU time (apt-get install time)" >&2; exit 1; }
cargo build --release -q -p probermesh
bin=target/release/probermesh

counts=("$@")
[ ${#counts[@]} -eq 0 ] && counts=(1000 10000)
packets=5          # echoes per target
period_ms=1000     # between two echoes to one target (fping -p, our -i)
rate_pps=20000     # sends per second over all targets (fping -i 0.05 ms, our --max-pps)
timeout_ms=2000    # per-echo reply timeout (fping -t, our -W)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
trap 'echo "bench-icmp: failed at line $LINENO" >&2' ERR

# N distinct loopback addresses: 127.1.0.1, 127.1.0.2, ...
targets() {
  local n=$1 i
  for ((i = 0; i < n; i++)); do
    echo "127.$((1 + i / 62500)).$(((i / 250) % 250)).$((1 + i % 250))"
  done
}

measure() { # TIME_FILE OUTPUT_FILE COMMAND...: runs it, prints "cpu_seconds peak_rss_kb"
  local times=$1 output=$2; shift 2
  /usr/bin/time -o "$times" -f "%U %S %M" "$@" > "$output" 2>&1
  tail -n 1 "$times" | awk '{ printf "%.3f %d\n", $1 + $2, $3 }'
}

printf '%-7s %-10s %10s %14s %12s %10s\n' N tool echoes "cpu_s/1k_echo" peak_rss_MB answered
for n in "${counts[@]}"; do
  targets "$n" > "$work/targets"
  echoes=$((n * packets))
  read -r fcpu frss < <(measure "$work/t1" "$work/fping.out" fping -q -c "$packets" \
    -p "$period_ms" -i "$(awk -v r="$rate_pps" 'BEGIN { print 1000 / r }')" \
    -t "$timeout_ms" -f "$work/targets")
  read -r ocpu orss < <(measure "$work/t2" "$work/ours.out" "$bin" ping -c "$packets" \
    -i "$period_ms" -W "$timeout_ms" --max-pps "$rate_pps" $(cat "$work/targets"))
  # Both print fping's summary line per target: "T : xmt/rcv/%loss = 5/5/0%, ..."
  answered() { sed -E -n 's#.*xmt/rcv/%loss = [0-9]+/([0-9]+)/.*#\1#p' "$1" | awk '{ s += $1 } END { print s + 0 }'; }
  fgot=$(answered "$work/fping.out"); ogot=$(answered "$work/ours.out")
  per_k() { awk -v c="$1" -v e="$echoes" 'BEGIN { printf "%.4f", c / e * 1000 }'; }
  fk=$(per_k "$fcpu"); ok=$(per_k "$ocpu")
  printf '%-7s %-10s %10d %14s %12.1f %10d\n' "$n" fping "$echoes" "$fk" "$(awk -v k="$frss" 'BEGIN { print k / 1024 }')" "$fgot"
  printf '%-7s %-10s %10d %14s %12.1f %10d\n' "$n" probermesh "$echoes" "$ok" "$(awk -v k="$orss" 'BEGIN { print k / 1024 }')" "$ogot"
  awk -v o="$ocpu" -v f="$fcpu" -v n="$n" 'BEGIN { if (f > 0) printf "%-7s ratio ours/fping CPU = %.2f\n", n, o / f; else printf "%-7s fping used no measurable CPU\n", n }'
done

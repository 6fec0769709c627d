#!/usr/bin/env bash
# The agent as a product (issue 19): a real server and one real agent (release binary) as
# processes on loopback, the agent pinned to the server's generated certificate over QUIC and
# given exactly N ICMP targets (127.1.0.1, 127.1.0.2, ... as in bench-icmp.sh) by the probe
# file, against fping 5 on the same targets with the same echo count, spacing, payload and
# send rate, interleaved round by round in the same run. Two shapes per N: the Go defaults
# (64 echoes 15 ms apart) and 10 echoes 100 ms apart.
#
# Per round: the agent's whole CPU (utime + stime of every thread, plus reaped children, from
# /proc/<pid>/stat) over one probe interval, and the ICMP results the server counted over the
# same interval (prober_server_receive_points{prober_type="icmp"} in its /metrics), times the
# packet count, as the echoes; then the agent is stopped (SIGSTOP) and fping runs once over
# the same targets in its own network namespace (so neither tool's raw socket sees the other's
# packets), its CPU from bash's getrusage (ms resolution) and its echoes and replies from its
# summary; then the agent continues and is left one probe interval + 1 s to settle before the
# next round's window. fping's sequence numbers are 16-bit over all hosts of one run, so it runs
# over slices of the target list, each slice of about as many targets as the agent has probes
# running at once (so per-target spacing and overall send rate both match the agent's), never
# more than 65,000 echoes per slice.
#
# Prints per round and per case: agent µs CPU per echo, fping µs per echo, the ratio, replies,
# the server's mean loss, and the agent's peak RSS (VmHWM). Needs root (raw ICMP, netns),
# fping, openssl, curl, python3. Only loopback traffic; every process it starts is stopped.
#
#   bash scripts/bench-agent-cost.sh               # N = 1,000 and 10,000, both shapes
#   bash scripts/bench-agent-cost.sh 1000          # other target counts
#   ROUNDS=3 SHAPES="10x100" bash scripts/bench-agent-cost.sh 10000
#   STRACE=15 bash scripts/bench-agent-cost.sh 1000  # also strace -c -f the agent for 15 s
#                                                    # in the 10 x 100 ms case, after its rounds
#   PERF=15 bash scripts/bench-agent-cost.sh 1000    # also perf record -g it for 15 s there
#
# Environment: ROUNDS (6), SHAPES ("64x15 10x100": COUNTxPERIOD_MS), RATE (20000: the agent's
# planned plateau send rate; the probe interval is the smallest multiple of 5 s that keeps the
# agent at or under it, with probes starting over 70 % of the interval), STRACE (0: off, else
# seconds), PERF (0: off, else seconds), NO_BUILD (1: use target/release/probermesh as it is), BIN (another binary to measure,
# such as an older build; implies nothing is built).
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in fping openssl curl python3 ip; do
  command -v "$tool" >/dev/null || { echo "bench-agent-cost: needs $tool" >&2; exit 1; }
done
[ "$(id -u)" -eq 0 ] || { echo "bench-agent-cost: needs root (raw ICMP, network namespace)" >&2; exit 1; }
[ "${NO_BUILD:-0}" = 1 ] || [ -n "${BIN:-}" ] || cargo build --release -q -p probermesh
bin=${BIN:-$PWD/target/release/probermesh}

counts=("$@")
[ ${#counts[@]} -eq 0 ] && counts=(1000 10000)
rounds=${ROUNDS:-6}
shapes=${SHAPES:-"64x15 10x100"}
rate=${RATE:-20000}
strace_s=${STRACE:-0}
perf_s=${PERF:-0}
payload=64          # the agent's default ICMP payload (fping -b)
timeout_ms=2000     # fping's reply timeout (the agent's engine waits 2 s per echo too)
token=bench-token-0123456789
work=$(mktemp -d)
netns=pmbench$$
server_pid='' agent_pid=''

stop_pid() { # PID: SIGCONT (it may be stopped), SIGTERM, up to 15 s, then SIGKILL
  local pid=$1 i
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -CONT "$pid" 2>/dev/null || true
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  stop_pid "$agent_pid"; stop_pid "$server_pid"
  ip netns del "$netns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'echo "bench-agent-cost: failed at line $LINENO" >&2' ERR
trap 'exit 130' INT TERM

ip netns add "$netns"
ip netns exec "$netns" ip link set lo up

# N distinct loopback addresses: 127.1.0.1, 127.1.0.2, ... (as bench-icmp.sh)
targets() {
  local n=$1 i
  for ((i = 0; i < n; i++)); do
    echo "127.$((1 + i / 62500)).$(((i / 250) % 250)).$((1 + i % 250))"
  done
}
free_port() { # tcp|udp
  python3 -c "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_STREAM if sys.argv[1]=='tcp' else socket.SOCK_DGRAM); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])" "$1"
}
cpu_ticks() { # PID: utime + stime + cutime + cstime, in clock ticks (fields after the comm)
  sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 + $14 + $15 }'
}
metrics() { curl -sf --max-time 10 "http://127.0.0.1:$http_port/metrics" || true; }
icmp_results() { metrics | awk '/^prober_server_receive_points\{prober_type="icmp"\} / { print $2 + 0; f = 1 } END { if (!f) print 0 }'; }
mean_loss() { metrics | awk '/^prober_icmp_packet_loss_rate\{/ { s += $NF; n++ } END { if (n) printf "%.2f", s / n; else print "n/a" }'; }
vm_kb() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }
wait_until() { # SECONDS WHAT COMMAND...: polls every 0.25 s
  local limit=$1 what=$2 i; shift 2
  for ((i = 0; i < limit * 4; i++)); do "$@" && return 0; sleep 0.25; done
  echo "bench-agent-cost: timed out after ${limit}s waiting for $what" >&2; return 1
}
has_results() { [ "$(icmp_results)" -gt 0 ]; }
hz=$(getconf CLK_TCK)

echo "# $(date -u +%FT%TZ)  $(nproc) cores  load $(cut -d' ' -f1-3 /proc/loadavg)  $(fping --version 2>&1 | head -1)"
echo "# rounds $rounds, planned plateau send rate $rate/s; echoes = server-counted ICMP results x packet count"
summary=()

for n in "${counts[@]}"; do
  targets "$n" > "$work/targets"
  for shape in $shapes; do
    count=${shape%x*} period_ms=${shape#*x}
    # Probe interval: probes start over 70 % of it; keep the agent's plateau rate at most $rate.
    interval_s=$(awk -v n="$n" -v c="$count" -v r="$rate" 'BEGIN { i = n * c / (0.7 * r); i = 5 * int((i + 4.999) / 5); if (i < 5) i = 5; print i }')
    # What the agent then has running at once, and fping's slice: that many targets, <= 65,000 echoes.
    slice=$(awk -v n="$n" -v c="$count" -v p="$period_ms" -v i="$interval_s" 'BEGIN {
      s = n * (c - 1) * p / 1000 / (0.7 * i); m = int(65000 / c); if (s > m) s = m; if (s > n) s = n; if (s < 1) s = 1
      k = int((n + s - 1) / s); print int((n + k - 1) / k) }')
    fping_gap=$(awk -v p="$period_ms" -v s="$slice" 'BEGIN { printf "%.4f", p / s }')
    case_name="N=$n ${count}x${period_ms}ms"
    echo
    echo "## $case_name: probe interval ${interval_s}s; fping over slices of $slice targets, -p $period_ms -i $fping_gap (ms)"

    rm -rf "$work/case"; mkdir -p "$work/case/data" "$work/case/slices"
    split -l "$slice" -d -a 4 "$work/targets" "$work/case/slices/s"
    {
      echo "prober_configs:"
      echo "  - prober_type: icmp"
      echo "    region: bench-targets"
      echo "    icmp:"
      echo "      packet_count: $count"
      echo "      interval: ${period_ms}ms"
      echo "      payload_size: $payload"
      echo "    targets:"
      sed 's/^/      - /' "$work/targets"
    } > "$work/case/probe.yaml"

    http_port=$(free_port tcp) link_port=$(free_port udp)
    PROBERMESH_TOKEN=$token "$bin" server --rpc-listen-addr "127.0.0.1:$link_port" \
      --http-listen-addr "127.0.0.1:$http_port" --aggregation-interval "${interval_s}s" \
      --icmp-discovery static --probe-file "$work/case/probe.yaml" --data-dir "$work/case/data" \
      > "$work/case/server.log" 2>&1 &
    server_pid=$!
    wait_until 30 "the server to be ready" curl -sf --max-time 2 -o /dev/null "http://127.0.0.1:$http_port/-/ready"
    fingerprint=$(openssl x509 -in "$work/case/data/server-cert.pem" -noout -fingerprint -sha256 | cut -d= -f2)
    PROBERMESH_TOKEN=$token "$bin" agent --region bench --ip 127.0.0.11 \
      --rpc-report-addr "127.0.0.1:$link_port" --probe-interval "${interval_s}s" \
      --tls-server-fingerprint "$fingerprint" > "$work/case/agent.log" 2>&1 &
    agent_pid=$!
    wait_until $((interval_s * 3 + 30)) "the agent's first results at the server" has_results
    sleep $((interval_s * 2)) # steady state: the pool, the first rounds, the link warmed up

    printf '%-5s %9s %9s %9s %11s %9s %10s %9s %11s %7s\n' round agent_cpu results echoes agent_us/e \
      fping_cpu f_echoes f_replies fping_us/e ratio
    a_cpu_sum=0 a_echo_sum=0 f_cpu_sum=0 f_echo_sum=0 f_reply_sum=0
    for ((r = 1; r <= rounds; r++)); do
      c0=$(cpu_ticks "$agent_pid") p0=$(icmp_results)
      sleep "$interval_s"
      c1=$(cpu_ticks "$agent_pid") p1=$(icmp_results)
      a_cpu=$(awk -v a="$c0" -v b="$c1" -v hz="$hz" 'BEGIN { printf "%.3f", (b - a) / hz }')
      a_res=$((p1 - p0)) a_echo=$(((p1 - p0) * count))

      kill -STOP "$agent_pid"
      : > "$work/case/fping.out"
      TIMEFORMAT='%3U %3S'
      { time (for s in "$work/case/slices"/s*; do
          ip netns exec "$netns" fping -q -c "$count" -p "$period_ms" -i "$fping_gap" \
            -t "$timeout_ms" -b "$payload" -f "$s" >> "$work/case/fping.out" 2>&1 || true
        done) ; } 2> "$work/case/fping.time"
      kill -CONT "$agent_pid"
      f_cpu=$(awk '{ printf "%.3f", $1 + $2 }' "$work/case/fping.time")
      # fping's summary per target: "T : xmt/rcv/%loss = 64/64/0%, ..."
      read -r f_echo f_reply < <(sed -E -n 's#.*xmt/rcv/%loss = ([0-9]+)/([0-9]+)/.*#\1 \2#p' "$work/case/fping.out" |
        awk '{ x += $1; y += $2 } END { print x + 0, y + 0 }')
      if grep -q -i "sequence" "$work/case/fping.out"; then
        echo "bench-agent-cost: fping ran out of sequence numbers: $(grep -i -m1 sequence "$work/case/fping.out")" >&2
      fi
      read -r a_us f_us ratio < <(awk -v ac="$a_cpu" -v ae="$a_echo" -v fc="$f_cpu" -v fe="$f_echo" 'BEGIN {
        a = ae ? ac / ae * 1e6 : 0; f = fe ? fc / fe * 1e6 : 0
        printf "%.1f %.1f %s\n", a, f, (f > 0 ? sprintf("%.2f", a / f) : "n/a") }')
      printf '%-5s %9s %9d %9d %11s %9s %10d %9d %11s %7s\n' "$r" "$a_cpu" "$a_res" "$a_echo" "$a_us" \
        "$f_cpu" "$f_echo" "$f_reply" "$f_us" "$ratio"
      a_cpu_sum=$(awk -v s="$a_cpu_sum" -v x="$a_cpu" 'BEGIN { print s + x }')
      f_cpu_sum=$(awk -v s="$f_cpu_sum" -v x="$f_cpu" 'BEGIN { print s + x }')
      a_echo_sum=$((a_echo_sum + a_echo)) f_echo_sum=$((f_echo_sum + f_echo)) f_reply_sum=$((f_reply_sum + f_reply))
      sleep $((interval_s + 1)) # the agent settles after the stop before the next window
    done

    loss=$(mean_loss) # before strace, which slows the agent into losses
    if [ "$strace_s" != 0 ] && [ "$count" = 10 ] && [ "$period_ms" = 100 ] && command -v strace >/dev/null; then
      s0=$(icmp_results)
      timeout -s INT "$((strace_s + 5))" strace -c -f -o "$work/case/strace.txt" -p "$agent_pid" > /dev/null 2>&1 &
      strace_pid=$!
      sleep "$strace_s"; kill -INT "$strace_pid" 2>/dev/null || true; wait "$strace_pid" 2>/dev/null || true
      s1=$(icmp_results)
      echo "strace -c -f -p <agent> for ${strace_s}s: the server counted $((s1 - s0)) results ($(((s1 - s0) * count)) echoes) meanwhile"
      grep -E "calls|-----|futex|epoll_wait|epoll_pwait|ppoll|sendto|sendmsg|sendmmsg|recvfrom|recvmsg|recvmmsg|clock_nanosleep|nanosleep| read$| write$|total" "$work/case/strace.txt" || true
    fi
    if [ "$perf_s" != 0 ] && [ "$count" = 10 ] && [ "$period_ms" = 100 ] && command -v perf >/dev/null; then
      perf record -q -F 1999 -g -p "$agent_pid" -o "$work/case/perf.data" -- sleep "$perf_s" > /dev/null 2>&1 || true
      echo "perf record -g -p <agent> for ${perf_s}s, samples by thread and by symbol (self time, >= 2 %):"
      perf report -i "$work/case/perf.data" --no-children --sort comm --stdio 2> /dev/null | grep -E "^ +[0-9]+\.[0-9]+%" | head -8 || true
      perf report -i "$work/case/perf.data" --no-children --sort dso,sym --percent-limit 2 --stdio -g none 2> /dev/null \
        | grep -E "^ +[0-9]+\.[0-9]+%" | head -25 || true
    fi

    peak_kb=$(vm_kb "$agent_pid" VmHWM) rss_kb=$(vm_kb "$agent_pid" VmRSS)
    threads=$(ls "/proc/$agent_pid/task" | wc -l)
    line=$(awk -v ac="$a_cpu_sum" -v ae="$a_echo_sum" -v fc="$f_cpu_sum" -v fe="$f_echo_sum" \
      -v fr="$f_reply_sum" -v pk="$peak_kb" -v name="$case_name" -v loss="$loss" -v th="$threads" 'BEGIN {
      a = ae ? ac / ae * 1e6 : 0; f = fe ? fc / fe * 1e6 : 0
      printf "%-18s agent %6.1f us/echo (%d echoes, server loss %s%%, %d threads)  fping %6.1f us/echo (%d echoes, %d replies)  ratio %s  agent peak RSS %.1f MB",
        name, a, ae, loss, th, f, fe, fr, (f > 0 ? sprintf("%.2f", a / f) : "n/a"), pk / 1024 }')
    echo "$line (now $((rss_kb / 1024)) MB)"
    summary+=("$line")
    stop_pid "$agent_pid"; agent_pid=''
    stop_pid "$server_pid"; server_pid=''
  done
done

echo
echo "# summary ($(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg))"
printf '%s\n' "${summary[@]}"

#!/usr/bin/env bash
# Two or more Tollgate builds side by side with nginx, against a held setup: wall-clock req/s and
# p99 of admitted requests, rounds alternating, to tell whether a change helps.
#
#   HOLD=1 benches/load/run.sh &                   # the upstream, nginx and the seeded store, held
#   benches/load/ab.sh OLD_BIN NEW_BIN [...]
#
# Each BIN runs on its own copy of the seeded embedded store with the load run's settings (one
# worker, metering and per-key metrics on, access log off), pinned to PROXY_CPU [0]; wrk -c CONNS
# [64] on LOAD_CPU [1] for DURATION [8] s per contender per round, ROUNDS [5] rounds, in the order
# nginx, BIN1, BIN2, ... (rotated each round). Prints each contender's median req/s, p99 and CPU
# time per request (nginx: its workers; a BIN: all its threads), the median per-round ratios of
# req/s and p99 to nginx's and the ratio of the CPU medians. OUT [benches/load/out] is the held run's output directory.
# STORE=redis runs each BIN on the held run's Redis instead (the seeded tree under prefix "tg",
# shared by the BINs, which take turns). KEYSET=unknown sends the BINs the seeded unknown keys
# (refusals, 401 from the negative cache) while nginx proxies the admitted ones, as run.sh's
# refused phase. UNPINNED=1 runs everything as an operator would start it: nothing pinned, nginx
# with `worker_processes auto` (its own, started here against the held upstream), each BIN with
# its default thread counts, wrk with -t THREADS [2]; the held upstream and Redis stay on LOAD_CPU.
# CPU_QUOTA=45 caps each contender's processes (nginx's workers; all of a BIN's threads) at that
# percent of one core with a CFS bandwidth limit (a cgroup of its own, period CPU_PERIOD_US [2500]),
# so the proxies, not the load core, set the pace: their req/s ratio is then what each does with
# the same CPU. Needs root and the cgroup cpu controller (v1 or v2).
# BODY='{"domainName":"example.com"}' sends each request as a POST with that JSON body (the key
# still in the x-api-key header; in the body instead where BODY says @KEY@, as in
# BODY='{"apiKey":"@KEY@","domainName":"example.com"}').
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=held.sh
. "$HERE/held.sh"
# shellcheck source=nginx-conf.sh
. "$HERE/nginx-conf.sh"
[ $# -ge 1 ] || { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
OUT=${OUT:-$HERE/out}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-5}
CONNS=${CONNS:-64}
STORE=${STORE:-embedded}
KEYSET=${KEYSET:-admitted}
UNPINNED=${UNPINNED:-0}
THREADS=${THREADS:-2}
CPU_QUOTA=${CPU_QUOTA:-}
CPU_PERIOD_US=${CPU_PERIOD_US:-2500}
case "$STORE" in
  embedded) read_hold ab.sh ;;
  redis) read_hold ab.sh redis ;;
  *) echo "ab.sh: STORE is embedded or redis, not $STORE" >&2; exit 2 ;;
esac

D=$(mktemp -d /tmp/tollgate-ab.XXXXXX)
PIDS=()
CGROUPS=()
cleanup() {
  local p cg
  # Back to the root group first: the held nginx outlives this script.
  for cg in "${CGROUPS[@]}"; do
    while read -r p; do echo "$p" >"$(dirname "$cg")/cgroup.procs" 2>/dev/null || true; done <"$cg/cgroup.procs"
    rmdir "$cg" 2>/dev/null || true
  done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$D"
}
trap cleanup EXIT

case "$KEYSET" in
  admitted) BIN_KEYS=$KEYS ;;
  unknown) BIN_KEYS=$UNKNOWN ;;
  *) echo "ab.sh: KEYSET is admitted or unknown, not $KEYSET" >&2; exit 2 ;;
esac

if [ "$UNPINNED" = 1 ]; then
  read -r NGINX <<<"$(free_ports 1)"
  mkdir -p "$D/nginx"
  nginx_proxy_conf "$D/nginx" "$NGINX" "$UP" 64 "" auto >"$D/nginx/nginx.conf"
  nginx -p "$D/nginx" -c "$D/nginx/nginx.conf" -e "$D/nginx/error.log" 2>>"$D/nginx/error.log" &
  PIDS+=("$!")
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$NGINX/" && break; sleep 0.1; done
  NGINX_PID=$(pgrep -P "${PIDS[-1]}" | tr '\n' ' ')
fi

# Each contender's processes, whose CPU time is its cost (nginx: its workers; a BIN: all threads).
NAMES=(nginx) PORTS=("$NGINX") FILES=("$KEYS") CPU_PIDS=("$NGINX_PID")
i=0
for bin in "$@"; do
  i=$((i + 1))
  dir="$D/$i"
  mkdir -p "$dir"
  if [ "$STORE" = redis ]; then store=$(redis_store); else store=$(embedded_store "$dir"); fi
  start_gateway "$dir" "$bin" "$store"
  PIDS+=("$GW_PID")
  NAMES+=("$i:$(basename "$bin")") PORTS+=("$GW_PORT") FILES+=("$BIN_KEYS") CPU_PIDS+=("$GW_PID")
done

load() { # PORT SECONDS KEYS_FILE -> "req/s p99_ms"
  if [ "$UNPINNED" = 1 ]; then
    set -- "$1" "$2" "$3" wrk -t"$THREADS"
  else
    set -- "$1" "$2" "$3" taskset -c "$LOAD_CPU" wrk -t1
  fi
  "${@:4}" -c"$CONNS" -d"$2s" --latency -s "$HERE/keys.lua" \
    "http://127.0.0.1:$1" -- "$3" "$REQ_PATH" ${BODY:+"$BODY"} 2>&1 |
    awk '/Requests\/sec/ { r = $2 } / 99%/ { v = $2; if (v ~ /us$/) p = v / 1000; else if (v ~ /ms$/) p = v + 0; else p = v * 1000 } END { printf "%d %.3f\n", r, p }'
}
ticks() { # PIDS -> their user + system CPU time, in clock ticks
  local p t=0
  for p in $1; do t=$((t + $(cpu_ticks "$p"))); done
  echo "$t"
}
# One round of contender J: "req/s p99_ms cpu_us_per_request".
measure() {
  local before after out
  before=$(ticks "${CPU_PIDS[$1]}")
  out=$(load "${PORTS[$1]}" "$DURATION" "${FILES[$1]}")
  after=$(ticks "${CPU_PIDS[$1]}")
  awk -v o="$out" -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v s="$DURATION" \
    'BEGIN { split(o, f, " "); printf "%s %s %.2f\n", f[1], f[2], t * 1e6 / hz / (f[1] * s + 1e-9) }'
}
if [ -n "$CPU_QUOTA" ]; then
  quota=$((CPU_PERIOD_US * CPU_QUOTA / 100))
  [ "$quota" -ge 1000 ] || { echo "ab.sh: CPU_QUOTA x CPU_PERIOD_US is under the kernel's 1000 us minimum" >&2; exit 2; }
  if [ -w /sys/fs/cgroup/cpu/cgroup.procs ]; then
    CG_ROOT=/sys/fs/cgroup/cpu # v1
  elif grep -qw cpu /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
    CG_ROOT=/sys/fs/cgroup # v2
    grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control || echo +cpu >/sys/fs/cgroup/cgroup.subtree_control
  else
    echo "ab.sh: CPU_QUOTA needs the cgroup cpu controller (and root)" >&2; exit 2
  fi
  for j in "${!PORTS[@]}"; do
    cg="$CG_ROOT/tollgate-ab.$$.$j"
    mkdir "$cg"
    CGROUPS+=("$cg")
    if [ "$CG_ROOT" = /sys/fs/cgroup ]; then
      echo "$quota $CPU_PERIOD_US" >"$cg/cpu.max"
    else
      echo "$CPU_PERIOD_US" >"$cg/cpu.cfs_period_us"
      echo "$quota" >"$cg/cpu.cfs_quota_us"
    fi
    for p in ${CPU_PIDS[$j]}; do echo "$p" >"$cg/cgroup.procs"; done
  done
  echo "ab.sh: each contender capped at $CPU_QUOTA% of a core ($quota us per $CPU_PERIOD_US us)" >&2
fi
for j in "${!PORTS[@]}"; do load "${PORTS[$j]}" 3 "${FILES[$j]}" >/dev/null; done # warm-up: caches, pools
n=${#PORTS[@]}
: >"$D/rows"
for r in $(seq "$ROUNDS"); do
  for k in $(seq 0 $((n - 1))); do
    j=$(((k + r) % n))
    echo "$r ${NAMES[$j]} $(measure "$j")" | tee -a "$D/rows" >&2
  done
done
python3 - "$D/rows" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
by = {}
for r, name, rps, p99, cpu in rows:
    by.setdefault(name, {})[r] = (float(rps), float(p99), float(cpu))
base = by["nginx"]
base_cpu = statistics.median(v[2] for v in base.values())
print(f"{'contender':<28} {'req/s':>9} {'p99 ms':>7} {'CPU us/req':>10} {'req/s vs nginx':>15} "
      f"{'p99 vs nginx':>13} {'CPU vs nginx':>13}")
for name, rounds in by.items():
    rps = statistics.median(v[0] for v in rounds.values())
    p99 = statistics.median(v[1] for v in rounds.values())
    cpu = statistics.median(v[2] for v in rounds.values())
    rr = statistics.median(rounds[k][0] / base[k][0] for k in rounds)
    pr = statistics.median(rounds[k][1] / base[k][1] for k in rounds)
    print(f"{name:<28} {rps:>9.0f} {p99:>7.2f} {cpu:>10.2f} {rr:>14.3f}x {pr:>12.3f}x "
          f"{cpu / base_cpu:>12.3f}x")
PY

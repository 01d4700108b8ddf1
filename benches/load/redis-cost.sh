#!/usr/bin/env bash
# Redis's side of Tollgate's usage flushes, against a held setup:
#
#   HOLD=1 benches/load/run.sh &        # TOLLGATE_BIN names the build the hold runs
#   benches/load/redis-cost.sh [SECONDS]
#
# Sends wrk -c64 on LOAD_CPU [1] to the held tollgate-redis for SECONDS [20] over the active keys
# (the admitted phase's traffic) and prints what Redis spent meanwhile: its CPU time (user +
# system, from /proc), its script calls and their time (INFO commandstats), and how many keys it
# gained. OUT [benches/load/out] is the held run's output directory. To compare two builds, hold
# each in turn: Redis's CPU is counted per process, so the numbers of one run stand on their own.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SECS=${1:-20}
OUT=${OUT:-$HERE/out}
LOAD_CPU=${LOAD_CPU:-1}
# shellcheck source=held.sh
. "$HERE/held.sh"
read_hold redis-cost.sh redis
TR=${TR%/*}
RPID=$(redis_pid)
load() {
  timeout $(($1 + 60)) taskset -c "$LOAD_CPU" wrk -t1 -c64 -d"$1s" -s "$HERE/keys.lua" \
    "http://127.0.0.1:$TR" -- "$KEYS" "$REQ_PATH"
}
load 3 >/dev/null # warm: every key cached, every usage cell made
redis-cli -p "$RP" config resetstat >/dev/null
K0=$(redis-cli -p "$RP" dbsize) T0=$(cpu_ticks "$RPID")
RPS=$(load "$SECS" | awk '/^Requests\/sec/ { printf "%d", $2 }')
T1=$(cpu_ticks "$RPID") K1=$(redis-cli -p "$RP" dbsize)
STATS=$(redis-cli -p "$RP" info commandstats | tr -d '\r')
CALLS=$(echo "$STATS" | awk -F'[=,]' '/^cmdstat_(evalsha|eval):/ { n += $2 } END { print n + 0 }')
USEC=$(echo "$STATS" | awk -F'[=,]' '/^cmdstat_(evalsha|eval):/ { n += $4 } END { print n + 0 }')
HZ=$(getconf CLK_TCK)
awk -v s="$SECS" -v rps="$RPS" -v t=$((T1 - T0)) -v hz="$HZ" -v c="$CALLS" -v u="$USEC" \
  -v k0="$K0" -v k1="$K1" 'BEGIN {
  printf "tollgate-redis %d req/s for %d s: Redis CPU %.2f s (%.1f ms per second of load), ", rps, s, t / hz, t / hz * 1000 / s
  printf "%d script calls (%.1f/s, %.0f us each), keys %d -> %d\n", c, c / s, c ? u / c : 0, k0, k1 }'

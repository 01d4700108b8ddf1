#!/usr/bin/env bash
# The gateway's side of the usage flush on Redis, against a held setup: what Tollgate's threads
# other than the data plane (the control-plane runtime, where the flusher and the Redis connection
# run) spend per flush.
#
#   HOLD=1 benches/load/run.sh &                   # the upstream and the seeded Redis, held
#   benches/load/flush-cost.sh BIN [SECONDS]
#
# Runs BIN on the held Redis with the load run's settings (one worker, metering and per-key metrics
# on, 250 ms flushes), pinned to PROXY_CPU [0]; sends wrk -c64 on LOAD_CPU [1] for SECONDS [20]
# over the active keys (every flush then carries each of them) and counts, with perf stat, the
# CPU time of the non-data-plane threads, and from /proc the held Redis's, and prints both per
# flush (SECONDS x 4 flushes): compare builds by running them in turn, a few times each, as the
# machine is shared. Redis's share is all of its CPU meanwhile (the flush is all the work this
# traffic gives it once the keys are cached).
# PERF_DATA=FILE records a call-graph profile of those threads there instead (perf report -i FILE).
# OUT [benches/load/out] is the held run's output directory. Needs perf (apt-get install linux-perf).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=held.sh
. "$HERE/held.sh"
BIN=${1:?usage: flush-cost.sh BIN [SECONDS]}
SECS=${2:-20}
OUT=${OUT:-$HERE/out}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
command -v perf >/dev/null || { echo "flush-cost.sh: needs perf (apt-get install linux-perf)" >&2; exit 1; }
read_hold flush-cost.sh redis

D=$(mktemp -d /tmp/tollgate-flush.XXXXXX)
trap '[ -z "${GW_PID:-}" ] || kill "$GW_PID" 2>/dev/null || true; rm -rf "$D"' EXIT
start_gateway "$D" "$BIN" "$(redis_store)"
load() {
  timeout $(($1 + 60)) taskset -c "$LOAD_CPU" wrk -t1 -c64 -d"$1s" -s "$HERE/keys.lua" \
    "http://127.0.0.1:$GW_PORT" -- "$KEYS" "$REQ_PATH"
}
load 3 >/dev/null # warm: every key cached, every account indexed for usage
TIDS=$(for t in /proc/$GW_PID/task/*; do
  case "$(cat "$t/comm")" in tollgate-w*) ;; *) basename "$t" ;; esac
done | paste -sd,)
load "$SECS" >"$D/wrk" &
W=$!
if [ -n "${PERF_DATA:-}" ]; then
  perf record -q -F 4999 -g --call-graph dwarf,16384 -t "$TIDS" -o "$PERF_DATA" -- sleep "$SECS" 2>/dev/null
  wait "$W"
  echo "profile of the control-plane threads: perf report -i $PERF_DATA"
  exit 0
fi
RPID=$(redis_pid)
T0=$(cpu_ticks "$RPID")
perf stat -x, -e task-clock -t "$TIDS" -o "$D/stat" -- sleep "$SECS" 2>/dev/null
T1=$(cpu_ticks "$RPID")
wait "$W"
awk -F, -v flushes=$((SECS * 4)) -v rps="$(awk '/Requests\/sec/ { print $2 }' "$D/wrk")" \
  -v redis_ms="$(((T1 - T0) * 1000 / $(getconf CLK_TCK)))" '
  $3 == "task-clock" { ms = $1 }
  END { printf "%.0f req/s; control-plane threads: %.2f ms CPU per flush; Redis: %.2f ms CPU per flush\n", rps, ms / flushes, redis_ms / flushes }' "$D/stat"

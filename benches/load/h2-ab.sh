#!/usr/bin/env bash
# HTTP/2 side by side with nginx, against a held setup: req/s, new upstream connections per
# request and the proxy's CPU per request, rounds alternating.
#
#   HOLD=1 benches/load/run.sh &                   # the upstream, nginx and the seeded store, held
#   benches/load/h2-ab.sh BIN [BIN...]
#
# Each BIN runs on its own copy of the seeded embedded store with the load run's settings, pinned
# to PROXY_CPU [0]; h2load -c64 -m10 (the load run's h2 phase) on LOAD_CPU [1] for 8 s per
# contender per round, ROUNDS [5] rounds, nginx's h2 listener first. While each runs, perf stat
# counts the proxy's connect() calls and CPU time over 6 s. OUT [benches/load/out] is the held
# run's output directory. Needs perf (apt-get install linux-perf).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=held.sh
. "$HERE/held.sh"
[ $# -ge 1 ] || { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
OUT=${OUT:-$HERE/out}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
command -v perf >/dev/null || { echo "h2-ab.sh: needs perf (apt-get install linux-perf)" >&2; exit 1; }
read_hold h2-ab.sh
# nginx-proxy's other listener (HTTP/2).
NH2=$(ss -ltnp | grep "pid=$NGINX_PID," | awk '{ print $4 }' | sed 's/.*://' | grep -vx "$NGINX" | head -1)
D=$(mktemp -d /tmp/tollgate-h2ab.XXXXXX)
declare -A PORT PID
PORT[nginx]=$NH2 PID[nginx]=$NGINX_PID
NAMES=(nginx)
cleanup() {
  local n
  for n in "${NAMES[@]:1}"; do kill "${PID[$n]}" 2>/dev/null || true; done
  rm -rf "$D"
}
trap cleanup EXIT
i=0
for bin in "$@"; do
  i=$((i + 1))
  mkdir -p "$D/$i"
  start_gateway "$D/$i" "$bin" "$(embedded_store "$D/$i")"
  n="$i:$(basename "$bin")"
  PORT[$n]=$GW_PORT PID[$n]=$GW_PID
  NAMES+=("$n")
done
for n in "${NAMES[@]}"; do
  h2_uris "${PORT[$n]}" "$KEYS" >"$D/uris-${PORT[$n]}"
  taskset -c "$LOAD_CPU" h2load -t1 -c64 -m10 -D 3 -i "$D/uris-${PORT[$n]}" >/dev/null 2>&1 # warm
done
for r in $(seq "${ROUNDS:-5}"); do
  for n in "${NAMES[@]}"; do
    taskset -c "$LOAD_CPU" h2load -t1 -c64 -m10 -D 8 -i "$D/uris-${PORT[$n]}" >"$D/h2load" 2>&1 &
    L=$!
    sleep 1
    perf stat -x, -e syscalls:sys_enter_connect,task-clock -p "${PID[$n]}" -o "$D/stat" -- sleep 6 2>/dev/null
    wait "$L"
    rps=$(awk '/finished in/ { gsub(",", "", $4); print $4 }' "$D/h2load")
    awk -F, -v n="$n" -v r="$r" -v rps="$rps" '
      $3 ~ /connect/ { c = $1 } $3 ~ /task-clock/ { ms = $1 }
      END { printf "%d %-28s %8.0f req/s  new upstream connections per request %.3f  CPU %.1f us/req\n", r, n, rps, c / (rps * 6), ms * 1000 / (rps * 6) }' "$D/stat"
  done
done

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
# CPU time of the non-data-plane threads with perf stat, and prints it per flush (SECONDS x 4
# flushes): compare builds by running them in turn, a few times each, as the machine is shared.
# PERF_DATA=FILE records a call-graph profile of those threads there instead (perf report -i FILE).
# OUT [benches/load/out] is the held run's output directory. Needs perf (apt-get install linux-perf).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=gateway-toml.sh
. "$HERE/gateway-toml.sh"
BIN=${1:?usage: flush-cost.sh BIN [SECONDS]}
SECS=${2:-20}
OUT=${OUT:-$HERE/out}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
command -v perf >/dev/null || { echo "flush-cost.sh: needs perf (apt-get install linux-perf)" >&2; exit 1; }
[ -f "$OUT/hold.txt" ] || { echo "flush-cost.sh: no $OUT/hold.txt: start HOLD=1 benches/load/run.sh first" >&2; exit 1; }
read -r _ UP _ _ _ _ _ _ _ KEYS _ _ _ RP _ <"$OUT/hold.txt"
[ -n "${RP:-}" ] || { echo "flush-cost.sh: $OUT/hold.txt names no Redis (an older run.sh?)" >&2; exit 1; }
REQ_PATH="/whoisserver/WhoisService?domainName=example.com&outputFormat=JSON"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
D=$(mktemp -d /tmp/tollgate-flush.XXXXXX)
trap '[ -z "${TG:-}" ] || kill "$TG" 2>/dev/null || true; rm -rf "$D"' EXIT
PORT=$(free_port) ACCOUNT=$(free_port) OPS=$(free_port)
gateway_toml "$PORT" "$ACCOUNT" "$OPS" "$UP" "backend = \"redis\"
url = \"redis://127.0.0.1:$RP/0\"
prefix = \"tg\"" >"$D/gateway.toml"
TOKIO_WORKER_THREADS=1 TOLLGATE_OPERATOR_TOKEN=op_flush_$RANDOM$RANDOM \
  taskset -c "$PROXY_CPU" "$BIN" run --config "$D/gateway.toml" 2>"$D/log" &
TG=$!
for _ in $(seq 120); do
  curl -sf -o /dev/null "http://127.0.0.1:$OPS/readyz" && break
  kill -0 "$TG" 2>/dev/null || { cat "$D/log" >&2; exit 1; }
  sleep 0.5
done
load() {
  timeout $(($1 + 60)) taskset -c "$LOAD_CPU" wrk -t1 -c64 -d"$1s" -s "$HERE/keys.lua" \
    "http://127.0.0.1:$PORT" -- "$KEYS" "$REQ_PATH"
}
load 3 >/dev/null # warm: every key cached, every account indexed for usage
TIDS=$(for t in /proc/$TG/task/*; do
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
perf stat -x, -e task-clock -t "$TIDS" -o "$D/stat" -- sleep "$SECS" 2>/dev/null
wait "$W"
awk -F, -v flushes=$((SECS * 4)) -v rps="$(awk '/Requests\/sec/ { print $2 }' "$D/wrk")" '
  $3 == "task-clock" { ms = $1 }
  END { printf "%.0f req/s; control-plane threads: %.2f ms CPU per flush\n", rps, ms / flushes }' "$D/stat"

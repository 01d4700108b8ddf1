# Sourced by ab.sh, callgrind.sh, flush-cost.sh and redis-cost.sh: what they share about a held
# setup (`HOLD=1 benches/load/run.sh &`), and starting one more Tollgate beside it. Needs HERE
# (this directory) and OUT (the held run's output directory).
# shellcheck source=gateway-toml.sh
. "$HERE/gateway-toml.sh"

# read_hold NAME [redis]: reads $OUT/hold.txt into UP (the upstream's port), NGINX and NGINX_PID
# (nginx-proxy's port and worker), TE and TR (the held Tollgates, PORT/PID), KEYS and UNKNOWN (key files) and RP (Redis's
# port); exits with NAME's error if there is no hold, or, with "redis", if it names no Redis.
read_hold() {
  [ -f "$OUT/hold.txt" ] || { echo "$1: no $OUT/hold.txt: start HOLD=1 benches/load/run.sh first" >&2; exit 1; }
  # shellcheck disable=SC2034 # read by the scripts that source this
  read -r _ UP _ NGINX _ TE _ TR _ KEYS _ UNKNOWN _ RP _ <"$OUT/hold.txt"
  NGINX_PID=${NGINX#*/} NGINX=${NGINX%%/*}
  if [ "${2:-}" = redis ] && [ -z "${RP:-}" ]; then
    echo "$1: $OUT/hold.txt names no Redis (an older run.sh?)" >&2
    exit 1
  fi
}

# start_gateway DIR BIN STORE_TOML [WRAPPER...]: writes DIR/gateway.toml (the load run's settings,
# free ports, the held upstream, STORE_TOML as the [store] section's body) and starts BIN run on
# it, pinned to PROXY_CPU, under WRAPPER if given (valgrind ...), its stderr in DIR/log. With
# UNPINNED=1, BIN runs as an operator would start it instead: not pinned, its default thread
# counts (one data-plane worker per core). Sets GW_PID, GW_PORT and GW_OPS once the ops listener
# answers /readyz; otherwise prints the log, stops BIN and exits.
start_gateway() {
  local dir=$1 bin=$2 store=$3 account
  shift 3
  read -r GW_PORT account GW_OPS <<<"$(free_ports 3)"
  if [ "${UNPINNED:-0}" = 1 ]; then
    gateway_toml "$GW_PORT" "$account" "$GW_OPS" "$UP" "$store" 250ms auto >"$dir/gateway.toml"
    TOLLGATE_OPERATOR_TOKEN=op_held_$RANDOM$RANDOM \
      "$@" "$bin" run --config "$dir/gateway.toml" 2>"$dir/log" &
  else
    gateway_toml "$GW_PORT" "$account" "$GW_OPS" "$UP" "$store" >"$dir/gateway.toml"
    TOKIO_WORKER_THREADS=1 TOLLGATE_OPERATOR_TOKEN=op_held_$RANDOM$RANDOM \
      taskset -c "$PROXY_CPU" "$@" "$bin" run --config "$dir/gateway.toml" 2>"$dir/log" &
  fi
  GW_PID=$!
  local _
  for _ in $(seq 240); do
    curl -sf -o /dev/null "http://127.0.0.1:$GW_OPS/readyz" && return 0
    kill -0 "$GW_PID" 2>/dev/null || break
    sleep 0.5
  done
  echo "$bin did not become ready on 127.0.0.1:$GW_OPS:" >&2
  cat "$dir/log" >&2
  kill "$GW_PID" 2>/dev/null || true
  exit 1
}

# redis_pid: the held Redis's process id.
redis_pid() { redis-cli -p "$RP" info server | tr -d '\r' | awk -F: '$1 == "process_id" { print $2 }'; }

# Bodies of the [store] section for a gateway beside the hold: the held Redis (the seeded tree
# under prefix "tg"), or a copy of the seeded embedded store made in DIR.
redis_store() { redis_store_toml "$RP"; }
embedded_store() {
  cp "$(dirname "$KEYS")/tollgate.db" "$1/tollgate.db"
  embedded_store_toml "$1/tollgate.db"
}

#!/usr/bin/env bash
# Whole-gateway load test: Tollgate (embedded store and Redis) side by side with nginx, in one run.
# See benches/load/README.md. Usage:
#
#   benches/load/run.sh            # full run: 3 rounds of 10 s per contender and phase
#   benches/load/run.sh --smoke    # CI: 1 round of 2 s, a small key tree
#
# Environment (defaults in brackets): DURATION [10] seconds per measurement, ROUNDS [3],
# WARMUP [3] seconds per contender and phase, CONNS [64] wrk connections, PHASES
# ["admitted refused h2"], PARENTS [10000], CHILDREN_PER_PARENT [10], ACTIVE_KEYS [1000],
# PROXY_CPU [0] (every contender), LOAD_CPU [1] (wrk, h2load, the upstream, redis-server),
# OUT [benches/load/out], RESEED [0] (1: ignore a cached seed), TOLLGATE_BIN and SEED_BIN (skip
# the cargo build), KEEP_TMP [0] (1: keep the temp dir with configs and logs), FLUSH_INTERVAL
# ["250ms"] Tollgate's [metering] flush_interval, HOLD [0] (1: start everything, print the
# ports and pids, and wait to be killed instead of measuring: for profiling), QUIET_MAX [10]
# and QUIET_WAIT [900]: before each measurement, wait up to QUIET_WAIT s until other work uses at
# most QUIET_MAX % of the machine. NGINX_KEEPALIVE [64] is nginx-proxy's upstream `keepalive`
# (idle connections kept, as Tollgate's default `upstream_idle_per_host`).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=gateway-toml.sh
. "$HERE/gateway-toml.sh"
# shellcheck source=nginx-conf.sh
. "$HERE/nginx-conf.sh"
ROOT=$(cd "$HERE/../.." && pwd)

SMOKE=0
for arg in "$@"; do
  case "$arg" in
    --smoke) SMOKE=1 ;;
    -h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

if [ "$SMOKE" = 1 ]; then
  DURATION=${DURATION:-2}; ROUNDS=${ROUNDS:-1}; WARMUP=${WARMUP:-1}
  PARENTS=${PARENTS:-300}; CHILDREN_PER_PARENT=${CHILDREN_PER_PARENT:-10}; QUIET_WAIT=${QUIET_WAIT:-10}
fi
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-3}
CONNS=${CONNS:-64}
NGINX_KEEPALIVE=${NGINX_KEEPALIVE:-64}
PHASES=${PHASES:-admitted refused h2}
PARENTS=${PARENTS:-10000}
CHILDREN_PER_PARENT=${CHILDREN_PER_PARENT:-10}
ACTIVE_KEYS=${ACTIVE_KEYS:-1000}
DISABLED_KEYS=${DISABLED_KEYS:-200}
UNKNOWN_KEYS=${UNKNOWN_KEYS:-1000}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
OUT=${OUT:-$HERE/out}
RESEED=${RESEED:-0}
KEEP_TMP=${KEEP_TMP:-0}
FLUSH_INTERVAL=${FLUSH_INTERVAL:-250ms}

log() { printf '[load %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# Tools: Debian packages, installed only if missing (apt-get update at most once).

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi
APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null || die "missing $*, and no apt-get to install it with"
  if [ "$APT_UPDATED" = 0 ]; then
    log "apt-get update"
    $SUDO apt-get update -qq >&2
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >&2
}
need() { # need COMMAND PACKAGE...
  local cmd=$1; shift
  command -v "$cmd" >/dev/null && return 0
  local pkg
  for pkg in "$@"; do
    apt_install "$pkg" && command -v "$cmd" >/dev/null && return 0
  done
  die "could not install $cmd"
}
need nginx nginx-light nginx
need wrk wrk
need h2load nghttp2-client
need redis-server redis-server
need redis-cli redis-tools
need taskset util-linux
need curl curl
# Debian's python3 (where python3-matplotlib goes), unless there is none.
PY=/usr/bin/python3
if [ ! -x "$PY" ]; then
  need python3 python3
  PY=$(command -v python3)
fi
if ! "$PY" -c 'import matplotlib' 2>/dev/null; then
  apt_install python3-matplotlib
  "$PY" -c 'import matplotlib' 2>/dev/null || die "$PY cannot import matplotlib"
fi
[ "$(nproc)" -ge 2 ] || log "warning: fewer than 2 CPUs; the proxy and the load generator share one"

# ---------------------------------------------------------------------------------------------
# Binaries: the release build (fat LTO), unless given.

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [ -z "${TOLLGATE_BIN:-}" ] || [ -z "${SEED_BIN:-}" ]; then
  log "cargo build --release (tollgate, seed)"
  (cd "$ROOT" && cargo build --release -p tollgate --bin tollgate -p tollgate-benches --bin seed) >&2
fi
TOLLGATE_BIN=${TOLLGATE_BIN:-$TARGET/release/tollgate}
SEED_BIN=${SEED_BIN:-$TARGET/release/seed}
[ -x "$TOLLGATE_BIN" ] || die "no tollgate binary at $TOLLGATE_BIN"
[ -x "$SEED_BIN" ] || die "no seed binary at $SEED_BIN"

# ---------------------------------------------------------------------------------------------
# Temp dir, process bookkeeping, cleanup on any exit.

mkdir -p "$OUT"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-load.XXXXXX")
chmod 755 "$TMP"
PIDS=()
cleanup() {
  local status=$? pid
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local alive=0
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$KEEP_TMP" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_http URL EXPECTED_STATUS SECONDS
wait_http() {
  local deadline=$((SECONDS + $3)) code
  while [ $SECONDS -lt $deadline ]; do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$1" || true)
    [ "$code" = "$2" ] && return 0
    sleep 0.1
  done
  die "$1 did not answer $2 within $3 s (last: ${code:-none})"
}

# expect_status URL KEY STATUS
expect_status() {
  local code
  code=$(curl -s -o "$TMP/last-body" -w '%{http_code}' --max-time 5 -H "x-api-key: $2" "$1" || true)
  [ "$code" = "$3" ] || die "$1 answered $code, expected $3: $(head -c 300 "$TMP/last-body")"
}

# ---------------------------------------------------------------------------------------------
# nginx: the upstream (twice: the real one on LOAD_CPU, contender "upstream-direct" on PROXY_CPU)
# and the plain reverse proxy.

H2_NGINX=0
nginx -V 2>&1 | grep -q -- '--with-http_v2_module' && H2_NGINX=1

# start_nginx NAME CPU CONF_TEXT: starts nginx (master + 1 worker) pinned to CPU; sets NGINX_WORKER.
start_nginx() {
  local name=$1 cpu=$2 dir=$TMP/$1 master worker=""
  mkdir -p "$dir"
  printf '%s\n' "$3" > "$dir/nginx.conf"
  taskset -c "$cpu" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" 2>>"$dir/error.log" &
  master=$!
  PIDS+=("$master")
  for _ in $(seq 100); do
    worker=$(pgrep -P "$master" | head -1 || true)
    [ -n "$worker" ] && break
    kill -0 "$master" 2>/dev/null || die "nginx $name exited: $(cat "$dir/error.log")"
    sleep 0.05
  done
  [ -n "$worker" ] || die "nginx $name started no worker"
  NGINX_WORKER=$worker
}

UP_PORT=$(free_port)
start_nginx upstream "$LOAD_CPU" "$(upstream_conf "$TMP/upstream" "$UP_PORT")"
UPSTREAM_PID=$NGINX_WORKER
wait_http "http://127.0.0.1:$UP_PORT/" 200 10
log "upstream: nginx on 127.0.0.1:$UP_PORT (CPU $LOAD_CPU)"

DIRECT_PORT=$(free_port)
start_nginx direct "$PROXY_CPU" "$(upstream_conf "$TMP/direct" "$DIRECT_PORT")"
DIRECT_PID=$NGINX_WORKER
wait_http "http://127.0.0.1:$DIRECT_PORT/" 200 10

read -r NP_PORT NP_H2_PORT <<<"$(free_ports 2)"
NP_H2=""
[ "$H2_NGINX" = 1 ] && NP_H2=$NP_H2_PORT
start_nginx nginx-proxy "$PROXY_CPU" \
  "$(nginx_proxy_conf "$TMP/nginx-proxy" "$NP_PORT" "$UP_PORT" "$NGINX_KEEPALIVE" "$NP_H2")"
NGINX_PROXY_PID=$NGINX_WORKER
wait_http "http://127.0.0.1:$NP_PORT/" 200 10
log "nginx-proxy: 127.0.0.1:$NP_PORT$([ "$H2_NGINX" = 1 ] && echo ", h2c 127.0.0.1:$NP_H2_PORT") (CPU $PROXY_CPU)"

# ---------------------------------------------------------------------------------------------
# Redis and the seeded key tree (cached in OUT between runs: the same tree for both stores).

REDIS_PORT=$(free_port)
mkdir -p "$TMP/redis" "$TMP/embedded"
SEED_DIR=$OUT/seed-${PARENTS}x${CHILDREN_PER_PARENT}-${ACTIVE_KEYS}-${DISABLED_KEYS}-${UNKNOWN_KEYS}
if [ "$RESEED" = 1 ] || [ ! -s "$SEED_DIR/seed.json" ] || [ ! -s "$SEED_DIR/dump.rdb" ] \
  || [ ! -s "$SEED_DIR/tollgate.db" ]; then
  SEEDING=1
  rm -rf "$SEED_DIR"
  mkdir -p "$SEED_DIR"
else
  SEEDING=0
  cp "$SEED_DIR/dump.rdb" "$TMP/redis/dump.rdb"
fi
taskset -c "$LOAD_CPU" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$TMP/redis" \
  --dbfilename dump.rdb --save '' --appendonly no --daemonize no --logfile "$TMP/redis/redis.log" &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
for _ in $(seq 300); do
  [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null || true)" = PONG ] && break
  kill -0 "$REDIS_PID" 2>/dev/null || die "redis-server exited: $(tail -5 "$TMP/redis/redis.log")"
  sleep 0.1
done
log "redis-server: 127.0.0.1:$REDIS_PORT (CPU $LOAD_CPU)"

if [ "$SEEDING" = 1 ]; then
  log "seeding $PARENTS parents x $CHILDREN_PER_PARENT children into both stores"
  timeout 3600 "$SEED_BIN" --embedded "$SEED_DIR/tollgate.db" --bulk \
    --redis "redis://127.0.0.1:$REDIS_PORT/0" --prefix tg --out "$SEED_DIR" \
    --parents "$PARENTS" --children-per-parent "$CHILDREN_PER_PARENT" \
    --active "$ACTIVE_KEYS" --disabled "$DISABLED_KEYS" --unknown "$UNKNOWN_KEYS" >&2
  redis-cli -p "$REDIS_PORT" save >/dev/null
  cp "$TMP/redis/dump.rdb" "$SEED_DIR/dump.rdb"
else
  log "reusing the seeded tree in $SEED_DIR (RESEED=1 to make a new one)"
fi
cp "$SEED_DIR/tollgate.db" "$TMP/embedded/tollgate.db"
KEYS=$SEED_DIR/keys.txt
DISABLED=$SEED_DIR/disabled.txt
UNKNOWN=$SEED_DIR/unknown.txt

# ---------------------------------------------------------------------------------------------
# Tollgate, twice: embedded store and Redis; one runtime thread, metering and per-key metrics on.

# start_tollgate NAME STORE_TOML: sets TG_PORT, TG_PID.
start_tollgate() {
  local name=$1 dir=$TMP/$1
  mkdir -p "$dir"
  local account_port ops_port
  read -r TG_PORT account_port ops_port <<<"$(free_ports 3)"
  gateway_toml "$TG_PORT" "$account_port" "$ops_port" "$UP_PORT" "$2" "$FLUSH_INTERVAL" >"$dir/gateway.toml"
  "$TOLLGATE_BIN" check --config "$dir/gateway.toml" >&2
  TOKIO_WORKER_THREADS=1 TOLLGATE_OPERATOR_TOKEN=op_load_$RANDOM$RANDOM \
    taskset -c "$PROXY_CPU" "$TOLLGATE_BIN" run --config "$dir/gateway.toml" 2>"$dir/tollgate.log" &
  TG_PID=$!
  PIDS+=("$TG_PID")
  wait_http "http://127.0.0.1:$ops_port/readyz" 200 60
  expect_status "http://127.0.0.1:$TG_PORT$REQ_PATH" "$(head -1 "$KEYS")" 200
  expect_status "http://127.0.0.1:$TG_PORT$REQ_PATH" "$(head -1 "$DISABLED")" 403
  expect_status "http://127.0.0.1:$TG_PORT$REQ_PATH" "$(head -1 "$UNKNOWN")" 401
  log "$name: 127.0.0.1:$TG_PORT (CPU $PROXY_CPU, ops 127.0.0.1:$ops_port)"
}
start_tollgate tollgate-embedded "$(embedded_store_toml "$TMP/embedded/tollgate.db")"
TE_PORT=$TG_PORT TE_PID=$TG_PID
start_tollgate tollgate-redis "$(redis_store_toml "$REDIS_PORT")"
TR_PORT=$TG_PORT TR_PID=$TG_PID

if [ "${HOLD:-0}" = 1 ]; then
  printf 'upstream %s nginx-proxy %s/%s tollgate-embedded %s/%s tollgate-redis %s/%s keys %s unknown %s redis %s\n' \
    "$UP_PORT" "$NP_PORT" "$NGINX_PROXY_PID" "$TE_PORT" "$TE_PID" "$TR_PORT" "$TR_PID" "$KEYS" "$UNKNOWN" \
    "$REDIS_PORT" >"$OUT/hold.txt"
  log "holding (HOLD=1): $(cat "$OUT/hold.txt"); kill $$ to stop"
  wait
fi

# ---------------------------------------------------------------------------------------------
# Measurements.

CLK_TCK=$(getconf CLK_TCK)
RAW=$OUT/raw.jsonl
: >"$RAW"
mkdir -p "$OUT/logs"
rm -f "$OUT"/logs/*.txt

# Busy ticks of one CPU (user nice system irq softirq steal), from /proc/stat.
core_ticks() { awk -v c="cpu$1" '$1 == c { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
# Share of the whole machine busy over a second, in percent.
machine_busy() {
  local a b
  a=$(awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat)
  sleep 1
  b=$(awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ");
    busy = y[1] - x[1]; idle = y[2] - x[2]; print int(100 * busy / (busy + idle + 1e-9)) }'
}
# Between measurements nothing of ours runs: wait (up to QUIET_WAIT s) until others' work is done.
QUIET_MAX=${QUIET_MAX:-10}
QUIET_WAIT=${QUIET_WAIT:-900}
wait_quiet() {
  local deadline=$((SECONDS + QUIET_WAIT)) busy warned=0
  while busy=$(machine_busy) && [ "$busy" -gt "$QUIET_MAX" ]; do
    if [ $SECONDS -ge $deadline ]; then
      log "warning: the machine is still ${busy}% busy with other work; measuring anyway"
      return 0
    fi
    [ "$warned" = 0 ] && log "waiting for a quiet machine (${busy}% busy with other work)" && warned=1
    sleep 4
  done
}
vmhwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }

# One contender: NAME|PID|PORT|KEYS_FILE|PROTO (h1 or h2). h2 goes to a separate port for nginx.
declare -A C_PID C_PORT C_KEYS C_PROTO
contender() { C_PID[$1]=$2; C_PORT[$1]=$3; C_KEYS[$1]=$4; C_PROTO[$1]=$5; }
contender upstream-direct "$DIRECT_PID" "$DIRECT_PORT" "$KEYS" h1
contender nginx-proxy "$NGINX_PROXY_PID" "$NP_PORT" "$KEYS" h1
contender tollgate-embedded "$TE_PID" "$TE_PORT" "$KEYS" h1
contender tollgate-redis "$TR_PID" "$TR_PORT" "$KEYS" h1
contender tollgate-embedded/unknown-key "$TE_PID" "$TE_PORT" "$UNKNOWN" h1
contender tollgate-embedded/disabled-child "$TE_PID" "$TE_PORT" "$DISABLED" h1
contender tollgate-redis/unknown-key "$TR_PID" "$TR_PORT" "$UNKNOWN" h1
contender tollgate-redis/disabled-child "$TR_PID" "$TR_PORT" "$DISABLED" h1
[ "$H2_NGINX" = 1 ] && contender nginx-proxy/h2 "$NGINX_PROXY_PID" "$NP_H2_PORT" "$KEYS" h2
contender tollgate-embedded/h2 "$TE_PID" "$TE_PORT" "$KEYS" h2
contender tollgate-redis/h2 "$TR_PID" "$TR_PORT" "$KEYS" h2

# run_load NAME SECONDS LOGFILE: the load itself; prints its output.
run_load() {
  local name=$1 secs=$2 port=${C_PORT[$1]} keys=${C_KEYS[$1]}
  if [ "${C_PROTO[$name]}" = h2 ]; then
    h2_uris "$port" "$keys" >"$TMP/uris-$port.txt"
    timeout $((secs + 60)) taskset -c "$LOAD_CPU" \
      h2load -t1 -c"$CONNS" -m10 -D "$secs" -i "$TMP/uris-$port.txt" 2>&1
  else
    timeout $((secs + 60)) taskset -c "$LOAD_CPU" \
      wrk -t1 -c"$CONNS" -d"${secs}s" --latency -s "$HERE/keys.lua" "http://127.0.0.1:$port" \
      -- "$keys" "$REQ_PATH" 2>&1
  fi
}

# h2load's summary as the same JSON fields wrk's done() prints (no percentiles: mean only).
h2_json() {
  awk '
    function us(v) {
      if (v ~ /us$/) return v + 0; if (v ~ /ms$/) return (v + 0) * 1000; if (v ~ /s$/) return (v + 0) * 1e6
      return v + 0
    }
    /^finished in/ { secs = $3 + 0 }
    /^requests:/ { done = $6 + 0; failed = $10 + 0; errored = $12 + 0; timeouts = $14 + 0 }
    /^status codes:/ { non2xx = $5 + $7 + $9 }
    /^time for request:/ { mean = us($6); max = us($5) }
    END {
      printf "{\"requests\": %d, \"duration_us\": %d, \"p50_us\": null, \"p99_us\": null, ", done, secs * 1e6
      printf "\"mean_us\": %.1f, \"max_us\": %d, \"errors_connect\": 0, \"errors_read\": %d, ", mean, max, errored
      printf "\"errors_write\": 0, \"errors_status\": %d, \"errors_timeout\": %d}\n", non2xx, timeouts
    }'
}

# CPU seconds used by this shell's waited-for children so far (wrk or h2load among them). `times`
# must run in this shell, not in a $(...) subshell, so it goes through a file.
children_cpu() {
  times >"$TMP/times"
  CHILDREN_CPU=$(awk 'NR == 2 { split($1, u, "m"); split($2, s, "m");
    printf "%.3f", u[1] * 60 + u[2] + s[1] * 60 + s[2] }' "$TMP/times")
}

# A round is measured again (up to ATTEMPTS times) when something else took more than
# CONTAMINATION % of the proxy's core or of the load core during it: anything but the contender
# (proxy core), or the load tool, the upstream and Redis (load core). Discarded rounds stay in
# raw.jsonl, marked.
ATTEMPTS=${ATTEMPTS:-4}
CONTAMINATION=${CONTAMINATION:-8}

# measure PHASE NAME ROUND
measure() {
  local phase=$1 name=$2 round=$3 pid=${C_PID[$2]} attempt
  local logf="$OUT/logs/$phase-${name//\//_}-$round.txt"
  local before after p0 l0 p1 l1 u0 u1 r0 r1 w0 w1 out json
  for attempt in $(seq "$ATTEMPTS"); do
    wait_quiet
    before=$(cpu_ticks "$pid") p0=$(core_ticks "$PROXY_CPU") l0=$(core_ticks "$LOAD_CPU")
    u0=$(cpu_ticks "$UPSTREAM_PID") r0=$(cpu_ticks "$REDIS_PID")
    children_cpu
    w0=$CHILDREN_CPU
    out=$(run_load "$name" "$DURATION")
    children_cpu
    w1=$CHILDREN_CPU
    after=$(cpu_ticks "$pid") p1=$(core_ticks "$PROXY_CPU") l1=$(core_ticks "$LOAD_CPU")
    u1=$(cpu_ticks "$UPSTREAM_PID") r1=$(cpu_ticks "$REDIS_PID")
    printf '%s\n' "$out" >"$logf"
    if [ "${C_PROTO[$name]}" = h2 ]; then
      json=$(printf '%s\n' "$out" | h2_json)
    else
      json=$(printf '%s\n' "$out" | sed -n 's/^TGJSON //p')
    fi
    [ -n "$json" ] || die "no result from $name (see $logf)"
    printf '{"phase": "%s", "contender": "%s", "round": %d, "attempt": %d, "proto": "%s", "cpu_ticks": %d, "proxy_core_ticks": %d, "load_core_ticks": %d, "load_tool_cpu_s": %s, "upstream_ticks": %d, "redis_ticks": %d, "clk_tck": %d, "vmhwm_kib": %d, "load": %s}\n' \
      "$phase" "$name" "$round" "$attempt" "${C_PROTO[$name]}" $((after - before)) $((p1 - p0)) \
      $((l1 - l0)) "$(awk -v a="$w0" -v b="$w1" 'BEGIN { printf "%.3f", b - a }')" $((u1 - u0)) \
      $((r1 - r0)) "$CLK_TCK" "$(vmhwm_kib "$pid")" "$json" >"$TMP/record.json"
    local rc=0
    "$PY" - "$TMP/record.json" "$CONTAMINATION" "$attempt" "$ATTEMPTS" >>"$RAW" <<'EOF' || rc=$?
import json, sys
r = json.load(open(sys.argv[1]))
limit = float(sys.argv[2]) / 100
last = int(sys.argv[3]) >= int(sys.argv[4])
l = r["load"]
secs = l["duration_us"] / 1e6 or 1
tck = r["clk_tck"]
proxy_other = max(0.0, (r["proxy_core_ticks"] - r["cpu_ticks"]) / tck / secs)
load_other = max(0.0, (r["load_core_ticks"] - r["upstream_ticks"] - r["redis_ticks"]) / tck / secs
                 - r["load_tool_cpu_s"] / secs)
r["proxy_core_other"] = round(proxy_other, 4)
r["load_core_other"] = round(load_other, 4)
dirty = proxy_other > limit or load_other > limit
r["discarded"] = dirty and not last
lat = (f"p50 {l['p50_us']/1000:.2f} ms  p99 {l['p99_us']/1000:.2f} ms" if l["p50_us"] is not None
       else f"mean {l['mean_us']/1000:.2f} ms")
note = "  [contaminated: measured again]" if r["discarded"] else "  [contaminated; last attempt, kept]" if dirty else ""
print(f"  {r['phase']:9} round {r['round']}  {r['contender']:34} {l['requests']/secs:9.0f} req/s  {lat}  "
      f"CPU {r['cpu_ticks']/tck/secs*100:5.1f}%  other {proxy_other*100:2.0f}% / {load_other*100:2.0f}%  "
      f"non-2xx {l['errors_status']}{note}", file=sys.stderr)
print(json.dumps(r))
sys.exit(3 if r["discarded"] else 0)
EOF
    [ "$rc" = 0 ] && return 0
    [ "$rc" = 3 ] || die "could not evaluate the measurement of $name"
  done
}

phase_contenders() {
  case "$1" in
    admitted) echo upstream-direct nginx-proxy tollgate-embedded tollgate-redis ;;
    refused) echo nginx-proxy tollgate-embedded/unknown-key tollgate-embedded/disabled-child \
      tollgate-redis/unknown-key tollgate-redis/disabled-child ;;
    h2) [ "$H2_NGINX" = 1 ] && echo -n "nginx-proxy/h2 "; echo tollgate-embedded/h2 tollgate-redis/h2 ;;
    *) die "unknown phase $1" ;;
  esac
}

log "machine load before the phases: $(cut -d' ' -f1-3 /proc/loadavg)"
for phase in $PHASES; do
  wait_quiet
  read -r -a names <<<"$(phase_contenders "$phase")"
  log "phase $phase: warm-up ${WARMUP}s each: ${names[*]}"
  for name in "${names[@]}"; do run_load "$name" "$WARMUP" >/dev/null; done
  for round in $(seq "$ROUNDS"); do
    for name in "${names[@]}"; do measure "$phase" "$name" "$round"; done
  done
done

# ---------------------------------------------------------------------------------------------
# Report: the table (stdout), results.json, load.png.

META=$OUT/meta.json
"$PY" - "$META" <<EOF
import json, platform, subprocess, sys
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, cwd="$ROOT").stdout.strip()
    except Exception:
        return "?"
json.dump({
    "duration_s": $DURATION, "rounds": $ROUNDS, "warmup_s": $WARMUP, "connections": $CONNS, "nginx_keepalive": $NGINX_KEEPALIVE,
    "smoke": bool($SMOKE), "proxy_cpu": $PROXY_CPU, "load_cpu": $LOAD_CPU,
    "tree": json.load(open("$SEED_DIR/seed.json")),
    "cpu_model": cpu, "cpus": int(sh("nproc") or 0), "kernel": platform.release(),
    "nginx": sh("nginx -v 2>&1"), "wrk": sh("wrk -v 2>&1 | head -1"), "h2load": sh("h2load --version"),
    "redis": sh("redis-server --version"),
    "tollgate_bin": "$TOLLGATE_BIN", "tollgate_bin_built": sh("date -u -r '$TOLLGATE_BIN' +%Y-%m-%dT%H:%MZ"),
    "head_commit": sh("git rev-parse --short HEAD"),
    "tree_dirty": bool(sh("git status --porcelain -- crates Cargo.toml Cargo.lock")),
    "h2_nginx": bool($H2_NGINX),
    "h2_note": "h2load -c $CONNS -m 10, key in the apiKey query parameter; latency is the mean (h2load prints no percentiles)",
}, open(sys.argv[1], "w"), indent=2)
EOF
"$PY" "$HERE/report.py" "$RAW" "$META" "$OUT"

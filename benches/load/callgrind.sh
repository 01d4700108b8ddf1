#!/usr/bin/env bash
# Instructions per request on Tollgate's data-plane thread, under valgrind's callgrind: stable to
# about 1% run to run where wall-clock numbers on a shared machine are not.
#
#   HOLD=1 benches/load/run.sh &                   # the upstream and the seeded store, held
#   benches/load/callgrind.sh target/release/tollgate [SECONDS]
#
# Runs BIN on a copy of the seeded embedded store with the load run's settings (one worker,
# metering and per-key metrics on, access log off), pinned to PROXY_CPU [0] under callgrind; sends
# wrk -c8 on LOAD_CPU [1] for SECONDS [15] over the active keys; prints the requests served, the
# data-plane thread's instruction count and their ratio. OUT [benches/load/out] is the held run's
# output directory (its hold.txt names the upstream). KEEP=DIR copies callgrind's output files
# there, for callgrind_annotate. H2=1 sends HTTP/2 instead (h2load -c8 -m10, h2c, the key in the
# apiKey parameter, as the load run's h2 phase). KEYSET=unknown sends the seeded unknown keys
# instead (refusals from the negative cache). BODY sends POSTs with that JSON body, as ab.sh's
# BODY (@KEY@: the key in the body). Needs valgrind (apt-get install valgrind).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=held.sh
. "$HERE/held.sh"
BIN=${1:?usage: callgrind.sh BIN [SECONDS]}
SECS=${2:-15}
OUT=${OUT:-$HERE/out}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
command -v valgrind >/dev/null || { echo "callgrind.sh: needs valgrind (apt-get install valgrind)" >&2; exit 1; }
read_hold callgrind.sh
case "${KEYSET:-admitted}" in
  admitted) ;;
  unknown) KEYS=$UNKNOWN ;;
  *) echo "callgrind.sh: KEYSET is admitted or unknown, not $KEYSET" >&2; exit 2 ;;
esac

D=$(mktemp -d /tmp/tollgate-callgrind.XXXXXX)
trap '[ -z "${VG:-}" ] || kill "$VG" 2>/dev/null || true; rm -rf "$D"' EXIT
start_gateway "$D" "$BIN" "$(embedded_store "$D")" \
  valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$D/cg.out"
VG=$GW_PID PORT=$GW_PORT OPS=$GW_OPS
if [ "${H2:-0}" = 1 ]; then
  # HTTP/2 (h2c), as the load run's h2 phase: the key in the apiKey parameter, one URI per key.
  h2_uris "$PORT" "$KEYS" >"$D/uris.txt"
  timeout $((SECS + 60)) taskset -c "$LOAD_CPU" h2load -t1 -c8 -m10 -D "$SECS" -i "$D/uris.txt" >/dev/null
else
  timeout $((SECS + 60)) taskset -c "$LOAD_CPU" wrk -t1 -c8 -d"${SECS}s" -s "$HERE/keys.lua" \
    "http://127.0.0.1:$PORT" -- "$KEYS" "$REQ_PATH" ${BODY:+"$BODY"} >/dev/null
fi
N=$(curl -s "http://127.0.0.1:$OPS/metrics" | awk '/^tollgate_requests_total/ { s += $2 } END { printf "%d\n", s }')
kill -INT "$VG"
wait "$VG" || true
VG=
# The data-plane thread is the one that ran the most instructions.
IR=$(grep -h -m1 '^summary:' "$D"/cg.out* | awk '$2 > m { m = $2 } END { printf "%d\n", m }')
[ "$N" -gt 0 ] || { echo "callgrind.sh: no requests were served" >&2; exit 1; }
if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$D"/cg.out* "$KEEP"/; fi
echo "requests $N  data-plane instructions $IR  per request $((IR / N))"

# Sourced by run.sh and held.sh: the gateway.toml every load run gives Tollgate, its ports, the
# request the loads send, and the CPU time of a process.
#
#   gateway_toml PORT ACCOUNT_PORT OPS_PORT UPSTREAM_PORT STORE_TOML [FLUSH_INTERVAL] [WORKERS] > gateway.toml
#
# STORE_TOML is the body of the [store] section; FLUSH_INTERVAL defaults to 250ms. WORKERS [1] is
# [proxy] workers: one data-plane thread on the one core Tollgate is pinned to, as nginx runs one
# worker; "auto" leaves it to the default (one per core).
gateway_toml() {
  local workers="workers = ${7:-1}"
  [ "${7:-1}" = auto ] && workers="# workers: the default, one per core"
  cat <<EOF
[proxy]
listen = "127.0.0.1:$1"
$workers
[account_api]
listen = "127.0.0.1:$2"
[ops]
listen = "127.0.0.1:$3"
[store]
$5
[metering]
flush_interval = "${6:-250ms}"
[metrics]
per_key = true
# nginx runs with access_log off; Tollgate's refusal log stays on (capped per second).
[logging]
access_sample = 0
# The limiter runs on every request; the limits are set high enough that the load is never refused.
[limits]
parent = { rps = 1000000000, burst = 1000000000 }
child = { rps = 1000000000, burst = 1000000000 }
[[routes]]
prefix = "/whoisserver/WhoisService"
upstream = "http://127.0.0.1:$4"
product = "whois"
credits = 1
EOF
}

# Bodies of its [store] section: Redis on 127.0.0.1:PORT (the seeded tree's prefix), or the
# embedded store at PATH.
redis_store_toml() { printf 'backend = "redis"\nurl = "redis://127.0.0.1:%s/0"\nprefix = "tg"\n' "$1"; }
embedded_store_toml() { printf 'backend = "embedded"\npath = "%s"\n' "$1"; }

# free_ports N: N free ports, held bound together while chosen so that they differ (ports picked
# one at a time can repeat one just released): a gateway's three listeners, nginx's two.
free_ports() {
  python3 -c 'import socket, sys; ss = [socket.socket() for _ in range(int(sys.argv[1]))]; [s.bind(("127.0.0.1", 0)) for s in ss]; print(*(s.getsockname()[1] for s in ss))' "$1"
}

# The request every load sends: the route gateway_toml configures, plus the key (x-api-key from
# keys.lua for wrk; the apiKey parameter for h2load, see h2_uris).
REQ_PATH="/whoisserver/WhoisService?domainName=example.com&outputFormat=JSON"

# h2_uris PORT KEYS_FILE > file: h2load's URI list, one per key. h2load has no per-request headers
# from a file, so its requests carry the key in the query (`apiKey`, the vendor's own convention;
# Tollgate strips it before forwarding).
h2_uris() {
  awk -v base="http://127.0.0.1:$1" -v path="$REQ_PATH" \
    '$0 != "" { print (NR == 1 ? base : "") path "&apiKey=" $0 }' "$2"
}

# cpu_ticks PID: the process's user + system CPU time so far, in clock ticks (/proc).
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }

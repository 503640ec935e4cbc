#!/usr/bin/env bash
# Bounded soak and fault runs. Each scenario stops by itself and ends with a line saying what
# was lost ("LOST 0" is the goal). Only 127.0.0.1 is used; only processes started here are
# stopped (by PID).
#   loadtest/run.sh [--quick] [soak|idle|slow|kill|reload|limits|all]
# `limits` (loadtest/limits.py: rate-limit accuracy in every load shape, and cluster limits on
# a real redis-server) needs wrk and redis-server.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
scenario=all
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    soak|idle|slow|kill|reload|limits|all) scenario="$arg" ;;
    *) echo "usage: $0 [--quick] [soak|idle|slow|kill|reload|limits|all]" >&2; exit 2 ;;
  esac
done
if [ "$quick" = 1 ]; then soak_s=20; load_s=10; idle_n=2000; else soak_s=300; load_s=30; idle_n=10000; fi

cargo build --release --quiet --workspace
bin=target/release/ringgate
driver=target/release/loadtest
work=$(mktemp -d /tmp/ringgate-loadtest.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
command -v curl >/dev/null || { echo "curl is required (apt-get install curl)" >&2; exit 1; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 300); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }
start() { "$@" >>"$work/servers.log" 2>&1 & pids+=($!); echo $!; }

origin_a=$(free_port); origin_b=$(free_port); gw=$(free_port); admin=$(free_port)
pid_a=$(start "$bin" echo --bind "127.0.0.1:$origin_a" --workers 1)
pid_b=$(start "$bin" echo --bind "127.0.0.1:$origin_b" --workers 1)
admin_token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
printf '%s' "$admin_token" >"$work/admin.token"
cat >"$work/ringgate.toml" <<TOML
[server]
workers = 2
[admin]
bind = "127.0.0.1:$admin"
token = "file:admin.token"
[limits]
header_read_timeout = "5s"
max_connections = 100000
max_connections_per_ip = 100000
[[listeners]]
name = "load"
bind = "127.0.0.1:$gw"
[[upstreams]]
name = "echo"
targets = ["127.0.0.1:$origin_a", "127.0.0.1:$origin_b"]
[upstreams.health]
path = "/healthz"
interval = "500ms"
timeout = "250ms"
[[routes]]
name = "all"
upstream = "echo"
retries = 2
TOML
gw_pid=$(start "$bin" run --config "$work/ringgate.toml")
wait_port "$origin_a"; wait_port "$origin_b"; wait_port "$gw"
echo "# $(date -u +%FT%TZ) nproc=$(nproc) quick=$quick gateway pid $gw_pid on 127.0.0.1:$gw"

status=0
run() { echo "## $1"; shift; "$@" || status=1; }

if [ "$scenario" = soak ] || [ "$scenario" = all ]; then
  run "soak: ${soak_s}s at 2000 req/s, 1 in 4 requests a 4 KiB echoed POST" \
    "$driver" soak --target "127.0.0.1:$gw" --rate 2000 --duration "$soak_s" --label soak
fi
if [ "$scenario" = idle ] || [ "$scenario" = all ]; then
  run "idle: $idle_n idle keep-alive connections through ringgate while load runs" \
    "$driver" idle --target "127.0.0.1:$gw" --pid "$gw_pid" --idle "$idle_n" --rate 1000 --duration "$load_s" --label idle-ringgate
  if command -v nginx >/dev/null 2>&1; then
    ng=$(free_port)
    mkdir -p "$work/nginx"
    cat >"$work/nginx.conf" <<NGINX
daemon off;
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  client_body_temp_path $work/nginx;
  proxy_temp_path $work/nginx;
  keepalive_timeout 120s;
  upstream origin { server 127.0.0.1:$origin_a; server 127.0.0.1:$origin_b; keepalive 64; }
  server { listen 127.0.0.1:$ng reuseport;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
NGINX
    ng_pid=$(start nginx -c "$work/nginx.conf" -p "$work")
    wait_port "$ng"
    run "idle: $idle_n idle keep-alive connections through nginx (same run, for comparison)" \
      "$driver" idle --target "127.0.0.1:$ng" --pid "$ng_pid" --idle "$idle_n" --rate 1000 --duration "$load_s" --label idle-nginx
    kill -9 "$ng_pid" 2>/dev/null || true
  fi
fi
if [ "$scenario" = slow ] || [ "$scenario" = all ]; then
  run "slow: 50 clients dribble header bytes (1/s) beside normal load; header_read_timeout 5s" \
    "$driver" slow --target "127.0.0.1:$gw" --slow 50 --rate 1000 --duration "$load_s" --label slow
fi
if [ "$scenario" = kill ] || [ "$scenario" = all ]; then
  echo "## kill: origin A is killed a third of the way in and restarted at two thirds"
  (
    sleep "$((load_s / 3))"; kill -9 "$pid_a" 2>/dev/null || true
    sleep "$((load_s / 3))"; "$bin" echo --bind "127.0.0.1:$origin_a" --workers 1 >>"$work/servers.log" 2>&1 </dev/null &
    echo $! >"$work/restarted.pid"
  ) >/dev/null 2>&1 &
  killer=$!
  "$driver" soak --target "127.0.0.1:$gw" --rate 1000 --duration "$load_s" --label kill || status=1
  wait "$killer" 2>/dev/null || true
  [ -f "$work/restarted.pid" ] && kill -9 "$(cat "$work/restarted.pid")" 2>/dev/null || true
fi
if [ "$scenario" = reload ] || [ "$scenario" = all ]; then
  reloads=$((load_s * 2))
  echo "## reload: $reloads reloads over admin (every 0.5 s), alternating the config with and without an extra listener, upstream and route, during ${load_s}s at 2000 req/s"
  cp "$work/ringgate.toml" "$work/base.toml"
  extra=$(free_port)
  { cat "$work/base.toml"; cat <<TOML
[[listeners]]
name = "extra"
bind = "127.0.0.1:$extra"
[[upstreams]]
name = "b"
targets = ["127.0.0.1:$origin_b"]
[[routes]]
name = "b"
path_prefix = "/b"
upstream = "b"
TOML
  } >"$work/extended.toml"
  (
    applied=0; refused=0
    for i in $(seq 1 "$reloads"); do
      if [ $((i % 2)) = 1 ]; then src=extended; else src=base; fi
      cp "$work/$src.toml" "$work/next.toml" && mv "$work/next.toml" "$work/ringgate.toml"
      code=$(curl -s -o "$work/reload.json" -w '%{http_code}' --max-time 20 -X POST \
        -H "Authorization: Bearer $admin_token" "http://127.0.0.1:$admin/reload" || echo 000)
      if [ "$code" = 200 ]; then applied=$((applied + 1)); else refused=$((refused + 1)); cat "$work/reload.json" >&2; fi
      sleep 0.5
    done
    echo "reload: $applied reloads applied, $refused refused" >"$work/reloads.txt"
  ) &
  reloader=$!
  "$driver" soak --target "127.0.0.1:$gw" --rate 2000 --duration "$load_s" --label reload || status=1
  wait "$reloader" 2>/dev/null || true
  cat "$work/reloads.txt"
  grep -q ' 0 refused' "$work/reloads.txt" || status=1
  cp "$work/base.toml" "$work/ringgate.toml"
fi
if [ "$scenario" = limits ] || [ "$scenario" = all ]; then
  echo "## limits: rate-limit accuracy (global: 2 and 4 shards, three load shapes; cluster: 2 nodes, Redis killed mid-run)"
  if [ "$quick" = 1 ]; then periods=3; else periods=10; fi
  python3 loadtest/limits.py --periods "$periods" || status=1
fi
exit "$status"

#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind (stable on a noisy machine).
# Runs the gateway (1 worker) under callgrind twice, with a small and a large number of
# keep-alive GETs through it to `ringgate echo`; the difference divided by the extra requests
# removes start-up and shutdown. valgrind 3.19+ runs the io_uring driver, so this is the real path.
#   bench/callgrind.sh [SMALL] [LARGE]
#   RINGGATE_BIN=/path/to/other/ringgate bench/callgrind.sh   # measure another build
#   CG_PATH=/bytes/65536 bench/callgrind.sh 100 600           # another request (64 KiB bodies)
set -euo pipefail
cd "$(dirname "$0")/.."
small=${1:-500}
large=${2:-5500}
command -v valgrind >/dev/null || { echo "valgrind is required (apt-get install valgrind)" >&2; exit 1; }
bin=${RINGGATE_BIN:-target/release/ringgate}
[ -n "${RINGGATE_BIN:-}" ] || cargo build --release --quiet
work=$(mktemp -d /tmp/ringgate-callgrind.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
[ -n "${KEEP:-}" ] && trap 'for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; echo "kept $work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
origin=$(free_port)
"$bin" echo --bind "127.0.0.1:$origin" >/dev/null 2>&1 & pids+=($!)

count_for() {
  local n=$1 port out
  port=$(free_port)
  cat >"$work/rg.toml" <<TOML
[server]
workers = 1
pin_cores = false
[[listeners]]
name = "cg"
bind = "127.0.0.1:$port"
[[upstreams]]
name = "o"
targets = ["127.0.0.1:$origin"]
[[routes]]
name = "all"
upstream = "o"
TOML
  valgrind --tool=callgrind --callgrind-out-file="$work/cg.$n" "$bin" run --config "$work/rg.toml" >/dev/null 2>"$work/vg.$n" &
  local vg=$!
  pids+=($vg)
  python3 - "$port" "$n" "${CG_PATH:-/}" <<'PY'
import socket, sys, time
port, n, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
deadline = time.time() + 120
while True:
    try:
        s = socket.create_connection(("127.0.0.1", port)); break
    except OSError:
        if time.time() > deadline: raise
        time.sleep(0.2)
req = b"GET " + path.encode() + b" HTTP/1.1\r\nHost: bench\r\n\r\n"
for _ in range(n):
    s.sendall(req)
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, body = buf.split(b"\r\n\r\n", 1)
    length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
    while len(body) < length:
        body += s.recv(65536)
s.close()
PY
  kill -TERM "$vg"; wait "$vg" 2>/dev/null || true
  grep -E "^summary:|^totals:" "$work/cg.$n" | head -1 | awk '{print $2}'
}
a=$(count_for "$small")
b=$(count_for "$large")
echo "instructions: $small requests -> $a, $large requests -> $b"
echo "instructions per proxied request: $(( (b - a) / (large - small) ))"

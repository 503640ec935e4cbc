#!/usr/bin/env bash
# ringgate vs nginx vs HAProxy vs the origin alone, same machine, same run, interleaved rounds.
#   bench/run.sh            # full table (under 20 minutes)
#   bench/run.sh --quick    # short runs (about 3 minutes)
# Other options: --rounds N --duration S --workers N --scenarios a,b --targets x,y --json FILE
#   --origin echo|nginx (nginx `return 200` as a neutral origin) --loadgen-threads N (wrk threads)
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
command -v nginx >/dev/null 2>&1 || need_apt+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || need_apt+=(haproxy)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
command -v pgrep >/dev/null 2>&1 || need_apt+=(procps)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}"
fi
# nginx/haproxy packages start system services on :80; the bench uses its own instances only.
if ! command -v oha >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/oha" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v oha >/dev/null 2>&1; then
  echo "# installing oha (fixed-rate scenario) with cargo; skipped if this fails" >&2
  cargo install oha --locked >/dev/null 2>&1 || echo "# oha install failed: fixed-rate will be skipped" >&2
  export PATH="$HOME/.cargo/bin:$PATH"
fi
ulimit -n 65536 2>/dev/null || true
cargo build --release --quiet
exec python3 bench/bench.py "$@"

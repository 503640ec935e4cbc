#!/usr/bin/env python3
"""How far a rate limit is exceeded under load: one key (`key = "route"`), hammered by wrk over
64 keep-alive connections spread by the kernel over every shard, for each scope. Admitted
requests are read from /metrics (`ringgate_ratelimit_admitted_total`) and compared with the
exact allowance, burst + 1 + rate * seconds, and with the documented worst case for a global
limit, (S - 1) * (burst + 1 + rate * 2 * tick / period).

    python3 bench/limit_overshoot.py [--duration 10] [--rate 1000] [--burst 50]

Everything runs on 127.0.0.1 and stops by itself; only the processes started here are killed.
"""

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

from loopback import free_port, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "ringgate")


def metric(admin, series):
    with socket.create_connection(("127.0.0.1", admin), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        text = b""
        while chunk := s.recv(65536):
            text += chunk
    for line in text.decode().splitlines():
        if line.startswith(series + " "):
            return int(line.split()[-1])
    return 0


def run(scope, args, workdir, origin):
    port, admin = free_port(), free_port()
    conf = os.path.join(workdir, f"{scope}.toml")
    with open(conf, "w") as f:
        f.write(f"""
[server]
workers = {args.workers}
[admin]
bind = "127.0.0.1:{admin}"
[limits]
max_connections_per_ip = 100000
[rate_limits.one]
key = "route"
rate = {args.rate}
period = "1s"
burst = {args.burst}
scope = "{scope}"
[[listeners]]
name = "bench"
bind = "127.0.0.1:{port}"
[[upstreams]]
name = "origin"
targets = ["127.0.0.1:{origin}"]
[[routes]]
name = "all"
upstream = "origin"
rate_limits = ["one"]
""")
    proc = subprocess.Popen([BIN, "run", "--config", conf], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        if not wait_port(port):
            sys.exit(f"ringgate did not start ({scope})")
        started = time.time()
        subprocess.run(["wrk", "-t", "2", "-c", "64", "-d", f"{args.duration}s",
                        f"http://127.0.0.1:{port}/"], check=True, capture_output=True,
                       timeout=args.duration + 30)
        elapsed = time.time() - started
        time.sleep(0.2)
        admitted = metric(admin, 'ringgate_ratelimit_admitted_total{policy="one"}')
        rejected = metric(admin, 'ringgate_ratelimit_rejected_total{policy="one"}')
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    allowed = args.burst + 1 + args.rate * elapsed
    return admitted, rejected, allowed


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--rate", type=int, default=1000)
    p.add_argument("--burst", type=int, default=50)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    if not os.path.exists(BIN):
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    workdir = tempfile.mkdtemp(prefix="rg-overshoot-")
    origin = free_port()
    echo = subprocess.Popen([BIN, "echo", "--bind", f"127.0.0.1:{origin}", "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        if not wait_port(origin):
            sys.exit("origin did not start")
        tick = 0.005
        bound = (args.workers - 1) * (args.burst + 1 + args.rate * 2 * tick)
        print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}  nproc={os.cpu_count()}  workers={args.workers}"
              f"  rate={args.rate}/s burst={args.burst}  wrk -t2 -c64 -d{args.duration}s")
        print(f"{'scope':8} {'admitted':>9} {'refused':>9} {'allowed':>9} {'over':>7} {'over %':>7}  bound")
        for scope in ("shard", "global"):
            admitted, rejected, allowed = run(scope, args, workdir, origin)
            over = admitted - allowed
            shown = f"{bound:.0f}" if scope == "global" else "-"
            print(f"{scope:8} {admitted:9d} {rejected:9d} {allowed:9.0f} {over:7.0f} "
                  f"{100 * over / allowed:6.1f}%  {shown}")
    finally:
        os.killpg(echo.pid, signal.SIGKILL)
        echo.wait()


if __name__ == "__main__":
    main()

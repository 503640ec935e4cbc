#!/usr/bin/env python3
"""The `limits` load scenario: how exact rate limits are under load, for the figures in PERF.md.

A global policy of R requests per second (plus burst) on one key, driven for 10 periods, with
2 and 4 shards, in three shapes: uniform (wrk, 64 connections over every shard), one
connection (one shard), and load that moves from one shard to another half way (a client
that switches to a connection the kernel gave to another shard). Then a cluster policy shared
by two ringgate processes through a real redis-server: steady, and with Redis killed a third
of the way in and restarted at two thirds (on_redis_down = "local").

Each line compares the admitted count (from /metrics) with the exact allowance,
burst + 1 + R * seconds. Target: within 1 % (global) and 2 % (cluster), plus the documented
bound. Only 127.0.0.1 is used; only processes started here are stopped (by PID).

    python3 loadtest/limits.py [--rate 1000] [--burst 50] [--periods 10]
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
from limit_overshoot import BIN, free_port, metric, wait_port  # noqa: E402

ADMITTED = 'ringgate_ratelimit_admitted_total{policy="one"}'


class Procs:
    """Processes started here, killed by PID at the end."""

    def __init__(self):
        self.procs = []

    def start(self, argv):
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        self.procs.append(p)
        return p

    def stop(self, p):
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()

    def stop_all(self):
        for p in self.procs:
            self.stop(p)


def gateway(procs, workdir, workers, origin, scope, args, redis_port=None, down="local"):
    port, admin = free_port(), free_port()
    cluster = "" if redis_port is None else (
        f'[cluster]\nredis = "redis://127.0.0.1:{redis_port}"\nsync_interval = "100ms"\n'
        f'on_redis_down = "{down}"\n')
    conf = os.path.join(workdir, f"gw-{port}.toml")
    with open(conf, "w") as f:
        f.write(f"""
[server]
workers = {workers}
[admin]
bind = "127.0.0.1:{admin}"
[limits]
max_connections_per_ip = 100000
{cluster}
[rate_limits.one]
key = "route"
rate = {args.rate}
period = "1s"
burst = {args.burst}
scope = "{scope}"
[[listeners]]
name = "l"
bind = "127.0.0.1:{port}"
[[upstreams]]
name = "origin"
targets = ["127.0.0.1:{origin}"]
[[routes]]
name = "all"
upstream = "origin"
rate_limits = ["one"]
""")
    p = procs.start([BIN, "run", "--config", conf])
    if not wait_port(port):
        sys.exit("ringgate did not start")
    return p, port, admin


def wrk(port, seconds, conns, threads):
    subprocess.run(["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{seconds}s",
                    f"http://127.0.0.1:{port}/"], check=True, capture_output=True,
                   timeout=seconds + 30)


class Client:
    """One keep-alive connection, sequential GETs."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def get(self):
        self.s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.s.recv(65536)
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        while len(rest) < length:
            rest += self.s.recv(65536)
        self.buf = rest[length:]
        return int(head.split(b" ")[1])


def shard_of(client, admin):
    """The shard serving `client`'s connection (whose exchange count moves on its request)."""
    def exchanges():
        import json
        with socket.create_connection(("127.0.0.1", admin), timeout=5) as s:
            s.sendall(b"GET /shards HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        body = data.partition(b"\r\n\r\n")[2]
        return [sh["exchanges"] for sh in json.loads(body)["shards"]]
    before = exchanges()
    client.get()
    after = exchanges()
    moved = [i for i, (a, b) in enumerate(zip(before, after)) if b > a]
    return moved[0] if moved else None


def hammer(clients, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        for c in clients:
            c.get()


def moving(port, admin, seconds):
    first = Client(port)
    shard = shard_of(first, admin)
    other = None
    for _ in range(64):
        c = Client(port)
        if shard_of(c, admin) != shard:
            other = c
            break
    if other is None:
        sys.exit("no connection landed on another shard")
    hammer([first], seconds / 2)
    hammer([other], seconds / 2)


def line(label, admitted, allowed, bound, out):
    over = admitted - allowed
    text = (f"{label:34} admitted {admitted:7d}  allowed {allowed:8.0f}  "
            f"diff {over:+6.0f} ({100 * over / allowed:+5.2f} %)  bound {bound:.0f}")
    print(text, flush=True)
    out.append(text)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rate", type=int, default=1000)
    p.add_argument("--burst", type=int, default=50)
    p.add_argument("--periods", type=int, default=10)
    args = p.parse_args()
    workdir = tempfile.mkdtemp(prefix="rg-limits-")
    procs = Procs()
    out = []
    tick = 0.005
    try:
        origin = free_port()
        procs.start([BIN, "echo", "--bind", f"127.0.0.1:{origin}", "--workers", "1"])
        wait_port(origin)
        print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}  nproc={os.cpu_count()}  "
              f"rate={args.rate}/s burst={args.burst}  {args.periods} periods per run")
        seconds = args.periods
        for workers in (2, 4):
            bound = (workers - 1) * (args.burst + 1 + args.rate * 2 * tick)
            for shape in ("uniform", "one connection", "moving"):
                gw, port, admin = gateway(procs, workdir, workers, origin, "global", args)
                started = time.time()
                if shape == "uniform":
                    wrk(port, seconds, 64, 2)
                elif shape == "one connection":
                    wrk(port, seconds, 1, 1)
                else:
                    moving(port, admin, seconds)
                elapsed = time.time() - started
                time.sleep(0.2)
                allowed = args.burst + 1 + args.rate * elapsed
                line(f"global, {workers} shards, {shape}", metric(admin, ADMITTED), allowed,
                     bound, out)
                procs.stop(gw)
        # Cluster: two processes, one Redis.
        redis_port = free_port()
        redis = procs.start(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no"])
        wait_port(redis_port)
        bound = args.burst + 1 + args.rate * 2 * 0.1
        for phase in ("steady", "redis killed at 1/3, back at 2/3"):
            nodes = [gateway(procs, workdir, 2, origin, "cluster", args, redis_port)
                     for _ in range(2)]
            time.sleep(1.0)  # both nodes synced once (heartbeats counted)
            started = time.time()
            runs = [threading.Thread(target=wrk, args=(port, seconds, 32, 1))
                    for _, port, _ in nodes]
            for r in runs:
                r.start()
            if phase != "steady":
                time.sleep(seconds / 3)
                procs.stop(redis)
                time.sleep(seconds / 3)
                redis = procs.start(["redis-server", "--port", str(redis_port), "--bind",
                                     "127.0.0.1", "--save", "", "--appendonly", "no"])
            for r in runs:
                r.join()
            elapsed = time.time() - started
            time.sleep(0.3)
            admitted = sum(metric(admin, ADMITTED) for _, _, admin in nodes)
            allowed = args.burst + 1 + args.rate * elapsed
            line(f"cluster, 2 nodes x 2 shards, {phase}", admitted, allowed, bound, out)
            for gw, _, _ in nodes:
                procs.stop(gw)
    finally:
        procs.stop_all()


if __name__ == "__main__":
    main()

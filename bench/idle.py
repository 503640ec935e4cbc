#!/usr/bin/env python3
"""What an idle gateway costs: CPU time and wake-ups (voluntary context switches) per second,
per thread, over a quiet spell with no traffic at all.

    python3 bench/idle.py [--binary target/release/ringgate] [--before OLD_BINARY] [--seconds 20]

Each binary runs the same config (2 shards, one plain listener, one upstream on a local
`ringgate echo` without health checks, an access log) on free loopback ports; nothing
connects to it while it is measured. Reads /proc only; stops everything it started."""

import argparse
import os
import signal
import socket
import subprocess
import tempfile
import time

from loopback import free_port, wait_port

CLK_TCK = os.sysconf("SC_CLK_TCK")


def threads(pid):
    """name -> (cpu ticks, voluntary switches), summed over threads of one name."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                status = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        ticks = int(fields[11]) + int(fields[12])
        switches = int(next(l.split()[1] for l in status.splitlines()
                            if l.startswith("voluntary_ctxt_switches")))
        t, s = out.get(name, (0, 0))
        out[name] = (t + ticks, s + switches)
    return out


def measure(binary, seconds, workdir, origin_port):
    port = free_port()
    conf = os.path.join(workdir, f"idle-{port}.toml")
    with open(conf, "w") as f:
        f.write(f"""[server]
workers = 2

[[listeners]]
name = "idle"
bind = "127.0.0.1:{port}"

[[upstreams]]
name = "echo"
targets = ["127.0.0.1:{origin_port}"]

[[routes]]
name = "all"
upstream = "echo"

[access_log]
path = "{workdir}/access-{port}.log"
""")
    proc = subprocess.Popen([binary, "run", "--config", conf],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not wait_port(port):
            raise SystemExit(f"nothing listens on {port}")
        # One request, so the connection paths have run once, then quiet.
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            while s.recv(65536):
                pass
        time.sleep(3)
        before = threads(proc.pid)
        time.sleep(seconds)
        after = threads(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    rows = []
    for name in sorted(after):
        t0, s0 = before.get(name, (0, 0))
        t1, s1 = after[name]
        rows.append((name, (t1 - t0) / CLK_TCK / seconds * 100, (s1 - s0) / seconds))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/ringgate")
    ap.add_argument("--before")
    ap.add_argument("--seconds", type=float, default=20)
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="ringgate-idle-")
    origin_port = free_port()
    origin = subprocess.Popen([args.binary, "echo", "--bind", f"127.0.0.1:{origin_port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not wait_port(origin_port):
            raise SystemExit(f"nothing listens on {origin_port}")
        runs = [("ringgate", args.binary)]
        if args.before:
            runs.append(("rg-before", args.before))
        for label, binary in runs:
            rows = measure(binary, args.seconds, workdir, origin_port)
            total_cpu = sum(r[1] for r in rows)
            total_wake = sum(r[2] for r in rows)
            print(f"# {label}: {binary}, idle {args.seconds:.0f} s")
            print(f"{'thread':<16} {'cpu %':>8} {'wake-ups/s':>11}")
            for name, cpu, wake in rows:
                print(f"{name:<16} {cpu:8.3f} {wake:11.1f}")
            print(f"{'total':<16} {total_cpu:8.3f} {total_wake:11.1f}")
    finally:
        origin.kill()
        origin.wait()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Syscalls per proxied request, ringgate vs nginx (issue #17): each proxy runs one worker
(nginx: master off) in front of `ringgate echo`; `strace -f -c` is attached while a client
sends N requests one after another, once with a small and once with a large N, and the
difference of the counts divided by the extra requests removes attaching and detaching.

    python3 bench/syscalls.py [--small 200] [--large 2200] [--shape keepalive|newconn]

keepalive: one client connection carries every request; newconn: a new connection and
`Connection: close` per request. For ringgate the counts are io_uring_enter calls and the
rest (each io_uring_enter may submit and reap several operations: strace cannot see how many).
Only 127.0.0.1; every process started here is stopped by PID."""

import argparse
import collections
import os
import signal
import socket
import subprocess
import tempfile
import time

from loopback import free_port, wait_port

HERE = os.path.dirname(os.path.abspath(__file__))
RINGGATE = os.path.join(os.path.dirname(HERE), "target", "release", "ringgate")


def read_response(s, buf):
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit("connection closed mid-response")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        rest += s.recv(65536)
    return rest[length:]


def drive(port, n, shape):
    if shape == "keepalive":
        s = socket.create_connection(("127.0.0.1", port))
        buf = b""
        for _ in range(n):
            s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
            buf = read_response(s, buf)
        s.close()
    else:
        for _ in range(n):
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                read_response(s, b"")


def counted(pid, port, n, shape, out):
    strace = subprocess.Popen(["strace", "-f", "-c", "-o", out, "-p", str(pid)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached to every thread
    drive(port, n, shape)
    time.sleep(0.5)
    strace.send_signal(signal.SIGINT)
    strace.wait(20)
    calls = collections.Counter()
    with open(out) as f:
        for line in f:
            parts = line.split()
            # % time, seconds, usecs/call, calls, [errors], syscall
            if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
                calls[parts[-1]] += int(parts[3])
    return calls


def start(name, argv, port, workdir):
    log = open(os.path.join(workdir, f"{name}.log"), "w")
    proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
    if not wait_port(port):
        raise SystemExit(f"nothing listens on {port}")
    return proc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=200)
    ap.add_argument("--large", type=int, default=2200)
    ap.add_argument("--shape", choices=["keepalive", "newconn"], default="keepalive")
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="ringgate-syscalls-")
    os.chmod(workdir, 0o755)
    origin_port, rg_port, nginx_port = free_port(), free_port(), free_port()
    procs = []
    try:
        procs.append(start("origin", [RINGGATE, "echo", "--bind", f"127.0.0.1:{origin_port}"],
                           origin_port, workdir))
        rg_conf = os.path.join(workdir, "rg.toml")
        with open(rg_conf, "w") as f:
            f.write(f"""[server]
workers = 1
pin_cores = false
[[listeners]]
name = "s"
bind = "127.0.0.1:{rg_port}"
[[upstreams]]
name = "o"
targets = ["127.0.0.1:{origin_port}"]
[[routes]]
name = "all"
upstream = "o"
""")
        nginx_conf = os.path.join(workdir, "nginx.conf")
        with open(nginx_conf, "w") as f:
            f.write(f"""daemon off;
master_process off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {workdir}/b;
  proxy_temp_path {workdir}/p;
  fastcgi_temp_path {workdir}/f;
  uwsgi_temp_path {workdir}/u;
  scgi_temp_path {workdir}/s;
  keepalive_requests 1000000;
  upstream origin {{ server 127.0.0.1:{origin_port}; keepalive 16; }}
  server {{
    listen 127.0.0.1:{nginx_port};
    location / {{ proxy_pass http://origin; proxy_http_version 1.1;
                 proxy_set_header Connection ""; }}
  }}
}}
""")
        targets = [("ringgate", [RINGGATE, "run", "--config", rg_conf], rg_port),
                   ("nginx", ["nginx", "-c", nginx_conf, "-p", workdir], nginx_port)]
        print(f"# syscalls per request, shape={args.shape}, N={args.large}-{args.small}, "
              f"one worker each, origin ringgate echo")
        for name, argv, port in targets:
            proc = start(name, argv, port, workdir)
            procs.append(proc)
            drive(port, 50, args.shape)  # warm: pooled upstream connection, caches
            small = counted(proc.pid, port, args.small, args.shape,
                            os.path.join(workdir, f"{name}.small"))
            large = counted(proc.pid, port, args.large, args.shape,
                            os.path.join(workdir, f"{name}.large"))
            extra = args.large - args.small
            per = {k: (large[k] - small[k]) / extra for k in set(large) | set(small)}
            per = {k: v for k, v in per.items() if v >= 0.01}
            total = sum(per.values())
            detail = ", ".join(f"{k} {v:.2f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1]))
            print(f"{name:<9} {total:6.2f} per request: {detail}")
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


if __name__ == "__main__":
    main()

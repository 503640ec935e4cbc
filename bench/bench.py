#!/usr/bin/env python3
"""ringgate vs nginx vs HAProxy vs the origin alone, on one machine, in one run.

Rounds are interleaved (A B C D, A B C D, ...) so machine drift hits every target alike; each
cell of the table is the median over the rounds. Only 127.0.0.1 is ever a target, every load
run is bounded in time, and only processes this script started are stopped (by PID).
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import gateway_auth
from loopback import free_port, wait_port

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RINGGATE = os.path.join(ROOT, "target", "release", "ringgate")
CLK_TCK = os.sysconf("SC_CLK_TCK")

RESULT_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT requests=%d duration_us=%d errors=%d non2xx=%d p50=%d p99=%d p999=%d\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"""

# name -> (path, connections, extra lua, description)
SCENARIOS = {
    "get-8": ("/", 8, "", "small GET, keep-alive, 8 connections (light load: latency)"),
    "get-64": ("/", 64, "", "small GET, keep-alive, 64 connections"),
    "get-256": ("/", 256, "", "small GET, keep-alive, 256 connections"),
    "get-4k": ("/bytes/4096", 64, "", "4 KiB response, 64 connections"),
    "get-64k": ("/bytes/65536", 64, "", "64 KiB response, 64 connections"),
    "post-64k": ("/bytes/2", 64,
                 'wrk.method = "POST"\nwrk.body = string.rep("x", 65536)\n'
                 'wrk.headers["Content-Type"] = "application/octet-stream"\n',
                 "64 KiB POST body, 64 connections"),
    "new-conn": ("/", 64, 'wrk.headers["Connection"] = "close"\n',
                 "new TCP connection per request, 64 concurrent"),
    "https-get-64": ("/", 64, "", "small GET over TLS, keep-alive, 64 connections"),
    "https-new-conn": ("/", 64, 'wrk.headers["Connection"] = "close"\n',
                       "new TLS connection (full handshake) per request, 64 concurrent"),
    # Gateway auth (opt-in with --scenarios; ringgate and HAProxy only, nginx OSS has no JWT):
    # the lua comes from gateway_auth.prepare.
    "gw-jwt": ("/jwt/", 64, None, "RS256 JWT on every request, keep-alive (cache hits), 64 conns"),
    "gw-jwt-unique": ("/jwt/", 64, None, "a different RS256 JWT per request (every one verified)"),
    "gw-key": ("/key/", 64, None, "API key on every request, keep-alive, 64 connections"),
    "gw-perimeter": ("/perimeter/", 64, "",
                     "route with ip_allow + ip_deny and an injected header, 64 connections"),
    "gw-limit": ("/limited/", 64, "",
                 "route with a global GCRA limit keyed by client IP (never refusing), 64 conns"),
    "gw-limit-reject": ("/reject/", 64, "",
                        "every request over a per-IP limit of 1/s: 429s (nginx: limit_req)"),
}
GATEWAY_SCENARIOS = {"gw-jwt": {"ringgate", "haproxy"}, "gw-jwt-unique": {"ringgate", "haproxy"},
                     "gw-key": {"ringgate"}, "gw-perimeter": {"ringgate"},
                     "gw-limit": {"ringgate"}, "gw-limit-reject": {"ringgate", "nginx"}}
DEFAULT_SCENARIOS = [s for s in SCENARIOS if s not in GATEWAY_SCENARIOS]
FIXED_RATE = "fixed-rate"
TARGETS = ["direct", "ringgate", "nginx", "haproxy"]
# Opt-in (--targets): ringgate balancing over two entries of the same origin, one process per
# algorithm, to show what the choice itself costs.
BALANCE_TARGETS = {"rg-round_robin": "round_robin", "rg-least_conn": "least_conn",
                   "rg-p2c_ewma": "p2c_ewma"}
# Opt-in: RINGGATE_BEFORE=/path/to/older/ringgate adds target "rg-before" (same config as
# "ringgate", plain HTTP only) to measure a change before/after in one run.
RINGGATE_BEFORE = os.environ.get("RINGGATE_BEFORE")
# Opt-in: ringgate and nginx with their access log on (JSON lines / nginx's combined, to a
# file in the work directory), to show what logging costs each.
LOG_TARGETS = ["rg-log", "nginx-log"]


def process_tree(pid):
    """pid and all its descendants (nginx and haproxy fork workers)."""
    pids = [pid]
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        for child in out.split():
            pids.extend(process_tree(int(child)))
    except FileNotFoundError:
        pass
    return pids


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


def is_https(scenario):
    return scenario.startswith("https-")


class Server:
    def __init__(self, name, argv, port, workdir, tls_port=None):
        self.name, self.port, self.tls_port = name, port, tls_port
        self.log = open(os.path.join(workdir, f"{name}.log"), "w")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=self.log, start_new_session=True)
        for p in (port, tls_port):
            if p and not wait_port(p):
                self.stop()
                raise SystemExit(f"{name} did not start; see {self.log.name}")

    def pids(self):
        return process_tree(self.proc.pid)

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self.log.close()


def make_certificate(workdir):
    """One self-signed ECDSA P-256 certificate every TLS listener serves."""
    cert, key = os.path.join(workdir, "bench.pem"), os.path.join(workdir, "bench.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-addext", "basicConstraints=critical,CA:FALSE",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    combined = os.path.join(workdir, "bench-haproxy.pem")
    with open(combined, "w") as out:
        for path in (cert, key):
            with open(path) as f:
                out.write(f.read())
    return cert, key, combined


def nginx_conf(workdir, port, origin_port, workers, tls_port, cert, key, log=False,
               name="nginx"):
    access_log = f"{workdir}/{name}-access.log combined" if log else "off"
    return f"""
daemon off;
master_process on;
worker_processes {workers};
pid {workdir}/{name}.pid;
error_log {workdir}/{name}-error.log warn;
events {{ worker_connections 16384; }}
http {{
  access_log {access_log};
  client_body_temp_path {workdir}/nginx-body;
  proxy_temp_path {workdir}/nginx-proxy;
  fastcgi_temp_path {workdir}/nginx-fcgi;
  uwsgi_temp_path {workdir}/nginx-uwsgi;
  scgi_temp_path {workdir}/nginx-scgi;
  keepalive_requests 1000000;
  client_max_body_size 10m;
  client_body_buffer_size 128k;
  upstream origin {{ server 127.0.0.1:{origin_port}; keepalive 256; keepalive_requests 1000000; }}
  server {{
    listen 127.0.0.1:{port} reuseport;
    listen 127.0.0.1:{tls_port} ssl reuseport;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
    # gw-limit-reject: one request per second per client address, the rest answered 429.
    location /reject/ {{
      limit_req zone=bench_reject;
      limit_req_status 429;
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
  limit_req_zone $binary_remote_addr zone=bench_reject:10m rate=1r/s;
}}
"""


def nginx_origin_conf(workdir, port, workers):
    """A neutral origin: nginx answering from memory (`return`) and static files for the
    body-size scenarios, with its usual response headers."""
    www = os.path.join(workdir, "origin-www")
    os.makedirs(os.path.join(www, "bytes"), exist_ok=True)
    # nginx's workers run as an unprivileged user: they must be able to read the files.
    for d in (workdir, www, os.path.join(www, "bytes")):
        os.chmod(d, 0o755)
    for size in (4096, 65536):
        with open(os.path.join(www, "bytes", str(size)), "wb") as f:
            f.write(b"x" * size)
    return f"""
daemon off;
master_process on;
worker_processes {workers};
pid {workdir}/origin-nginx.pid;
error_log {workdir}/origin-nginx-error.log warn;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  client_body_temp_path {workdir}/origin-body;
  proxy_temp_path {workdir}/origin-proxy;
  fastcgi_temp_path {workdir}/origin-fcgi;
  uwsgi_temp_path {workdir}/origin-uwsgi;
  scgi_temp_path {workdir}/origin-scgi;
  keepalive_requests 1000000;
  client_max_body_size 10m;
  server {{
    listen 127.0.0.1:{port} reuseport;
    location = / {{ return 200 "hello from nginx\n"; }}
    location = /bytes/2 {{ return 200 "xx"; }}
    location /bytes/ {{ root {www}; }}
    location /jwt/ {{ return 200 "ok\n"; }}
    location /key/ {{ return 200 "ok\n"; }}
    location / {{ return 200 "ok\n"; }}
  }}
}}
"""


def haproxy_conf(port, origin_port, workers, tls_port, combined_pem, rules=""):
    return f"""
global
  nbthread {workers}
  maxconn 4096
defaults
  mode http
  timeout connect 1s
  timeout client 60s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:{port}
  bind 127.0.0.1:{tls_port} ssl crt {combined_pem} ssl-min-ver TLSv1.2
{rules}  default_backend be
backend be
  server origin 127.0.0.1:{origin_port}
"""


def ringgate_conf(port, origin_port, workers, tls=None, balance=None, older=False):
    """ringgate's bench config. `tls`: (port, cert, key) for an HTTPS listener; `balance`: two
    entries of the same origin under that algorithm; `older`: only keys an older binary (the
    `rg-before` target) knows."""
    targets = (f'["127.0.0.1:{origin_port}"]' if balance is None else
               f'["127.0.0.1:{origin_port}", "127.0.0.1:{origin_port}"]\nbalance = "{balance}"')
    per_ip = "" if older else "max_connections_per_ip = 100000\n"
    tls_listener = "" if tls is None else (
        f'[[listeners]]\nname = "bench-tls"\nbind = "127.0.0.1:{tls[0]}"\n'
        f'[listeners.tls]\ncertificates = [{{ cert = "{tls[1]}", key = "{tls[2]}" }}]\n')
    auth = "" if older or AUTH is None else gateway_auth.ringgate_routes(AUTH)
    return f"""
[server]
workers = {workers}
[limits]
max_connections = 100000
{per_ip}[[listeners]]
name = "bench"
bind = "127.0.0.1:{port}"
{tls_listener}[[upstreams]]
name = "origin"
targets = {targets}
max_idle_connections = 256
[[routes]]
name = "all"
upstream = "origin"
{auth}"""


# Keys, tokens and scripts of the gateway-auth scenarios (set in start_each).
AUTH = None
# The origin every proxy forwards to: "echo" (`ringgate echo`) or "nginx" (`return 200`, a
# neutral origin with nginx's usual response headers). Set from --origin.
ORIGIN = "echo"


def start_all(workdir, workers, wanted):
    servers = {}
    try:
        return start_each(workdir, workers, servers, wanted)
    except BaseException:
        for server in servers.values():
            server.stop()
        raise


def start_each(workdir, workers, servers, wanted):
    ports = {t: free_port() for t in TARGETS + list(BALANCE_TARGETS) + ["rg-before"] + LOG_TARGETS}
    tls_ports = {t: free_port() for t in ports if t != "direct"}
    cert, key, combined = make_certificate(workdir)
    global AUTH
    AUTH = gateway_auth.prepare(workdir)
    origin_port = ports["direct"]
    if ORIGIN == "nginx":
        conf = os.path.join(workdir, "origin-nginx.conf")
        with open(conf, "w") as f:
            f.write(nginx_origin_conf(workdir, origin_port, workers))
        servers["direct"] = Server("origin", ["nginx", "-c", conf, "-p", workdir], origin_port,
                                   workdir)
    else:
        servers["direct"] = Server("origin", [RINGGATE, "echo", "--bind",
                                              f"127.0.0.1:{origin_port}", "--workers",
                                              str(workers)], origin_port, workdir)
    rg_conf = os.path.join(workdir, "ringgate.toml")
    with open(rg_conf, "w") as f:
        f.write(ringgate_conf(ports["ringgate"], origin_port, workers,
                              (tls_ports["ringgate"], cert, key)))
    servers["ringgate"] = Server("ringgate", [RINGGATE, "run", "--config", rg_conf],
                                 ports["ringgate"], workdir, tls_ports["ringgate"])
    if "rg-log" in wanted:
        conf = os.path.join(workdir, "rg-log.toml")
        with open(conf, "w") as f:
            f.write(ringgate_conf(ports["rg-log"], origin_port, workers)
                    + f'[access_log]\npath = "{workdir}/rg-access.log"\nformat = "json"\n')
        servers["rg-log"] = Server("rg-log", [RINGGATE, "run", "--config", conf],
                                   ports["rg-log"], workdir)
    if "nginx-log" in wanted and shutil.which("nginx"):
        conf = os.path.join(workdir, "nginx-log.conf")
        with open(conf, "w") as f:
            f.write(nginx_conf(workdir, ports["nginx-log"], origin_port, workers,
                               tls_ports["nginx-log"], cert, key, log=True, name="nginx-log"))
        servers["nginx-log"] = Server("nginx-log", ["nginx", "-c", conf, "-p", workdir],
                                      ports["nginx-log"], workdir, tls_ports["nginx-log"])
    if RINGGATE_BEFORE and "rg-before" in wanted:
        conf = os.path.join(workdir, "rg-before.toml")
        with open(conf, "w") as f:
            f.write(ringgate_conf(ports["rg-before"], origin_port, workers, older=True))
        servers["rg-before"] = Server("rg-before", [RINGGATE_BEFORE, "run", "--config", conf],
                                      ports["rg-before"], workdir)
    for name, balance in BALANCE_TARGETS.items():
        if name not in wanted:
            continue
        conf = os.path.join(workdir, f"{name}.toml")
        with open(conf, "w") as f:
            f.write(ringgate_conf(ports[name], origin_port, workers,
                                  (tls_ports[name], cert, key), balance))
        servers[name] = Server(name, [RINGGATE, "run", "--config", conf], ports[name], workdir,
                               tls_ports[name])
    if shutil.which("nginx"):
        conf = os.path.join(workdir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(nginx_conf(workdir, ports["nginx"], origin_port, workers, tls_ports["nginx"],
                               cert, key))
        servers["nginx"] = Server("nginx", ["nginx", "-c", conf, "-p", workdir], ports["nginx"],
                                  workdir, tls_ports["nginx"])
    if shutil.which("haproxy"):
        conf = os.path.join(workdir, "haproxy.cfg")
        with open(conf, "w") as f:
            f.write(haproxy_conf(ports["haproxy"], origin_port, workers, tls_ports["haproxy"],
                                 combined, gateway_auth.haproxy_rules(AUTH)))
        servers["haproxy"] = Server("haproxy", ["haproxy", "-f", conf], ports["haproxy"], workdir,
                                    tls_ports["haproxy"])
    return servers


def run_wrk(server, scenario, duration, threads, workdir):
    path, conns, lua, _ = SCENARIOS[scenario]
    scheme, port = ("https", server.tls_port) if is_https(scenario) else ("http", server.port)
    script = os.path.join(workdir, f"{scenario}.lua")
    if lua is None:
        lua = AUTH["scripts"][scenario]
    with open(script, "w") as f:
        f.write(lua + RESULT_LUA)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--timeout", "5s", "-s", script,
         f"{scheme}://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, timeout=duration + 60).stdout
    for line in out.splitlines():
        if line.startswith("RESULT "):
            kv = dict(item.split("=") for item in line.split()[1:])
            secs = int(kv["duration_us"]) / 1e6
            return {"requests": int(kv["requests"]), "rps": int(kv["requests"]) / secs,
                    "p50": int(kv["p50"]), "p99": int(kv["p99"]), "p999": int(kv["p999"]),
                    "errors": int(kv["errors"]) + int(kv["non2xx"])}
    raise RuntimeError(f"wrk printed no result:\n{out}")


def run_oha(port, rate, duration, conns):
    out = subprocess.run(
        ["oha", "--no-tui", "--output-format", "json", "--latency-correction", "-c", str(conns),
         "-q", str(rate), "-z", f"{duration}s", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, timeout=duration + 60).stdout
    data = json.loads(out)
    summary, pct = data["summary"], data.get("latencyPercentiles", {})
    dist = data.get("statusCodeDistribution", {})
    ok = sum(v for k, v in dist.items() if k.startswith("2"))
    total = sum(dist.values()) + sum(data.get("errorDistribution", {}).values())
    return {"requests": total, "rps": summary.get("requestsPerSec", 0.0),
            "p50": int(pct.get("p50", 0) * 1e6), "p99": int(pct.get("p99", 0) * 1e6),
            "p999": int(pct.get("p99.9", 0) * 1e6), "errors": total - ok}


def measure(server, fn):
    pids = server.pids()
    before = cpu_seconds(pids)
    result = fn()
    result["cpu_s"] = cpu_seconds(pids) - before
    return result


def median_cell(results):
    cell = {}
    for key in ("rps", "p50", "p99", "p999", "errors", "requests", "cpu_s"):
        cell[key] = statistics.median(r[key] for r in results)
    cell["cpu_per_100k"] = statistics.median(
        r["cpu_s"] / r["requests"] * 100_000 if r["requests"] else 0 for r in results)
    return cell


def fmt_us(us):
    return f"{us / 1000:.2f}ms" if us >= 1000 else f"{us}us"


def print_table(table, scenarios, out):
    header = (f"{'scenario':<14} {'target':<14} {'req/s':>9} {'p50':>9} {'p99':>9} {'p99.9':>9} "
              f"{'cpu s/100k':>10} {'errors':>7} {'vs nginx':>8} {'vs direct':>9}")
    print(header, file=out)
    print("-" * len(header), file=out)
    for scenario in scenarios:
        cells = table.get(scenario, {})
        nginx = cells.get("nginx", {}).get("rps")
        direct = cells.get("direct", {}).get("rps")
        for target in TARGETS + list(BALANCE_TARGETS) + ["rg-before"] + LOG_TARGETS:
            c = cells.get(target)
            if not c:
                continue
            vs_nginx = f"{c['rps'] / nginx:.2f}x" if nginx else "-"
            vs_direct = f"{c['rps'] / direct:.2f}x" if direct else "-"
            print(f"{scenario:<14} {target:<14} {c['rps']:>9.0f} {fmt_us(c['p50']):>9} "
                  f"{fmt_us(c['p99']):>9} {fmt_us(c['p999']):>9} {c['cpu_per_100k']:>10.2f} "
                  f"{int(c['errors']):>7} {vs_nginx:>8} {vs_direct:>9}", file=out)
    print("cpu s/100k: CPU seconds (user+sys) the target's own processes spent per 100k requests "
          "(for direct: the origin's).", file=out)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs (about 3 minutes)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, help="seconds per run")
    parser.add_argument("--workers", type=int, default=2, help="workers/threads for every proxy")
    parser.add_argument("--scenarios", default=",".join(DEFAULT_SCENARIOS + [FIXED_RATE]))
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--json", help="also write the medians as JSON here")
    parser.add_argument("--origin", choices=["echo", "nginx"], default="echo",
                        help="the origin: ringgate echo, or nginx answering `return 200`")
    parser.add_argument("--loadgen-threads", type=int,
                        help="wrk threads (default: --workers)")
    args = parser.parse_args()
    global ORIGIN
    ORIGIN = args.origin
    loadgen_threads = args.loadgen_threads or args.workers
    duration = args.duration or (1 if args.quick else 8)
    scenarios = [s for s in args.scenarios.split(",") if s]
    wanted = set(args.targets.split(","))
    workdir = tempfile.mkdtemp(prefix="ringgate-bench-")
    servers = start_all(workdir, args.workers, wanted)
    targets = [t for t in TARGETS + list(BALANCE_TARGETS) + ["rg-before"] + LOG_TARGETS
               if t in servers and t in wanted]
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}  nproc={os.cpu_count()}  "
          f"duration={duration}s rounds={args.rounds} workers={args.workers} "
          f"loadgen_threads={loadgen_threads} origin={ORIGIN} targets={','.join(targets)}",
          flush=True)
    table = {}
    try:
        for scenario in scenarios:
            raw = {t: [] for t in targets}
            rate = None
            if scenario == FIXED_RATE:
                if not shutil.which("oha"):
                    print("# fixed-rate skipped: oha is not installed", flush=True)
                    continue
                peak = table.get("get-64", {}).get("nginx", {}).get("rps")
                rate = int(peak / 2) if peak else 10000
            for rnd in range(args.rounds):
                for target in targets:
                    server = servers[target]
                    if is_https(scenario) and not server.tls_port:
                        continue  # the origin speaks plain HTTP only
                    if target not in GATEWAY_SCENARIOS.get(scenario, {target}):
                        continue  # this target cannot check these credentials
                    if scenario == FIXED_RATE:
                        fn = lambda: run_oha(server.port, rate, duration, 64)
                    else:
                        fn = lambda: run_wrk(server, scenario, duration, loadgen_threads,
                                             workdir)
                    result = measure(server, fn)
                    raw[target].append(result)
                    print(f"# {scenario} round {rnd + 1} {target}: {result['rps']:.0f} req/s, "
                          f"p99 {fmt_us(result['p99'])}, errors {result['errors']}", flush=True)
            table[scenario] = {t: median_cell(rs) for t, rs in raw.items() if rs}
            if rate:
                print(f"# fixed-rate target: {rate} req/s (half of nginx's get-64 median)", flush=True)
        print()
        print_table(table, [s for s in scenarios if s in table], sys.stdout)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(table, f, indent=2)
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

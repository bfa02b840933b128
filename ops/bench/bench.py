#!/usr/bin/env python3
"""`make bench`: ShopStack measured side by side with nginx and the direct path.

Everything runs on 127.0.0.1 with simulation off and release builds. Servers are pinned to one
core and the load generator to the other, so runs are comparable; every case is repeated
(default 6 repetitions of 5 s) in alternating order and the median is reported. The results go
between the results markers of docs/performance.md, with the machine, date and commit.

  python3 ops/bench/bench.py                 # the full run: builds (PGO gateway included), about 12 minutes of runs
  python3 ops/bench/bench.py --smoke         # every case once for 1 s with debug builds, no PGO (tests)
  python3 ops/bench/bench.py --only gateway,nginx --duration 20
  python3 ops/bench/bench.py --only journey  # the whole stack; its capacity model goes to docs/scaling.md

Tools it needs and installs from Debian's packages when missing: wrk, nginx. Locust comes from
PyPI into a throwaway venv under /tmp. The journey case starts its own redis-server, nats-server
and PostgreSQL (Debian's packages) on free loopback ports.
"""

import argparse
import datetime
import json
import math
import os
import platform
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "bench-admin-token"
LOAD_CORE = "0"
SERVER_CORE = "1" if (os.cpu_count() or 1) > 1 else "0"
PRODUCT = "prod-123"
LOCUST_VENV = Path(tempfile.gettempdir()) / "shopstack-bench-locust"


def log(message):
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pinned(core, argv):
    """Run argv on one core (taskset), when the machine has it."""
    if shutil.which("taskset"):
        return ["taskset", "-c", core, *argv]
    return argv


def ensure_tools(need_locust):
    missing = [tool for tool, package in (("wrk", "wrk"), ("nginx", "nginx-light")) if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists()]
    if missing:
        packages = {"wrk": "wrk", "nginx": "nginx-light"}
        log(f"installing {', '.join(missing)} from Debian's packages")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "-q", *[packages[m] for m in missing]], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    if need_locust and not (LOCUST_VENV / "bin" / "locust").exists():
        log("installing Locust into a throwaway venv")
        subprocess.run([sys.executable, "-m", "venv", str(LOCUST_VENV)], check=True)
        subprocess.run([str(LOCUST_VENV / "bin" / "pip"), "install", "-q", "locust"], check=True)


def nginx_binary():
    return shutil.which("nginx") or "/usr/sbin/nginx"


def http(method, url, body=None, headers=None, timeout=5):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("content-type", "application/json")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, response.read()


def wait_ready(url, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if http("GET", url, timeout=1)[0] == 200:
                return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not become ready")


def rss_kib(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Service:
    """One ShopStack binary, pinned to the server core."""

    def __init__(self, bins, name, port, env, binary=None):
        self.name, self.port = name, port
        base = {
            "PATH": os.environ.get("PATH", ""),
            "PORT": str(port),
            "BIND_ADDR": "127.0.0.1",
            "SIMULATION": "off",
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "LOG_LEVEL": "info",
            "SHUTDOWN_DRAIN_MS": "0",
            "SERVICE_NAME": name,
        }
        base.update(env)
        self.log_path = Path(tempfile.gettempdir()) / f"shopstack-bench-{name}-{port}.log"
        self.log_file = open(self.log_path, "w")
        binary = binary or bins / name.split("-")[0]
        self.process = subprocess.Popen(pinned(SERVER_CORE, [str(binary)]), env=base,
                                        stdout=self.log_file, stderr=subprocess.STDOUT)
        wait_ready(self.url("/readyz"))

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log_file.close()
        self.log_path.unlink(missing_ok=True)


class Redis:
    """A private redis-server; `config` replaces the default of no persistence at all."""

    def __init__(self, config=("--save", "", "--appendonly", "no")):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="shopstack-bench-redis-")
        self.process = subprocess.Popen(pinned(SERVER_CORE, ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                                             *config, "--dir", self.dir]),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def url(self):
        return f"redis://127.0.0.1:{self.port}"

    def stop(self):
        self.process.kill()
        self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Nginx:
    """nginx as a keep-alive reverse proxy in front of the catalog (what users put in front instead)."""

    def __init__(self, upstream_port):
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="shopstack-bench-nginx-"))
        (self.dir / "logs").mkdir()
        config = f"""
worker_processes 1;
daemon off;
pid {self.dir}/nginx.pid;
error_log {self.dir}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log {self.dir}/logs/access.log;
  client_body_temp_path {self.dir}/body;
  proxy_temp_path {self.dir}/proxy;
  fastcgi_temp_path {self.dir}/fastcgi;
  uwsgi_temp_path {self.dir}/uwsgi;
  scgi_temp_path {self.dir}/scgi;
  upstream catalog {{ server 127.0.0.1:{upstream_port}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{self.port};
    location / {{
      proxy_pass http://catalog;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""
        (self.dir / "nginx.conf").write_text(config)
        self.process = subprocess.Popen(pinned(SERVER_CORE, [nginx_binary(), "-p", str(self.dir), "-c", str(self.dir / "nginx.conf")]),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_ready(f"http://127.0.0.1:{self.port}/readyz")

    def stop(self):
        self.process.send_signal(signal.SIGQUIT)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_port(port, what, seconds=10):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not start on port {port}")


def postgres_bin_dir():
    """Where `initdb`, `postgres`, `psql` and `pg_isready` are: beside `initdb` on PATH, else
    Debian's newest /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    candidates = [Path(found).resolve().parent] if found else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda d: int(d.parent.name.split(".")[0]),
                         reverse=True) if Path("/usr/lib/postgresql").is_dir() else []
    for directory in candidates:
        if all((directory / name).exists() for name in ("initdb", "postgres", "psql", "pg_isready")):
            return directory
    raise RuntimeError("PostgreSQL's programs (initdb, postgres, psql, pg_isready) are neither beside initdb on "
                       "PATH nor in /usr/lib/postgresql/<version>/bin: install Debian's postgresql package")


class Postgres:
    """A private PostgreSQL on a free loopback port with the durability of a production server
    (fsync and synchronous commit on) and the compose file's settings. initdb refuses root, so
    under root it runs as the `postgres` user (Debian's package creates it) through setpriv."""

    def __init__(self):
        self.bin = postgres_bin_dir()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="shopstack-bench-postgres-"))
        self.process = self.log = None
        try:
            self.start()
        except BaseException:
            self.stop()
            raise

    def start(self):
        user = []
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root, and initdb refuses root: PostgreSQL runs as the postgres "
                                   "user, which Debian's postgresql package creates") from None
            os.chown(self.dir, account.pw_uid, account.pw_gid)
            user = ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups", "--"]
        data = self.dir / "data"
        subprocess.run([*user, str(self.bin / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                        "-E", "UTF8", "--locale=C", "--no-sync"], check=True, cwd=self.dir, stdout=subprocess.DEVNULL)
        with open(data / "postgresql.conf", "a") as config:
            config.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                         f"unix_socket_directories = '{self.dir}'\nshared_buffers = 32MB\nmax_connections = 50\n")
        self.log = open(self.dir / "postgres.log", "w")
        self.process = subprocess.Popen(pinned(SERVER_CORE, [*user, str(self.bin / "postgres"), "-D", str(data)]),
                                        cwd=self.dir, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while subprocess.run([str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]).returncode:
            if time.time() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"PostgreSQL did not start: {(self.dir / 'postgres.log').read_text()[-2000:]}")
            time.sleep(0.1)

    def url(self):
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def transaction_id(self):
        """The next transaction id: write transactions get one each, so the difference between
        two readings (less this query's own) counts the commits that had to reach the WAL."""
        output = subprocess.run([str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                                 "-At", "-c", "SELECT pg_current_xact_id()"], capture_output=True, text=True, check=True)
        return int(output.stdout.strip())

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.log:
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Nats:
    """A private nats-server with JetStream, its store in a temporary directory."""

    def __init__(self):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="shopstack-bench-nats-")
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        self.process = subprocess.Popen(pinned(SERVER_CORE, [binary, "-a", "127.0.0.1", "-p", str(self.port),
                                                             "-js", "-sd", self.dir]),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, "nats-server")

    def url(self):
        return f"nats://127.0.0.1:{self.port}"

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


WRK_LATENCY = re.compile(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", re.M)


def to_ms(value, unit):
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url, duration, connections, script=None):
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    if script:
        argv += ["-s", str(script)]
    output = subprocess.run(pinned(LOAD_CORE, argv + [url]), capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    latencies = {match[0]: to_ms(match[1], match[2]) for match in WRK_LATENCY.findall(output)}
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    total = int(re.search(r"(\d+) requests in", output).group(1))
    return {"rps": rps, "p50": latencies.get("50", 0.0), "p99": latencies.get("99", 0.0),
            "non_2xx": int(errors.group(1)) if errors else 0, "requests": total}


def median_of(runs):
    med = {key: statistics.median(run[key] for run in runs) for key in ("rps", "p50", "p99")} | {
        "non_2xx": sum(run["non_2xx"] for run in runs), "requests": sum(run["requests"] for run in runs)}
    if all("cpu_us" in run for run in runs):
        med["cpu_us"] = {label: {kind: statistics.median(run["cpu_us"][label][kind] for run in runs)
                                 for kind in CPU_KINDS} for label in runs[0]["cpu_us"]}
    return med


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Per request: µs of user and system CPU; per 1 000 requests: voluntary and involuntary switches.
CPU_KINDS = ("user", "sys", "voluntary", "involuntary")


def process_counters(processes):
    """{label: (user ticks, system ticks, voluntary switches, involuntary switches)} of each
    process (all its threads) and its descendants, e.g. an nginx master and its worker, from one
    pass over /proc. Context switches are counted per thread (`/proc/PID/task/*/status`): the
    process's own `status` holds only its main thread's."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # The command name may hold spaces and parentheses: fields start after the last ')'.
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = (int(fields[1]), int(fields[11]), int(fields[12]))
    counters = {}
    for label, pid in processes.items():
        tree = {pid}
        for _ in range(4):  # a few generations are plenty (nginx: master → worker)
            tree |= {child for child, (parent, _, _) in stats.items() if parent in tree}
        members = [member for member in tree if member in stats]
        voluntary = involuntary = 0
        for member in members:
            for task in Path(f"/proc/{member}/task").glob("*/status"):
                try:
                    for line in task.read_text().splitlines():
                        if line.startswith("voluntary_ctxt_switches:"):
                            voluntary += int(line.split()[1])
                        elif line.startswith("nonvoluntary_ctxt_switches:"):
                            involuntary += int(line.split()[1])
                except OSError:
                    continue  # a thread that ended meanwhile
        counters[label] = (sum(stats[m][1] for m in members), sum(stats[m][2] for m in members),
                           voluntary, involuntary)
    return counters


CART_SCRIPT = """
-- Alternate: add one unit of prod-123 to a random user's cart, then read that cart.
local counter = 0
request = function()
  counter = counter + 1
  local user = "bench-" .. math.random(1, 200000)
  if counter % 2 == 1 then
    return wrk.format("POST", "/v1/cart/" .. user .. "/items", {["content-type"] = "application/json"},
      '{"product_id":"PRODUCT","quantity":1}')
  end
  return wrk.format("GET", "/v1/cart/" .. user)
end
""".replace("PRODUCT", PRODUCT)


class Bench:
    def __init__(self, args):
        self.args = args
        target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
        self.bins = target / ("debug" if args.smoke else "release")
        # The gateway measured is the PGO build (`make gateway-pgo`) when there is one; the plain
        # build runs beside it in the proxy cases, so every run shows what PGO is worth.
        pgo = target / "pgo" / self.bins.name / "gateway"
        self.pgo_gateway = pgo if args.pgo and pgo.exists() else None
        # The same route forwarded by hyper-util's pooled client instead of the gateway's own
        # exchange (docs/decisions/0001-hand-written-http1-exchange.md).
        self.hyper_util_proxy = self.bins / "examples" / "hyper_util_proxy"
        self.results = {}
        self.memory = {}
        self.generators = {}
        self.journey = {}
        self.notes = []

    # -- stacks -----------------------------------------------------------------------------

    def catalog(self, extra=None):
        return Service(self.bins, "catalog", free_port(), extra or {})

    def gateway(self, catalog, cart=None, extra=None, orders=None, plain=False, binary=None):
        env = {"CATALOG_SERVICE_URL": catalog.url(""),
               "CART_SERVICE_URL": cart.url("") if cart else "http://127.0.0.1:9",
               "ORDERS_SERVICE_URL": orders.url("") if orders else "http://127.0.0.1:9"}
        env.update(extra or {})
        binary = binary or (None if plain else self.pgo_gateway)
        return Service(self.bins, "gateway", free_port(), env, binary=binary)

    def run_case(self, name, url, script=None, processes=None):
        """One wrk run; with `processes` ({label: pid}), also the user and system CPU each spent
        per request (µs) and its context switches per 1 000 requests (`CPU_KINDS`), so a
        throughput ratio can be read as where the time went."""
        runs = self.results.setdefault(name, {"url": url, "runs": []})["runs"]
        before = process_counters(processes) if processes else {}
        run = wrk(url, self.args.duration, self.args.connections, script)
        if processes and run["requests"]:
            after = process_counters(processes)
            per_request = 1e6 / CLOCK_TICKS / run["requests"]
            per_thousand = 1000 / run["requests"]
            scales = (per_request, per_request, per_thousand, per_thousand)  # in CPU_KINDS' order
            run["cpu_us"] = {label: {kind: (end - start) * scale for kind, end, start, scale
                                     in zip(CPU_KINDS, after[label], before[label], scales)}
                             for label in processes}
        runs.append(run)
        cpu = "".join(f", {label} {v['user']:.1f}+{v['sys']:.1f} µs {v['voluntary']:.0f}/{v['involuntary']:.0f} sw"
                      for label, v in run.get("cpu_us", {}).items())
        log(f"{name}: {run['rps']:.0f} req/s, p50 {run['p50']:.2f} ms, p99 {run['p99']:.2f} ms{cpu}")

    # -- cases ------------------------------------------------------------------------------

    def proxy_cases(self, repeat):
        """Direct, gateway and nginx in front of one catalog; order alternates per repeat. Also
        the gateway without its access log (`LOG_LEVEL=warn`), which splits the gateway/nginx
        ratio into proxying and logging (the gateway's line is JSON with trace and request ids,
        ≈ 4 × nginx's), and the route forwarded by hyper-util's client (`gateway-hyper-util`,
        plain release build like `gateway-plain`: the example is not built with PGO)."""
        catalog = self.catalog()
        gateway = self.gateway(catalog)
        quiet = self.gateway(catalog, extra={"LOG_LEVEL": "warn"})
        plain = self.gateway(catalog, plain=True) if self.pgo_gateway else None
        hyper_util = None
        if self.selected("gateway-hyper-util"):
            if self.hyper_util_proxy.exists():
                hyper_util = self.gateway(catalog, binary=self.hyper_util_proxy)
            elif repeat == 0:
                self.notes.append("gateway-hyper-util not measured: the gateway's `hyper_util_proxy` "
                                  "example is not built.")
        nginx = Nginx(catalog.port)
        try:
            path = f"/catalog/{PRODUCT}"
            cases = [("direct", catalog.url(path), {"catalog": catalog.process.pid}),
                     ("gateway", gateway.url(path), {"proxy": gateway.process.pid, "catalog": catalog.process.pid}),
                     ("gateway-nolog", quiet.url(path), {"proxy": quiet.process.pid, "catalog": catalog.process.pid}),
                     ("nginx", f"http://127.0.0.1:{nginx.port}{path}",
                      {"proxy": nginx.process.pid, "catalog": catalog.process.pid})]
            if plain:
                cases.insert(2, ("gateway-plain", plain.url(path),
                                 {"proxy": plain.process.pid, "catalog": catalog.process.pid}))
            if hyper_util:
                cases.insert(cases.index(next(c for c in cases if c[0] == "gateway-nolog")),
                             ("gateway-hyper-util", hyper_util.url(path),
                              {"proxy": hyper_util.process.pid, "catalog": catalog.process.pid}))
            if repeat % 2:
                cases.reverse()
            for name, url, processes in cases:
                if self.selected(name):
                    self.run_case(name, url, processes=processes)
        finally:
            nginx.stop()
            if hyper_util:
                hyper_util.stop()
            if plain:
                plain.stop()
            quiet.stop()
            gateway.stop()
            catalog.stop()

    def telemetry_cases(self, repeat):
        sink = OtlpSink(self.bins)
        catalog = self.catalog({"LOG_LEVEL": "warn"})
        quiet = self.gateway(catalog, extra={"LOG_LEVEL": "warn"})
        # The OpenTelemetry SDK's batch span processor and OTLP/gRPC exporter, every request's
        # span kept (100 %) or one in ten (wrk sends no traceparent: each request is a root).
        loud = self.gateway(catalog, extra={"LOG_LEVEL": "info", "OTEL_EXPORTER_OTLP_ENDPOINT": sink.url(),
                                            "OTEL_TRACES_SAMPLER": "always_on"})
        sampled = self.gateway(catalog, extra={"LOG_LEVEL": "info", "OTEL_EXPORTER_OTLP_ENDPOINT": sink.url(),
                                               "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                                               "OTEL_TRACES_SAMPLER_ARG": "0.1"})
        try:
            path = f"/catalog/{PRODUCT}"
            cases = [("telemetry-off", quiet.url(path), {"proxy": quiet.process.pid, "catalog": catalog.process.pid}),
                     ("telemetry-on", loud.url(path), {"proxy": loud.process.pid, "catalog": catalog.process.pid}),
                     ("telemetry-on-10", sampled.url(path), {"proxy": sampled.process.pid, "catalog": catalog.process.pid})]
            if repeat % 2:
                cases.reverse()
            for name, url, processes in cases:
                self.run_case(name, url, processes=processes)
        finally:
            sampled.stop()
            loud.stop()
            quiet.stop()
            catalog.stop()
            sink.stop()

    def cart_cases(self, repeat):
        script = Path(tempfile.gettempdir()) / "shopstack-bench-cart.lua"
        script.write_text(CART_SCRIPT)
        order = ["memory", "redis"] if repeat % 2 == 0 else ["redis", "memory"]
        for backend in order:
            redis = Redis() if backend == "redis" else None
            env = {"REDIS_URL": redis.url()} if redis else {}
            catalog = self.catalog(env)
            cart = Service(self.bins, "cart", free_port(), {"CATALOG_SERVICE_URL": catalog.url(""), **env})
            gateway = self.gateway(catalog, cart)
            try:
                http("PUT", catalog.url(f"/admin/stock/{PRODUCT}"), {"stock": 1_000_000_000},
                     {"authorization": f"Bearer {ADMIN_TOKEN}"})
                self.run_case(f"cart-{backend}", gateway.url(""), script)
            finally:
                gateway.stop()
                cart.stop()
                catalog.stop()
                if redis:
                    redis.stop()

    def memory_case(self):
        """Resident memory of each service, idle and at its peak while a Goose mix (browse, cart,
        checkout) runs through the gateway, so that every service is the one under load."""
        catalog = self.catalog()
        cart = Service(self.bins, "cart", free_port(), {"CATALOG_SERVICE_URL": catalog.url("")})
        data = Path(tempfile.mkdtemp(prefix="shopstack-bench-orders-"))
        orders = Service(self.bins, "orders", free_port(), {
            "CATALOG_SERVICE_URL": catalog.url(""), "CART_SERVICE_URL": cart.url(""),
            "DATABASE_URL": f"sqlite://{data}/orders.db"})
        gateway = self.gateway(catalog, cart, orders=orders)
        services = (gateway, catalog, cart, orders)
        try:
            time.sleep(1)
            idle = {s.name: rss_kib(s.process.pid) for s in services}
            peak = dict(idle)
            # Its output goes to a file, not a pipe: nothing reads a pipe while the RSS is sampled.
            with tempfile.TemporaryFile("w+") as output:
                load = subprocess.Popen(pinned(LOAD_CORE, self.mixed_load(gateway.url(""))), stdout=output,
                                        stderr=subprocess.STDOUT, text=True)
                while load.poll() is None:
                    for service in services:
                        peak[service.name] = max(peak[service.name], rss_kib(service.process.pid))
                    time.sleep(0.2)
                # Exit 1 is a breached latency threshold, no reason to doubt the memory figures;
                # anything else (the target unusable, bad options) is.
                if load.returncode not in (0, 1):
                    output.seek(0)
                    raise RuntimeError(f"the load for the memory case failed ({load.returncode}):\n{output.read()[-2000:]}")
            self.memory = {name: {"idle_mib": idle[name] / 1024, "load_mib": peak[name] / 1024} for name in idle}
            for name, values in self.memory.items():
                log(f"rss {name}: idle {values['idle_mib']:.1f} MiB, under load {values['load_mib']:.1f} MiB")
        finally:
            gateway.stop()
            orders.stop()
            cart.stop()
            catalog.stop()
            shutil.rmtree(data, ignore_errors=True)

    def single_run_seconds(self):
        """How long the cases that run once (memory, generators) last: two wrk runs' worth, so
        that a generator's start-up is a small part of its CPU time."""
        return max(2, 2 * self.args.duration)

    def mixed_load(self, host):
        """The memory case's load: Goose's browse, cart and checkout users with no think time, or,
        without the `loadtest` binary, wrk on one catalog route (then cart and orders stay idle)."""
        loadtest = self.bins / "loadtest"
        duration = self.single_run_seconds()
        if not loadtest.exists():
            self.notes.append("RSS under load measured with wrk on `GET /catalog/{id}` only: `loadtest` is not built.")
            return ["wrk", "-t1", f"-c{self.args.connections}", f"-d{duration}s", f"{host}/catalog/{PRODUCT}"]
        reports = Path(tempfile.gettempdir()) / "shopstack-bench-memory-load"
        return [str(loadtest), "--host", host, "--users", str(self.args.connections), "--hatch-rate", "1000",
                "--run-time", f"{duration}s", "--scenarios", "browse,cart,checkout", "--think-time-ms", "0",
                "--no-truth-check", "--reports-dir", str(reports), "--quiet"]

    def generator_cases(self):
        """Requests per CPU-second of the load generator itself, same simple scenario."""
        catalog = self.catalog({"LOG_LEVEL": "warn"})
        try:
            host = catalog.url("")
            duration = self.single_run_seconds()
            loadtest = self.bins / "loadtest"
            if loadtest.exists():
                report = Path(tempfile.gettempdir()) / "shopstack-bench-goose.json"
                argv = [str(loadtest), "--host", host, "--users", "32", "--hatch-rate", "1000",
                        "--run-time", f"{duration}s", "--scenarios", "ping", "--no-truth-check",
                        "--report-file", str(report.with_suffix(".html")), "--quiet"]
                self.generators["goose"] = self.measure_generator(argv)
            else:
                self.notes.append("Goose ceiling not measured: the `loadtest` binary is not built.")
            locust = LOCUST_VENV / "bin" / "locust"
            if locust.exists():
                locustfile = Path(tempfile.gettempdir()) / "shopstack-bench-locustfile.py"
                locustfile.write_text(
                    "from locust import HttpUser, task\n"
                    "class Ping(HttpUser):\n"
                    "    @task\n"
                    f"    def product(self):\n        self.client.get('/catalog/{PRODUCT}')\n")
                csv = Path(tempfile.gettempdir()) / "shopstack-bench-locust"
                argv = [str(locust), "-f", str(locustfile), "--headless", "-u", "32", "-r", "1000",
                        "-t", f"{duration}s", "--host", host, "--csv", str(csv), "--only-summary"]
                self.generators["locust"] = self.measure_generator(argv, locust_csv=csv)
            else:
                self.notes.append("Locust ceiling not measured: Locust is not installed.")
        finally:
            catalog.stop()

    def measure_generator(self, argv, locust_csv=None):
        children_cpu_seconds()  # reset the baseline: only this generator's CPU time counts
        started = time.time()
        process = subprocess.Popen(pinned(LOAD_CORE, argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output, _ = process.communicate()
        wall = time.time() - started
        cpu = children_cpu_seconds()
        requests = parse_requests(output, locust_csv)
        result = {"requests": requests, "cpu_seconds": cpu, "wall_seconds": wall,
                  "per_cpu_second": requests / cpu if cpu else 0.0}
        log(f"generator {argv[0].rsplit('/', 1)[-1]}: {requests} requests, {cpu:.2f} CPU s → {result['per_cpu_second']:.0f}/CPU s")
        return result

    def journey_case(self):
        """The whole stack as production runs it (docs/deployment.md): gateway, catalog, cart and
        orders, stock and carts on a Redis with its append-only file, the orders' read cache on a
        second Redis that may evict, orders on PostgreSQL, events on NATS JetStream; simulation off.
        The load test's shopper mix (browse, cart and checkout users, no think time) drives it
        through the gateway, once per repetition on the same stack. From /proc, the CPU time of
        every server process (PostgreSQL's backends and NATS's threads included) over each run."""
        loadtest = self.bins / "loadtest"
        if not loadtest.exists():
            self.notes.append("journey not measured: the `loadtest` binary is not built.")
            return
        stores, services = [], []
        started = time.time()
        try:
            redis = Redis(config=("--appendonly", "yes", "--save", "", "--maxmemory-policy", "noeviction"))
            stores.append(redis)
            order_cache = Redis(config=("--save", "", "--appendonly", "no", "--maxmemory", "24mb",
                                        "--maxmemory-policy", "allkeys-lru"))
            stores.append(order_cache)
            postgres = Postgres()
            stores.append(postgres)
            nats = Nats()
            stores.append(nats)
            catalog = self.catalog({"REDIS_URL": redis.url()})
            services.append(catalog)
            cart = Service(self.bins, "cart", free_port(), {
                "CATALOG_SERVICE_URL": catalog.url(""), "REDIS_URL": redis.url(), "NATS_URL": nats.url()})
            services.append(cart)
            orders = Service(self.bins, "orders", free_port(), {
                "CATALOG_SERVICE_URL": catalog.url(""), "CART_SERVICE_URL": cart.url(""),
                "DATABASE_URL": postgres.url(), "NATS_URL": nats.url(), "REDIS_URL": order_cache.url()})
            services.append(orders)
            # The plain release build: the one the container image ships.
            gateway = self.gateway(catalog, cart, orders=orders, plain=True)
            services.append(gateway)
            self.stock_every_product(catalog)
            log(f"journey: the stack is up in {time.time() - started:.1f} s")
            processes = {"gateway": gateway.process.pid, "catalog": catalog.process.pid, "cart": cart.process.pid,
                         "orders": orders.process.pid, "redis": redis.process.pid,
                         "redis-order-cache": order_cache.process.pid, "postgres": postgres.process.pid,
                         "nats": nats.process.pid}
            throttle = None
            if not self.args.smoke:
                # Unmeasured, flat out: it opens the pools' connections, fills PostgreSQL's caches
                # and finds the rate the stack reaches on its core. The measured runs send a
                # planned share of it: flat out, the processes queue for the one core and orders,
                # whose checkouts wait on the others, starves (stalls of seconds, failed checkouts).
                warm_up = self.journey_run(loadtest, gateway.url(""), processes, postgres, "warm-up")
                throttle = max(1, int(PLANNED_UTILISATION * warm_up["rps"]))
            runs = []
            for repeat in range(self.args.repeats):
                runs.append(self.journey_run(loadtest, gateway.url(""), processes, postgres, repeat + 1, throttle))
            self.journey = journey_summary(runs)
            self.journey["throttle_rps"] = throttle
            self.journey["flat_out_rps"] = throttle and warm_up["rps"]
        finally:
            for server in reversed(services + stores):
                server.stop()

    def stock_every_product(self, catalog):
        """Stock no run can sell out: a sold-out product would turn the mix into 409s."""
        token = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        page, pages = 1, 1
        while page <= pages:
            listing = json.loads(http("GET", catalog.url(f"/catalog?page={page}&page_size=100"))[1])
            for product in listing["products"]:
                http("PUT", catalog.url(f"/admin/stock/{product['id']}"), {"stock": 1_000_000_000}, token)
            pages = listing["pagination"]["total_pages"]
            page += 1

    def journey_run(self, loadtest, host, processes, postgres, label, throttle=None):
        reports = Path(tempfile.mkdtemp(prefix="shopstack-bench-journey-"))
        name = f"journey-{label}"
        argv = [str(loadtest), "--host", host, "--users", str(self.args.connections), "--hatch-rate", "1000",
                "--run-time", f"{self.args.duration}s", "--scenarios", "browse,cart,checkout",
                "--think-time-ms", "0", "--no-truth-check", "--no-telnet", "--no-websocket", "--quiet",
                "--reports-dir", str(reports), "--run-name", name]
        if throttle:
            argv += ["--throttle-requests", str(throttle)]
        try:
            transactions_before = postgres.transaction_id()
            children_cpu_seconds()  # from here on, only the load generator's CPU time counts
            before, started = process_counters(processes), time.time()
            load = subprocess.run(pinned(LOAD_CORE, argv), capture_output=True, text=True)
            after, wall = process_counters(processes), time.time() - started
            generator_cpu = children_cpu_seconds()
            # Less the transaction_id() query's own transaction.
            write_transactions = postgres.transaction_id() - transactions_before - 1
            # Exit 1 is a breached latency or error threshold: the numbers still stand (errors are
            # counted); anything else means the run did not happen.
            summary_path = reports / f"{name}.summary.json"
            if load.returncode not in (0, 1) or not summary_path.exists():
                raise RuntimeError(f"the journey load failed ({load.returncode}):\n{(load.stdout + load.stderr)[-2000:]}")
            summary = json.loads(summary_path.read_text())
        finally:
            shutil.rmtree(reports, ignore_errors=True)
        every = summary["all_requests"]
        checkouts = next((r for r in summary["requests"] if r["name"] == "POST /api/orders/checkout"), None)
        journeys = checkouts["requests"] - checkouts["failures"] if checkouts else 0
        cpu_seconds = {label: (after[label][0] + after[label][1] - before[label][0] - before[label][1]) / CLOCK_TICKS
                       for label in processes}
        stack_cpu = sum(cpu_seconds.values())
        duration = summary["duration_s"]
        requests = every["requests"]
        run = {"requests": requests, "non_2xx": every["failures"], "journeys": journeys, "duration_s": duration,
               "rps": requests / duration, "journeys_per_s": journeys / duration,
               "p50": every["p50_ms"], "p99": every["p99_ms"],
               "stack_cpu_seconds": stack_cpu, "stack_cores": stack_cpu / wall,
               "per_cpu_second": requests / stack_cpu if stack_cpu else 0.0,
               "journeys_per_cpu_second": journeys / stack_cpu if stack_cpu else 0.0,
               "cpu_us": {label: 1e6 * seconds / requests if requests else 0.0 for label, seconds in cpu_seconds.items()},
               "postgres_write_transactions": write_transactions,
               "generator_cpu_seconds": generator_cpu,
               "failed_by_route": {r["name"]: r["failures"] for r in summary["requests"] if r["failures"]}}
        log(f"journey {label}: {run['rps']:.0f} req/s, {run['journeys_per_s']:.1f} journeys/s, "
            f"{run['per_cpu_second']:.0f} req per stack CPU-second ({run['stack_cores']:.2f} cores busy), "
            f"p50 {run['p50']:.2f} ms, p99 {run['p99']:.2f} ms, {run['non_2xx']} failed, "
            f"{write_transactions} PostgreSQL write transactions, load generator {generator_cpu:.2f} CPU s"
            + (f"; failed: {run['failed_by_route']}" if run["failed_by_route"] else ""))
        return run

    # -- orchestration ----------------------------------------------------------------------

    def selected(self, name):
        return not self.args.only or any(part in name for part in self.args.only.split(","))

    def run(self):
        for repeat in range(self.args.repeats):
            log(f"repetition {repeat + 1} of {self.args.repeats}")
            if any(self.selected(n) for n in ("direct", "gateway", "gateway-hyper-util", "nginx")):
                self.proxy_cases(repeat)
            if self.selected("cart"):
                self.cart_cases(repeat)
            if self.selected("telemetry"):
                self.telemetry_cases(repeat)
        if self.selected("memory"):
            self.memory_case()
        if self.selected("generator"):
            self.generator_cases()
        if self.selected("journey"):
            self.journey_case()
        return self.report()

    def report(self):
        med = {name: median_of(case["runs"]) for name, case in self.results.items()}
        goals = []

        def goal(label, value, target=None, better="higher", per_repeat=()):
            # The per-repetition values show how far the repetitions agreed, i.e. whether a
            # goal's verdict is a margin or the machine's noise.
            met = None if target is None else (value >= target if better == "higher" else value <= target)
            goals.append({"goal": label, "value": value, "target": target, "better": better, "met": met,
                          "per_repeat": list(per_repeat)})

        def ratio(label, a, b, key="rps", target=None):
            # The median of the per-repetition ratios: each repetition runs the two cases back to
            # back, so the machine's drift between repetitions (up to ±30 % on a shared host)
            # cancels out of each ratio.
            if a in med and b in med and med[b][key]:
                pairs = zip(self.results[a]["runs"], self.results[b]["runs"])
                per_repeat = [x[key] / y[key] for x, y in pairs if y[key]]
                value = statistics.median(per_repeat) if per_repeat else med[a][key] / med[b][key]
                goal(label, value, target, per_repeat=per_repeat)

        def proxy_cpu(run):
            cpu = run.get("cpu_us", {}).get("proxy")
            return cpu["user"] + cpu["sys"] if cpu else None

        def cpu_ratio(label, a, b):
            # The proxy's own CPU per request (user + system), per repetition: unlike throughput,
            # it leaves out the catalog's share of the core they both run on.
            if a in med and b in med:
                pairs = zip(self.results[a]["runs"], self.results[b]["runs"])
                per_repeat = [proxy_cpu(x) / proxy_cpu(y) for x, y in pairs if proxy_cpu(x) and proxy_cpu(y)]
                if per_repeat:
                    goal(label, statistics.median(per_repeat), per_repeat=per_repeat)

        ratio("gateway / direct throughput", "gateway", "direct")
        ratio("gateway / nginx throughput", "gateway", "nginx", target=1.0)
        # No target: what the gateway's proxying alone does against nginx with its access log.
        ratio("gateway without access log / nginx throughput", "gateway-nolog", "nginx")
        ratio("gateway without PGO (plain release build) / nginx throughput", "gateway-plain", "nginx")
        # No target: the route through hyper-util's pooled client instead of the gateway's own
        # exchange, the rest of the gateway the same (docs/decisions/0001-hand-written-http1-exchange.md).
        ratio("gateway with hyper-util's client / gateway throughput", "gateway-hyper-util", "gateway")
        # Like for like: the example is a plain build, so beside a PGO gateway it is compared
        # with `gateway-plain` as well.
        if "gateway-plain" in med:
            ratio("gateway with hyper-util's client / gateway-plain throughput", "gateway-hyper-util", "gateway-plain")
        baseline = "gateway-plain" if "gateway-plain" in med else "gateway"
        cpu_ratio(f"gateway with hyper-util's client / {baseline} proxy CPU per request", "gateway-hyper-util", baseline)
        if all(k in med for k in ("gateway", "nginx", "direct")):
            # (gateway p99 − direct p99) − (nginx p99 − direct p99), per repetition, median.
            pairs = zip(self.results["gateway"]["runs"], self.results["nginx"]["runs"])
            per_repeat = [g["p99"] - n["p99"] for g, n in pairs]
            goal("gateway added p99 − nginx added p99 (ms)", statistics.median(per_repeat), 0.0, "lower", per_repeat)
        ratio("telemetry on / off throughput", "telemetry-on", "telemetry-off", target=0.9)
        ratio("telemetry on at 10 % sampling / off throughput", "telemetry-on-10", "telemetry-off", target=0.9)
        ratio("cart on Redis / in memory throughput", "cart-redis", "cart-memory", target=0.5)
        if "goose" in self.generators and "locust" in self.generators and self.generators["locust"]["per_cpu_second"]:
            value = self.generators["goose"]["per_cpu_second"] / self.generators["locust"]["per_cpu_second"]
            goal("Goose / Locust requests per CPU-second", value, 10.0)
        for name, values in self.memory.items():
            goal(f"idle RSS {name} (MiB)", values["idle_mib"], 20.0, "lower")
        summary = {"cases": med, "raw": self.results, "memory": self.memory, "generators": self.generators,
                   "journey": self.journey, "goals": goals, "notes": self.notes,
                   "gateway_pgo": self.pgo_gateway is not None}
        return summary


class OtlpSink:
    """A local OTLP/gRPC endpoint that accepts and drops spans (the cost measured is the exporter's)."""

    def __init__(self, bins):
        sink = bins / "examples" / "otlp_sink"
        self.port = free_port()
        if sink.exists():
            self.process = subprocess.Popen(pinned(LOAD_CORE, [str(sink), "--port", str(self.port)]),
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.time() + 10
            while time.time() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                    return
                except OSError:
                    time.sleep(0.05)
        self.process = None
        log("otlp-sink not built: telemetry-on exports to a closed port (export errors are counted, not measured)")

    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def stop(self):
        if self.process:
            self.process.kill()
            self.process.wait()


def children_cpu_seconds():
    usage = os.times()
    total = usage.children_user + usage.children_system
    previous = getattr(children_cpu_seconds, "previous", 0.0)
    children_cpu_seconds.previous = total
    return total - previous


def parse_requests(output, locust_csv):
    if locust_csv:
        stats = Path(f"{locust_csv}_stats.csv")
        if stats.exists():
            for line in stats.read_text().splitlines()[1:]:
                cells = line.split(",")
                if len(cells) > 3 and cells[1].strip('"') == "Aggregated":
                    return int(cells[2])
        return 0
    match = re.search(r"requests_total[\"']?\s*[:=]\s*(\d+)", output) or re.search(r"Total requests:\s*(\d+)", output)
    return int(match.group(1)) if match else 0


def journey_summary(runs):
    """Medians over the runs; each process's CPU per request is the median of its per-run
    figures, and its share is of the sum of those medians."""
    keys = ("rps", "journeys_per_s", "p50", "p99", "per_cpu_second", "journeys_per_cpu_second", "stack_cores")
    median = {key: statistics.median(run[key] for run in runs) for key in keys}
    totals = {key: sum(run[key] for run in runs) for key in ("requests", "non_2xx", "journeys",
                                                            "postgres_write_transactions", "generator_cpu_seconds")}
    cpu_us = {label: statistics.median(run["cpu_us"][label] for run in runs) for label in runs[0]["cpu_us"]}
    stack = sum(cpu_us.values())
    share = {label: value / stack if stack else 0.0 for label, value in cpu_us.items()}
    journeys = totals["journeys"]
    failed_by_route = {}
    for run in runs:
        for route, failures in run["failed_by_route"].items():
            failed_by_route[route] = failed_by_route.get(route, 0) + failures
    return {"median": median, "totals": totals, "cpu_us": cpu_us, "share": share, "failed_by_route": failed_by_route,
            "requests_per_journey": totals["requests"] / journeys if journeys else None,
            "postgres_writes_per_journey": totals["postgres_write_transactions"] / journeys if journeys else None,
            "runs": runs}


# The capacity model's planning rules (docs/scaling.md): a service replica and a Redis node each
# get one core (the pods' CPU limit; Redis executes commands on one thread), planned at the HPA's
# 70 % utilisation target; the services keep two replicas at least (the HPA's minimum and the PDB).
PLANNED_UTILISATION = 0.7
MIN_SERVICE_REPLICAS = 2
HPA_MAX_REPLICAS = 10  # deploy/k8s/overlays/prod/autoscaling.yaml
CAPACITY_RATES = (1_000, 10_000, 100_000)
SERVICE_PROCESSES = ("gateway", "catalog", "cart", "orders")
# Processes that serve on one core per node: their single-node ceiling is the first limit.
ONE_CORE_PER_NODE = ("redis", "redis-order-cache")


def capacity_plan(journey):
    """Cores per process kind, and replicas or nodes, for each target rate of the measured mix."""
    plan = {}
    for label, micros in journey["cpu_us"].items():
        rows = {}
        for rate in CAPACITY_RATES:
            cores = rate * micros / 1e6
            units = max(1, math.ceil(cores / PLANNED_UTILISATION))
            if label in SERVICE_PROCESSES:
                units = max(MIN_SERVICE_REPLICAS, units)
            rows[rate] = {"cores": cores, "units": int(units)}
        plan[label] = rows
    ceilings = {label: PLANNED_UTILISATION * 1e6 / journey["cpu_us"][label] for label in ONE_CORE_PER_NODE
                if journey["cpu_us"].get(label)}
    return plan, ceilings


def journey_header(summary, args, commit, cpu):
    journey = summary["journey"]
    pace = (f"no think time, capped at {journey['throttle_rps']} requests/s, {100 * PLANNED_UTILISATION:.0f} % of the "
            f"{journey['flat_out_rps']:.0f} requests/s the stack reached flat out in an unmeasured first run"
            if journey.get("throttle_rps") else "no think time, flat out")
    return (f"`make bench` journey case on {datetime.date.today().isoformat()}, commit `{commit}`, {cpu}, "
            f"{os.cpu_count()} cores, Linux {platform.release()}; {'debug (smoke)' if args.smoke else 'release'} builds "
            f"(the gateway's plain build, as in the image), simulation off. Every server process on core {SERVER_CORE}, "
            f"so the stack shares one core; the load test on core {LOAD_CORE}: {args.connections} users of the "
            f"browse, cart and checkout scenarios, {pace}; {args.duration} s per run, {args.repeats} "
            f"run{'' if args.repeats == 1 else 's'} on one stack, medians shown.")


# More failed requests than this and the run did not serve the mix: no capacity is derived from it.
JOURNEY_FAILURES_ALLOWED = 0.01


def journey_failure_warning(journey):
    """A warning in bold when too many requests failed for the run to stand for the mix."""
    totals = journey["totals"]
    if not totals["requests"] or totals["non_2xx"] <= JOURNEY_FAILURES_ALLOWED * totals["requests"]:
        return None
    routes = ", ".join(f"`{route}` {failures}" for route, failures in
                       sorted(journey["failed_by_route"].items(), key=lambda item: -item[1]))
    return (f"**Not a capacity measurement: {totals['non_2xx']} of {totals['requests']} requests failed "
            f"({100 * totals['non_2xx'] / totals['requests']:.1f} %), so the stack did not serve the mix** "
            f"(failed by route: {routes}).")


def journey_markdown(summary, args, commit, cpu):
    journey = summary["journey"]
    med, totals = journey["median"], journey["totals"]
    warning = journey_failure_warning(journey)
    lines = [journey_header(summary, args, commit, cpu), "", *([warning, ""] if warning else []),
             "| requests/s | journeys/s | requests per stack CPU-second | stack cores busy | p50 (ms) | p99 (ms) | failed |",
             "|---:|---:|---:|---:|---:|---:|---:|",
             f"| {med['rps']:.0f} | {med['journeys_per_s']:.1f} | {med['per_cpu_second']:.0f} | {med['stack_cores']:.2f} "
             f"| {med['p50']:.2f} | {med['p99']:.2f} | {totals['non_2xx']} of {totals['requests']} |",
             "", "| process | CPU per request (µs, user + system) | share of the stack's CPU |", "|---|---:|---:|"]
    for label, micros in journey["cpu_us"].items():
        lines.append(f"| {label} | {micros:.1f} | {100 * journey['share'][label]:.1f} % |")
    lines.append(f"| whole stack | {sum(journey['cpu_us'].values()):.1f} | 100 % |")
    if journey["requests_per_journey"]:
        lines += ["", f"A journey is a placed order (a `POST /api/orders/checkout` answered 2xx); the mix sent "
                      f"{journey['requests_per_journey']:.1f} requests per journey, and PostgreSQL committed "
                      f"{journey['postgres_writes_per_journey']:.1f} write transactions per journey. The load "
                      f"generator used {totals['generator_cpu_seconds']:.1f} CPU seconds on core {LOAD_CORE} for "
                      f"{totals['requests']} requests."]
    return "\n".join(lines) + "\n"


def capacity_markdown(summary, args, commit, cpu):
    journey = summary["journey"]
    plan, ceilings = capacity_plan(journey)
    med = journey["median"]
    lines = ["**Measured** — " + journey_header(summary, args, commit, cpu), "",
             f"The stack served {med['rps']:.0f} requests/s ({med['journeys_per_s']:.1f} journeys/s) on one shared "
             f"core, {med['per_cpu_second']:.0f} requests per CPU-second of the whole stack, p50 "
             f"{med['p50']:.2f} ms, p99 {med['p99']:.2f} ms.", "",
             "| process | CPU per request (µs) | share of the stack | cores per 1k requests/s |",
             "|---|---:|---:|---:|"]
    for label, micros in journey["cpu_us"].items():
        lines.append(f"| {label} | {micros:.1f} | {100 * journey['share'][label]:.1f} % | {micros / 1000:.3f} |")
    stack = sum(journey["cpu_us"].values())
    lines.append(f"| whole stack | {stack:.1f} | 100 % | {stack / 1000:.3f} |")
    if journey["requests_per_journey"]:
        lines += ["", f"Per journey: {journey['requests_per_journey']:.1f} requests, "
                      f"{journey['postgres_writes_per_journey']:.1f} PostgreSQL write transactions (each "
                      "commit waits until its WAL is on disk)."]
    units = {"redis": ("master", "masters"), "redis-order-cache": ("node", "nodes"),
             "postgres": ("core on the primary", "cores on the primary"), "nats": ("core", "cores")}
    lines += ["", f"**Extrapolated** — cores (at 100 % busy) and, after the arrow, replicas or nodes of one "
                  f"core at {PLANNED_UTILISATION * 100:.0f} % busy (services at least {MIN_SERVICE_REPLICAS}):", "",
              "| process | " + " | ".join(f"{rate // 1000}k requests/s" for rate in CAPACITY_RATES) + " |",
              "|---|" + "---:|" * len(CAPACITY_RATES)]
    for label, rows in plan.items():
        one, many = units.get(label, ("replica", "replicas"))
        cells = [f"{rows[rate]['cores']:.2f} → {rows[rate]['units']} {one if rows[rate]['units'] == 1 else many}"
                 for rate in CAPACITY_RATES]
        lines.append(f"| {label} | {' | '.join(cells)} |")
    lines.append("| whole stack | " + " | ".join(f"{rate * stack / 1e6:.1f} cores" for rate in CAPACITY_RATES) + " |")
    if journey["requests_per_journey"]:
        lines.append("| PostgreSQL write transactions/s | " + " | ".join(
            f"{rate / journey['requests_per_journey'] * journey['postgres_writes_per_journey']:.0f}"
            for rate in CAPACITY_RATES) + " |")
    services = {label: micros for label, micros in journey["cpu_us"].items() if label in SERVICE_PROCESSES and micros}
    if services:
        busiest = max(services, key=services.get)
        bound = HPA_MAX_REPLICAS * PLANNED_UTILISATION * 1e6 / services[busiest]
        lines += ["", f"The production overlay's {HPA_MAX_REPLICAS} replicas at most per service carry the mix up to "
                      f"{bound:.0f} requests/s, where {busiest} runs out first."]
    if ceilings:
        first = min(ceilings, key=ceilings.get)
        lines += ["", "One node of a store that executes on one thread reaches "
                      f"{PLANNED_UTILISATION * 100:.0f} % of its core at: "
                  + ", ".join(f"{label} {value:.0f} requests/s" for label, value in sorted(ceilings.items(), key=lambda i: i[1]))
                  + f". The first to saturate is **{first}**."]
    return "\n".join(lines) + "\n"


def write_between(path, start, end, text, title):
    """Put `text` between the markers `start` and `end` of the page at `path`, keeping everything
    around them; a page without the markers gets them, at its end."""
    existing = path.read_text() if path.exists() else ""
    if start in existing and end in existing:
        head, rest = existing.split(start, 1)
        tail = rest.split(end, 1)[1]
        path.write_text(f"{head}{start}\n{text}{end}{tail}")
    elif existing:
        path.write_text(f"{existing.rstrip()}\n\n{start}\n{text}{end}\n")
    else:
        path.write_text(f"# {title}\n\n{start}\n{text}{end}\n")


def write_markdown(summary, args, path, scaling_path):
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    lines = [
        "# Performance",
        "",
        f"`make bench` on {datetime.date.today().isoformat()}, commit `{commit}`, {cpu}, {os.cpu_count()} cores, "
        f"Linux {platform.release()}. Servers pinned to core {SERVER_CORE}, load generator to core {LOAD_CORE}; "
        f"wrk 1 thread × {args.connections} connections, {args.duration} s per run, {args.repeats} run{'' if args.repeats == 1 else 's'} per case in "
        f"alternating order, medians shown; each goal's ratio is the median of the per-repetition ratios. Simulation off; {'debug (smoke)' if args.smoke else 'release'} builds"
        + ("; the gateway's cases use its PGO build (`make gateway-pgo`), `gateway-plain` the same code built plainly."
           if summary.get("gateway_pgo") else "; the gateway is the plain build (no PGO).")
        + (" `gateway-hyper-util` is the gateway's `hyper_util_proxy` example (plain build): the route "
           "forwarded by hyper-util's pooled client instead of the gateway's own exchange."
           if "gateway-hyper-util" in summary["cases"] else ""),
        "",
        "| case | requests/s | p50 (ms) | p99 (ms) | non-2xx |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, values in summary["cases"].items():
        lines.append(f"| {name} | {values['rps']:.0f} | {values['p50']:.2f} | {values['p99']:.2f} | {values['non_2xx']} |")
    with_cpu = {name: values["cpu_us"] for name, values in summary["cases"].items() if "cpu_us" in values}
    if with_cpu:
        lines += ["", f"CPU per request on core {SERVER_CORE} (µs, user + system, medians; from /proc, so the "
                      "proxy's share is separate from the catalog's), and context switches per 1 000 requests "
                      "(voluntary: the process waited for work; involuntary: the scheduler took the core from it):", "",
                  "| case | proxy user | proxy system | catalog user | catalog system "
                  "| proxy switches vol / invol | catalog switches vol / invol |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name, per_request in with_cpu.items():
            cells = [f"{per_request[label][kind]:.1f}" if label in per_request else "—"
                     for label in ("proxy", "catalog") for kind in ("user", "sys")]
            cells += [f"{per_request[label]['voluntary']:.0f} / {per_request[label]['involuntary']:.0f}"
                      if label in per_request else "—" for label in ("proxy", "catalog")]
            lines.append(f"| {name} | {' | '.join(cells)} |")
    if summary["memory"]:
        lines += ["", "| service | idle RSS (MiB) | RSS under load (MiB) |", "|---|---:|---:|"]
        for name, values in summary["memory"].items():
            lines.append(f"| {name} | {values['idle_mib']:.1f} | {values['load_mib']:.1f} |")
    if summary["generators"]:
        lines += ["", "| load generator | requests | CPU seconds | requests per CPU-second |", "|---|---:|---:|---:|"]
        for name, values in summary["generators"].items():
            lines.append(f"| {name} | {values['requests']} | {values['cpu_seconds']:.2f} | {values['per_cpu_second']:.0f} |")
    lines += ["", "| goal | value | per repetition | target | met |", "|---|---:|---:|---:|---|"]
    for goal in summary["goals"]:
        target = "—" if goal["target"] is None else f"{'≥' if goal['better'] == 'higher' else '≤'} {goal['target']:g}"
        met = "—" if goal["met"] is None else ("yes" if goal["met"] else "**no**")
        values = ", ".join(f"{value:.2f}" for value in goal["per_repeat"]) or "—"
        lines.append(f"| {goal['goal']} | {goal['value']:.2f} | {values} | {target} | {met} |")
    for note in summary["notes"]:
        lines += ["", f"_{note}_"]
    results = "\n".join(lines[1:]).strip() + "\n"
    # Only the parts between the markers are generated; the analysis around them is kept, and a
    # run of some cases leaves the others' results alone.
    if summary["cases"] or summary["memory"] or summary["generators"]:
        write_between(path, "<!-- results:start -->", "<!-- results:end -->", results, "Performance")
    if summary["journey"]:
        write_between(path, "<!-- journey:start -->", "<!-- journey:end -->",
                      journey_markdown(summary, args, commit, cpu), "Performance")
        warning = journey_failure_warning(summary["journey"])
        if warning:
            # The capacity model keeps the last run that served the mix.
            log(f"{scaling_path} left as it was: {warning}")
        else:
            write_between(scaling_path, "<!-- capacity:start -->", "<!-- capacity:end -->",
                          capacity_markdown(summary, args, commit, cpu), "Scaling")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="every case once, 1 s, debug builds, no PGO, no Locust install")
    # Many short repetitions rather than a few long ones: on a shared machine the speed drifts by
    # tens of percent over seconds, and the median of six back-to-back pairs is steadier than of three.
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--repeats", type=int, default=6, help="each case this many times, order alternating")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--only", default="",
                        help="comma-separated names; a case runs when its name contains one of them "
                             "(direct, gateway — every gateway-* case —, gateway-hyper-util, nginx, cart, "
                             "telemetry, memory, generator, journey)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "performance.md"),
                        help="the page whose results markers receive the tables")
    parser.add_argument("--scaling-out", default=str(ROOT / "docs" / "scaling.md"),
                        help="the page whose capacity markers receive the journey case's capacity model")
    parser.add_argument("--json", default=str(ROOT / "reports" / "bench.json"))
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--no-pgo", dest="pgo", action="store_false",
                        help="measure the plain release gateway only (no `ops/pgo.py` build)")
    args = parser.parse_args()
    if args.smoke:
        # The smoke checks the script end to end, not the build: no PGO gateway, even a stale one.
        args.duration, args.repeats, args.pgo = 1, 1, False
        args.out = str(ROOT / "reports" / "bench-smoke.md")
        args.scaling_out = str(ROOT / "reports" / "bench-smoke-scaling.md")
        args.json = str(ROOT / "reports" / "bench-smoke.json")

    # The journey case alone needs neither wrk, nginx nor Locust, nor the gateway's examples and
    # PGO build (it measures the plain gateway, as shipped).
    journey_only = {part.strip() for part in args.only.split(",")} == {"journey"}
    if not journey_only:
        ensure_tools(need_locust=not args.smoke)
    if not args.no_build:
        profile = [] if args.smoke else ["--release"]
        packages = ["-p", "gateway", "-p", "catalog", "-p", "cart", "-p", "orders"]
        if (ROOT / "ops" / "loadtest").exists():
            packages += ["-p", "loadtest"]
        subprocess.run(["cargo", "build", *profile, *packages], cwd=ROOT, check=True)
        if not journey_only:
            subprocess.run(["cargo", "build", *profile, "-p", "gateway", "--example", "otlp_sink",
                            "--example", "hyper_util_proxy"], cwd=ROOT, check=True)
        if args.pgo and not journey_only:
            subprocess.run([sys.executable, str(ROOT / "ops" / "pgo.py"), "--no-service-build",
                            *(["--debug", "--seconds", "1"] if args.smoke else [])],
                           cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    bench = Bench(args)
    summary = bench.run()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(summary, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.scaling_out).parent.mkdir(parents=True, exist_ok=True)
    write_markdown(summary, args, Path(args.out), Path(args.scaling_out))
    log(f"wrote {args.out}{f', {args.scaling_out}' if summary['journey'] else ''} and {args.json}")
    broken = [name for name, case in summary["cases"].items() if case["rps"] <= 0]
    if bench.selected("journey") and (not summary["journey"] or summary["journey"]["median"]["rps"] <= 0
                                      or not summary["journey"]["totals"]["journeys"]):
        broken.append("journey")
    if broken:
        log(f"cases with no successful requests (or no placed order): {broken}; {' '.join(summary['notes'])}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

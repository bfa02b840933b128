#!/usr/bin/env python3
"""`make bench`: ShopStack measured side by side with nginx and the direct path.

Everything runs on 127.0.0.1 with simulation off and release builds. Servers are pinned to one
core and the load generator to the other, so runs are comparable; every case is repeated
(default 6 repetitions of 5 s) in alternating order and the median is reported. The results go
between the results markers of docs/performance.md, with the machine, date and commit.

  python3 ops/bench/bench.py                 # the full run: builds (PGO gateway included), about 12 minutes of runs
  python3 ops/bench/bench.py --smoke         # every case once for 1 s with debug builds, no PGO (tests)
  python3 ops/bench/bench.py --only gateway,nginx --duration 20

Tools it needs and installs from Debian's packages when missing: wrk, nginx. Locust comes from
PyPI into a throwaway venv under /tmp.
"""

import argparse
import datetime
import json
import os
import platform
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
    def __init__(self):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="shopstack-bench-redis-")
        self.process = subprocess.Popen(pinned(SERVER_CORE, ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                                             "--save", "", "--appendonly", "no", "--dir", self.dir]),
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
                   "goals": goals, "notes": self.notes, "gateway_pgo": self.pgo_gateway is not None}
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


def write_markdown(summary, args, path):
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
        for name, cpu in with_cpu.items():
            cells = [f"{cpu[label][kind]:.1f}" if label in cpu else "—"
                     for label in ("proxy", "catalog") for kind in ("user", "sys")]
            cells += [f"{cpu[label]['voluntary']:.0f} / {cpu[label]['involuntary']:.0f}"
                      if label in cpu else "—" for label in ("proxy", "catalog")]
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
    # Only the part between the markers is generated; the analysis around it is kept.
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    existing = path.read_text() if path.exists() else ""
    if start in existing and end in existing:
        head, rest = existing.split(start, 1)
        tail = rest.split(end, 1)[1]
        path.write_text(f"{head}{start}\n{results}{end}{tail}")
    else:
        path.write_text(f"# Performance\n\n{start}\n{results}{end}\n")


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
                             "telemetry, memory, generator)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "performance.md"),
                        help="the page whose results markers receive the tables")
    parser.add_argument("--json", default=str(ROOT / "reports" / "bench.json"))
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--no-pgo", dest="pgo", action="store_false",
                        help="measure the plain release gateway only (no `ops/pgo.py` build)")
    args = parser.parse_args()
    if args.smoke:
        # The smoke checks the script end to end, not the build: no PGO gateway, even a stale one.
        args.duration, args.repeats, args.pgo = 1, 1, False
        args.out = str(ROOT / "reports" / "bench-smoke.md")
        args.json = str(ROOT / "reports" / "bench-smoke.json")

    ensure_tools(need_locust=not args.smoke)
    if not args.no_build:
        profile = [] if args.smoke else ["--release"]
        packages = ["-p", "gateway", "-p", "catalog", "-p", "cart", "-p", "orders"]
        if (ROOT / "ops" / "loadtest").exists():
            packages += ["-p", "loadtest"]
        subprocess.run(["cargo", "build", *profile, *packages], cwd=ROOT, check=True)
        subprocess.run(["cargo", "build", *profile, "-p", "gateway", "--example", "otlp_sink",
                        "--example", "hyper_util_proxy"], cwd=ROOT, check=True)
        if args.pgo:
            subprocess.run([sys.executable, str(ROOT / "ops" / "pgo.py"), "--no-service-build",
                            *(["--debug", "--seconds", "1"] if args.smoke else [])],
                           cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    summary = Bench(args).run()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(summary, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_markdown(summary, args, Path(args.out))
    log(f"wrote {args.out} and {args.json}")
    broken = [name for name, case in summary["cases"].items() if case["rps"] <= 0]
    if broken:
        log(f"cases with no successful requests: {broken}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""`make gateway-pgo`: the gateway built with profile-guided optimisation (PGO).

Why: a proxied request runs through hyper, tokio, tracing, prometheus and our crates once, end to
end, so the gateway's speed depends on how its code is laid out as much as on how many
instructions it runs. valgrind's cache simulation put the plain release build at twice nginx's
L1 instruction-cache misses per request (1 836 against 880). Given a profile of real proxying,
LLVM places hot code together, moves cold paths out of the way and inlines by measured frequency:
−16 % instructions and −38 % L1i misses per proxied request (docs/decisions/0003-pgo.md).

Steps, each build in its own target directory (the workspace's own builds are left alone):
  1. an instrumented gateway (`-Cprofile-generate`) in <target>/pgo-generate;
  2. training: a catalog and an in-memory cart (built as usual) on free loopback ports, the
     instrumented gateway in front, wrk driving a mix of proxied requests for --seconds (product
     reads, the listing, an unknown product, cart adds and reads), then half as long again with
     every span exported to a local OTLP sink (the gateway's `otlp_sink` example); SIGTERM makes
     each run write its profile;
  3. the profile merged by the llvm-profdata that matches rustc's LLVM (rustup's llvm-tools, or
     Debian's llvm-<major>, installed from Debian's packages when missing);
  4. the gateway built with `-Cprofile-use` into <target>/pgo/<profile>/gateway, whose path is
     printed last.

  python3 ops/pgo.py                 # release build
  python3 ops/pgo.py --debug --seconds 1   # the same steps on debug builds (a quick check of this script)

`make bench` runs it (through ops/bench/bench.py); `make test` does not.
"""

import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ops" / "bench"))
# The bench's way of running a service (environment, readiness, SIGTERM), one copy of it.
from bench import ADMIN_TOKEN, Service, free_port, http  # noqa: E402
# What `make bench` builds (ops/bench/bench.py), in one cargo invocation: the same set here gives
# the same feature unification, so the two never rebuild each other's binaries.
SERVICE_PACKAGES = ["gateway", "catalog", "cart", "orders", "loadtest"]

# The training mix, one request per call: mostly product reads (the storefront's commonest
# request), the listing, a miss (404 through the error path), and cart writes and reads.
TRAINING_SCRIPT = """
local counter = 0
request = function()
  counter = counter + 1
  local slot = counter % 8
  local user = "pgo-" .. (counter % 997)
  if slot == 0 then
    return wrk.format("POST", "/v1/cart/" .. user .. "/items", {["content-type"] = "application/json"},
      '{"product_id":"prod-123","quantity":1}')
  elseif slot == 1 then
    return wrk.format("GET", "/v1/cart/" .. user)
  elseif slot == 2 then
    return wrk.format("GET", "/catalog")
  elseif slot == 3 then
    return wrk.format("GET", "/catalog/no-such-product")
  end
  return wrk.format("GET", "/catalog/prod-123")
end
"""


def log(message):
    print(f"[pgo] {message}", file=sys.stderr, flush=True)


def target_dir():
    metadata = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout
    return Path(json.loads(metadata)["target_directory"])


def llvm_profdata():
    """The llvm-profdata of rustc's own LLVM major version: profiles are read by the LLVM that
    wrote them, and an older tool refuses a newer format."""
    version = subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout
    major = re.search(r"^LLVM version: (\d+)", version, re.M).group(1)
    sysroot = subprocess.run(["rustc", "--print", "sysroot"], capture_output=True, text=True, check=True).stdout.strip()
    candidates = [*glob.glob(f"{sysroot}/lib/rustlib/*/bin/llvm-profdata"),
                  shutil.which(f"llvm-profdata-{major}") or "", f"/usr/lib/llvm-{major}/bin/llvm-profdata"]
    found = next((path for path in candidates if path and os.access(path, os.X_OK)), None)
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        log(f"installing llvm-{major} (llvm-profdata) from Debian's packages")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        install = ["apt-get", "install", "-y", "-q", f"llvm-{major}"]
        if subprocess.run(install, env=env, stdout=subprocess.DEVNULL).returncode != 0:
            # A fresh machine's package lists may predate the package.
            subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL, check=True)
            subprocess.run(install, env=env, stdout=subprocess.DEVNULL, check=True)
        found = f"/usr/lib/llvm-{major}/bin/llvm-profdata"
    if found is None or not os.access(found, os.X_OK):
        sys.exit(f"pgo: no llvm-profdata for LLVM {major}: `rustup component add llvm-tools` "
                 f"or `apt-get install llvm-{major}`")
    return found


def cargo_build(profile_args, packages, target, rustflags="", example=None):
    env = dict(os.environ, CARGO_TARGET_DIR=str(target))
    if rustflags:
        env["RUSTFLAGS"] = f"{os.environ.get('RUSTFLAGS', '')} {rustflags}".strip()
    argv = ["cargo", "build", *profile_args]
    for package in packages:
        argv += ["-p", package]
    if example:
        argv += ["--example", example]
    subprocess.run(argv, cwd=ROOT, env=env, check=True)


def drive(instrumented, services, env, script, seconds):
    """One instrumented gateway under the training mix for `seconds`, then stopped (SIGTERM makes
    it write its profile as it exits)."""
    gateway = Service(services, "gateway", free_port(), env, binary=instrumented)
    try:
        output = subprocess.run(["wrk", "-t1", "-c32", f"-d{seconds}s", "-s", str(script), gateway.url("")],
                                capture_output=True, text=True, check=True).stdout
    finally:
        gateway.stop()
    requests = int(re.search(r"(\d+) requests in", output).group(1))
    failed = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    failed = int(failed.group(1)) if failed else 0
    return requests, failed


def train(instrumented, services, profiles, seconds):
    """Run the instrumented gateway under the training mix, first as deployed by default, then
    exporting every span to a local OTLP sink (so the exporter's path is profiled too); the
    profiles land in `profiles`."""
    shutil.rmtree(profiles, ignore_errors=True)
    profiles.mkdir(parents=True)
    sink_port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="shopstack-pgo-"))
    script = workdir / "mix.lua"
    script.write_text(TRAINING_SCRIPT)
    running = []
    sink = None
    try:
        catalog = Service(services, "catalog", free_port(), {})
        running.append(catalog)
        http("PUT", catalog.url("/admin/stock/prod-123"), {"stock": 1_000_000_000},
             {"authorization": f"Bearer {ADMIN_TOKEN}"})
        cart = Service(services, "cart", free_port(), {"CATALOG_SERVICE_URL": catalog.url("")})
        running.append(cart)
        sink = subprocess.Popen([str(services / "examples" / "otlp_sink"), "--port", str(sink_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        backends = {"CATALOG_SERVICE_URL": catalog.url(""), "CART_SERVICE_URL": cart.url(""),
                    "ORDERS_SERVICE_URL": "http://127.0.0.1:9",
                    "LLVM_PROFILE_FILE": str(profiles / "gateway-%p-%m.profraw")}
        exporting = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}",
                     "OTEL_TRACES_SAMPLER": "always_on"}
        for label, env, duration in (("default", backends, seconds),
                                     ("exporting spans", {**backends, **exporting}, max(1, seconds // 2))):
            requests, failed = drive(instrumented, services, env, script, duration)
            log(f"trained ({label}) on {requests} requests in {duration} s ({failed} answered non-2xx)")
            # One in eight is meant to be a 404; far more means the stack was not serving,
            # and a profile of error paths would make the build slower, not faster.
            if not requests or failed > requests // 4:
                raise RuntimeError(f"training load mostly failed ({failed} of {requests} non-2xx)")
    finally:
        if sink:
            sink.kill()
            sink.wait()
        for service in reversed(running):
            service.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    written = sorted(profiles.glob("*.profraw"))
    if len(written) < 2:
        raise RuntimeError("the instrumented gateway did not write its profiles")
    return written


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="debug builds (a quick check of the steps)")
    parser.add_argument("--seconds", type=int, default=10, help="training load duration")
    parser.add_argument("--no-service-build", dest="build_services", action="store_false",
                        help="the catalog, cart and otlp_sink example are built already (by the caller)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("pgo: wrk is needed for the training load (apt-get install wrk)")
    profile_args, profile_dir = ([], "debug") if args.debug else (["--release"], "release")
    profdata_tool = llvm_profdata()
    target = target_dir()
    generate_target, use_target = target / "pgo-generate", target / "pgo"
    profiles = generate_target / "profiles"

    log("building the training services and the instrumented gateway")
    if args.build_services:
        cargo_build(profile_args, SERVICE_PACKAGES, target)
        cargo_build(profile_args, ["gateway"], target, example="otlp_sink")
    services = target / profile_dir
    missing = [name for name in ("catalog", "cart", "examples/otlp_sink") if not (services / name).exists()]
    if missing:
        sys.exit(f"pgo: {', '.join(missing)} not built in {services} (drop --no-service-build to build them)")
    cargo_build(profile_args, ["gateway"], generate_target, f"-Cprofile-generate={profiles}")
    raw = train(generate_target / profile_dir / "gateway", services, profiles, args.seconds)
    # cargo watches the flags, not the profile file they name: naming the profile after this
    # script (which holds the training mix) rebuilds every crate when the training changes; runs
    # of the same training rebuild only crates whose source changed, with the fresh profile.
    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    merged = use_target / f"gateway-{digest}.profdata"
    merged.parent.mkdir(parents=True, exist_ok=True)
    for stale in merged.parent.glob("gateway*.profdata"):
        stale.unlink()
    subprocess.run([profdata_tool, "merge", "-o", str(merged), *map(str, raw)], check=True)
    log("building the gateway with the profile")
    cargo_build(profile_args, ["gateway"], use_target, f"-Cprofile-use={merged}")
    print(use_target / profile_dir / "gateway")
    return 0


if __name__ == "__main__":
    sys.exit(main())

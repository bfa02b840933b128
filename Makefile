# ShopStack — the high-level interface. `make help` lists the targets.
SHELL := bash
CARGO ?= cargo
# Local-only admin token so the load test can switch faults on and off; never use it elsewhere.
export ADMIN_TOKEN ?= shopstack-local-admin
export STRESS_ENABLED ?= true

.PHONY: help build run-all run-gateway run-catalog run-cart run-orders test bench bench-smoke gateway-pgo lint fmt clean load-test gameday \
	observability-tools check-observability compose-up compose-down docker-build schemathesis \
	k8s-tools k8s-render k8s-dev-secret

# Docker: `docker compose` (v2) when present, else Debian's docker-compose (validation only).
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
# compose-up profile: full (everything) or lite (no collector, Tempo, Loki, log shipper).
PROFILE ?= full
# make k8s-render: dev or prod; kubectl: the one make k8s-tools installed when the machine had none.
OVERLAY ?= dev
KUBECTL ?= $(shell [ -x target/k8s-venv/bin/kubectl ] && echo target/k8s-venv/bin/kubectl || echo kubectl)
IMAGE_TAG ?= dev
IMAGES ?= gateway catalog cart orders

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

build: ## Build every binary (debug)
	$(CARGO) build --workspace --bins

run-all: build ## Start all services on their embedded defaults; Ctrl-C stops them all
	./ops/run-all.sh

run-gateway: ## Run the gateway on :8000
	$(CARGO) run -p gateway

run-catalog: ## Run the catalog on :8001
	$(CARGO) run -p catalog

run-cart: ## Run the cart on :8002
	$(CARGO) run -p cart

run-orders: ## Run the orders service on :8003 (SQLite under ./data/ unless DATABASE_URL is set)
	$(CARGO) run -p orders

# `make load-test` knobs, e.g. `make load-test LOAD_TIME=5m LOAD_ARGS="--fault-at 60s:cart.failure_rate=0.2"`.
LOAD_HOST ?= http://127.0.0.1:8000
LOAD_USERS ?= 50
LOAD_RATE ?= 10
LOAD_TIME ?= 60s
LOAD_ARGS ?=

load-test: ## Goose load test against the running stack (start it with `make run-all`); reports in reports/
	$(CARGO) run --quiet -p loadtest -- --host $(LOAD_HOST) --users $(LOAD_USERS) --hatch-rate $(LOAD_RATE) --run-time $(LOAD_TIME) $(LOAD_ARGS)

# `make gameday TIMELINE=my-timeline.txt` runs another timeline (docs/gameday.md).
TIMELINE ?= ops/gameday/timeline.txt

# Debug binaries, the ones `make test` builds: a game day measures failover and invariants, not
# speed, and a release build of the whole stack (fat LTO) costs many minutes on a small machine.
gameday: ## Chaos run for users: clustered stack locally, shoppers, a timeline of faults (TIMELINE=…); report in target/gameday/
	$(BUILD_ALL)
	target/debug/gameday --timeline $(TIMELINE)

# One build serves the tests, the bench smoke and schemathesis: `cargo test --workspace` builds
# every library, binary, example and test of the workspace with one feature resolution (the
# dev-dependencies' features included), and the later steps run `cargo test --workspace --no-run`,
# the same command, which finds it all fresh. A per-package `cargo build -p …` resolves features
# differently and rebuilds shared crates (reqwest, tokio, …) and the services over the same paths.
BUILD_ALL = $(CARGO) test --workspace --no-run

test: check-observability k8s-tools ## Run every test (the command CI runs): needs the packages .ci/run installs
	$(CARGO) test --workspace --no-fail-fast
	$(MAKE) bench-smoke

bench: ## Benchmark gateway vs nginx vs direct, cart, telemetry, memory, Goose vs Locust, the whole journey (release builds, PGO gateway)
	python3 ops/bench/bench.py

bench-smoke: ## The benchmark end to end with a tiny duration on the debug build `make test` made (no PGO)
	$(BUILD_ALL)
	python3 ops/bench/bench.py --smoke --no-build --no-pgo

gateway-pgo: ## Build the gateway with profile-guided optimisation → target/pgo/release/gateway
	python3 ops/pgo.py

schemathesis: ## Fuzz every served OpenAPI document (st run --checks all; installs schemathesis in a venv)
	./ops/schemathesis/run.sh

lint: ## rustfmt check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

clean: ## Stop stray local services and remove build output
	-pkill -x gateway; pkill -x catalog; pkill -x cart; pkill -x orders; true
	$(CARGO) clean

observability-tools: ## Install Prometheus/promtool and a Compose validator if missing (Debian packages)
	./ops/observability-tools.sh

check-observability: observability-tools ## promtool checks and alert unit tests; validate docker-compose.yml (no engine needed)
	promtool check config observability/prometheus/prometheus.yml
	promtool check rules observability/prometheus/rules/*.yml
	promtool test rules observability/prometheus/tests/*.yml
	$(COMPOSE) -f docker-compose.yml config -q
	$(COMPOSE) -f docker-compose.yml --env-file observability/compose/lite.env config -q
	@if python3 -c 'import yaml' 2>/dev/null; then \
	  python3 -c 'import sys, yaml; [yaml.safe_load(open(f)) for f in sys.argv[1:]]' \
	    observability/otel-collector/config.yaml observability/tempo/tempo.yaml observability/loki/loki.yaml \
	    observability/grafana/provisioning/*/*.yml && echo "collector, Tempo, Loki and Grafana provisioning files are valid YAML"; \
	fi

k8s-tools: ## Install kubernetes-validate, checkov (and kubectl if missing) into target/k8s-venv for the manifest checks
	./ops/k8s-tools.sh

k8s-render: ## Print the Kubernetes manifests of an overlay (OVERLAY=dev|prod)
	$(KUBECTL) kustomize deploy/k8s/overlays/$(OVERLAY)

k8s-dev-secret: ## Create the Secret `shopstack` with random values for the dev overlay (current kubectl context)
	./deploy/k8s/dev-secret.sh

compose-up: ## Build and start the whole system in Docker (PROFILE=full|lite); Grafana on :3000
	$(COMPOSE) $(if $(filter lite,$(PROFILE)),--env-file observability/compose/lite.env,) up -d --build
	@echo "Grafana http://localhost:3000 · gateway http://localhost:8000 · Prometheus http://localhost:9090"

compose-down: ## Stop the Docker stack (data volumes kept; add -v by hand to drop them)
	$(COMPOSE) --profile full down --remove-orphans

docker-build: ## Build the service images shopstack/<service>:$(IMAGE_TAG) from the one Dockerfile
	for service in $(IMAGES); do docker build --target $$service -t shopstack/$$service:$(IMAGE_TAG) . || exit 1; done

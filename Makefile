# ShopStack — the high-level interface. `make help` lists the targets.
SHELL := bash
CARGO ?= cargo
# Local-only admin token so the load test can switch faults on and off; never use it elsewhere.
export ADMIN_TOKEN ?= shopstack-local-admin
export STRESS_ENABLED ?= true

.PHONY: help build run-all run-gateway run-catalog run-cart test bench bench-smoke lint fmt clean schemathesis

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

test: ## Run every test (the command CI runs)
	$(CARGO) test --workspace --no-fail-fast
	$(MAKE) bench-smoke

bench: ## Benchmark gateway vs nginx vs direct, cart, telemetry, memory, Goose vs Locust → docs/benchmarks.md
	python3 ops/bench/bench.py

bench-smoke: ## The benchmark end to end with a tiny duration and debug builds (part of `make test`)
	$(CARGO) build --bins -p gateway -p catalog -p cart
	python3 ops/bench/bench.py --smoke --no-build

schemathesis: ## Fuzz every served OpenAPI document (st run --checks all; installs schemathesis in a venv)
	./ops/schemathesis/run.sh

lint: ## rustfmt check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

clean: ## Stop stray local services and remove build output
	-pkill -x gateway; pkill -x catalog; pkill -x cart; true
	$(CARGO) clean

.DEFAULT_GOAL := help
CARGO ?= cargo
IMAGE_TAG ?= dev

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

setup: ## Install system packages the demo and tests need (root)
	bash scripts/setup.sh

build: ## Build every crate (debug)
	$(CARGO) build --workspace --bins

demo: ## Run the demo: two simulated nodes, two apps, encrypted traffic (root)
	bash scripts/demo.sh

test: ## Run the whole test suite, privileged tests included (root)
	bash scripts/test.sh

bench: ## Print throughput, RTT and time-to-first-packet figures (root)
	bash scripts/setup.sh
	$(CARGO) build --release --workspace --bins -q
	WEFT_BIN_DIR=$(CURDIR)/target/release target/release/weft-bench --examples examples

bench-scale: ## Control plane at scale: plan time, writes, memory by cluster size (ARGS=--quick, --sizes ...)
	$(CARGO) build --release -p weft-e2e --bin weft-bench-scale -q
	target/release/weft-bench-scale $(ARGS)

crds: ## Regenerate crds/*.yaml from the API types
	$(CARGO) run -q -p weft-api --bin crdgen -- crds

fmt: ## Format the code
	$(CARGO) fmt --all

images: ## Build the weft-operator:dev and weft-node-daemon:dev images (docker, no registry)
	$(CARGO) build --release --workspace --bins
	WEFT_BIN_DIR=$(CURDIR)/target/release WEFT_IMAGE_TAG=$(IMAGE_TAG) bash images/build.sh

lint: ## Clippy with warnings as errors
	$(CARGO) clippy --workspace --all-targets -- -D warnings

.PHONY: help setup build demo test bench bench-scale crds images fmt lint

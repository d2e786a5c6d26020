# syntax=docker/dockerfile:1
# The Theseus image: one binary, `theseus`, that the chart runs as the
# operator (`theseus operator`) and as the node agent (`theseus agent`).
#
#   docker build -t theseus:0.1.0 .
#
# tests/it/container.rs checks this file's structure (no Docker engine is needed
# for that); `make dockerfile-lint` runs hadolint on it.

# --- builder: the official Rust image, release build from the lock file ----
FROM rust:1.95-bookworm AS builder

# etcd-client compiles .proto files at build time and needs protoc.
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin theseus \
    && install -m 0755 target/release/theseus /usr/local/bin/theseus

# --- final: Debian slim, the binary and what it calls ----------------------
FROM debian:bookworm-slim

# ca-certificates: HTTPS package repositories, etcd and EC2 endpoints.
# procps: `kill`, which the agent's process supervisor uses to stop services.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates procps \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 65532 theseus \
    && useradd --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin theseus

COPY --from=builder /usr/local/bin/theseus /usr/local/bin/theseus

# Non-root by default (the operator). The chart runs the agent as root: it
# owns the node root on the host and starts the node's services.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/theseus"]
CMD ["--help"]

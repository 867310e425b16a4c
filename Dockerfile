# syntax=docker/dockerfile:1
# genesys-kafka-bridge: a multi-stage build with the README's build step
# (`cargo build --release --locked`) and a small non-root runtime image.
#
#   docker build -t genesys-kafka-bridge .
#   docker run --rm genesys-kafka-bridge demo     # no credentials needed
#   docker run --rm -e GENESYS_CLIENT_ID -e GENESYS_CLIENT_SECRET \
#     -v "$PWD/bridge.toml:/etc/genesys-kafka-bridge/bridge.toml:ro" \
#     -p 9464:9464 genesys-kafka-bridge --config /etc/genesys-kafka-bridge/bridge.toml run

FROM rust:1-bookworm AS build
# librdkafka is built from source by the rdkafka crate: it needs a C
# toolchain, make, OpenSSL and zlib headers (the rust image has most of them
# already; listed so that the build says what it needs). Versions come from
# the pinned Debian release of the base image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc g++ make pkg-config libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY emulator ./emulator
COPY tests ./tests
# Cargo.toml names the benches' files ([[bench]]): cargo reads the manifest
# only if they exist, even for a build that does not compile them.
COPY benches ./benches
# The cache mounts keep the registry and the build between image builds;
# the binary is copied out of the cached target directory.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -D -m 0755 target/release/genesys-kafka-bridge /out/genesys-kafka-bridge

FROM debian:bookworm-slim AS runtime
# libssl3 for librdkafka's TLS (SASL_SSL), ca-certificates for the brokers'
# and Genesys' certificates. zlib and libgcc are in the base image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libssl3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/genesys-kafka-bridge /usr/local/bin/genesys-kafka-bridge
# A numeric user, so that Kubernetes' runAsNonRoot can verify it; the root
# filesystem can be read-only (the bridge writes nothing to disk).
USER 65532:65532
# The admin server: /metrics, /livez, /readyz (admin.listen, default 0.0.0.0:9464).
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/genesys-kafka-bridge"]
CMD ["run"]

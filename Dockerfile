# syntax=docker/dockerfile:1
# genesys-kafka-bridge: a multi-stage build with the README's build step
# (`cargo build --release --locked`) and a small non-root runtime image
# (distroless-style: the binary, its shared libraries, CA certificates).
# scripts/image-check.sh builds this file as it is and runs the image.
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

FROM debian:bookworm-slim AS rootfs
# The runtime's root filesystem, distroless-style: the binary, the shared
# libraries it is linked against (ldd: libc, libgcc_s, libssl3/libcrypto,
# zlib), the CA certificates (librdkafka's OpenSSL reads them for SASL_SSL;
# the Genesys side uses rustls' built-in roots) and the user. No shell, no
# package manager. The libraries come from this image's Debian release; each
# package they come from is recorded in /var/lib/dpkg/status.d (as distroless
# images do) so that image scanners still see them, with its copyright file.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libssl3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/genesys-kafka-bridge /rootfs/usr/local/bin/genesys-kafka-bridge
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN set -eu; \
    files="$(ldd /rootfs/usr/local/bin/genesys-kafka-bridge | grep -o '/[^ ]*')"; \
    for f in $files; do cp -L --parents "$f" /rootfs/; done; \
    mkdir -p /rootfs/etc/ssl/certs /rootfs/usr/lib/ssl /rootfs/var/lib/dpkg/status.d /rootfs/tmp; \
    cp /etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/; \
    ln -s /etc/ssl/certs /rootfs/usr/lib/ssl/certs; \
    ln -s /etc/ssl/certs/ca-certificates.crt /rootfs/usr/lib/ssl/cert.pem; \
    chmod 1777 /rootfs/tmp; \
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >/rootfs/etc/passwd; \
    printf 'root:x:0:\nnonroot:x:65532:\n' >/rootfs/etc/group; \
    printf 'hosts: files dns\n' >/rootfs/etc/nsswitch.conf; \
    { for f in $files; do dpkg -S "$f" 2>/dev/null || dpkg -S "$(readlink -f "$f")"; done | cut -d: -f1; \
      echo ca-certificates; } | sort -u | while read -r pkg; do \
      dpkg-query -s "$pkg" >"/rootfs/var/lib/dpkg/status.d/$pkg"; \
      if [ -f "/usr/share/doc/$pkg/copyright" ]; then \
        mkdir -p "/rootfs/usr/share/doc/$pkg" && cp "/usr/share/doc/$pkg/copyright" "/rootfs/usr/share/doc/$pkg/"; \
      fi; \
    done

FROM scratch AS runtime
COPY --from=rootfs /rootfs/ /
# A numeric user, so that Kubernetes' runAsNonRoot can verify it; the root
# filesystem can be read-only (the bridge writes nothing to disk).
USER 65532:65532
# The admin server: /metrics, /livez, /readyz (admin.listen, default 0.0.0.0:9464).
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/genesys-kafka-bridge"]
CMD ["run"]

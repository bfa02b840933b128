# syntax=docker/dockerfile:1
#
# Every ShopStack service image from one multi-stage build (BuildKit: Docker 23+ or
# `docker compose`):
#
#   docker build --target gateway -t shopstack/gateway:dev .     # or: make docker-build
#
# 1. `build` compiles the service binaries once, in release mode, with cache mounts for the
#    cargo registry and the target directory (a rebuild after a code change takes seconds to
#    minutes, not a full dependency build).
# 2. `runtime` is distroless `cc` (glibc, CA certificates; no shell, no package manager) as the
#    non-root user 65532, with /var/log/shopstack (LOG_FILE, read by the log shipper) and
#    /app/data (embedded SQLite for orders) writable by that user.
# 3. One small stage per service adds its binary. There is no curl in the image: the
#    HEALTHCHECK runs the binary itself (`gateway healthcheck` → GET /readyz on loopback).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
# The services to build; a service whose crate is not in this checkout is skipped here (and
# only its own image stage then fails).
ARG SERVICES="gateway catalog cart orders"
RUN --mount=type=cache,id=shopstack-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=shopstack-target,target=/src/target \
    set -eu; \
    packages=""; built=""; \
    for service in $SERVICES; do \
      if [ -f "apps/$service/Cargo.toml" ]; then packages="$packages -p $service"; built="$built $service"; fi; \
    done; \
    cargo build --release --locked $packages; \
    mkdir -p /out/bin /out/rootfs/var/log/shopstack /out/rootfs/app/data; \
    for service in $built; do cp "target/release/$service" /out/bin/; done

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build --chown=65532:65532 /out/rootfs/ /
WORKDIR /app
USER 65532:65532
ENV BIND_ADDR=0.0.0.0 \
    LOG_LEVEL=info
STOPSIGNAL SIGTERM

FROM runtime AS gateway
COPY --from=build /out/bin/gateway /usr/local/bin/gateway
ENV PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["/usr/local/bin/gateway", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/gateway"]

FROM runtime AS catalog
COPY --from=build /out/bin/catalog /usr/local/bin/catalog
ENV PORT=8001
EXPOSE 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["/usr/local/bin/catalog", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/catalog"]

FROM runtime AS cart
COPY --from=build /out/bin/cart /usr/local/bin/cart
ENV PORT=8002
EXPOSE 8002
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["/usr/local/bin/cart", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/cart"]

FROM runtime AS orders
COPY --from=build /out/bin/orders /usr/local/bin/orders
ENV PORT=8003
EXPOSE 8003
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["/usr/local/bin/orders", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/orders"]

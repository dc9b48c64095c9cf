# syntax=docker/dockerfile:1
# One image holding the service binaries; docker-compose.yml chooses the entrypoint per service
# (quotaflow-ingest, quotaflow-archiver, quotaflow-aggregator, quotaflow-alerter, quotaflow-decide). Build:
# `docker compose build`.

FROM rust:1-bookworm AS builder
# cmake builds the vendored librdkafka (rdkafka's `cmake-build` feature). libcurl4-openssl-dev is what
# librdkafka links for OAUTHBEARER/OIDC when rdkafka's `curl` feature is on; it is off today, the
# headers are here so turning it on does not break the image.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake libcurl4-openssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target/ between builds; the binaries are copied out in the same
# step because a cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p ingest -p quotaflow-archiver -p aggregator -p alerter -p quotaflow-decide \
    && mkdir -p /out \
    && cp target/release/quotaflow-ingest target/release/quotaflow-archiver target/release/quotaflow-aggregator target/release/quotaflow-alerter target/release/quotaflow-decide /out/

FROM debian:bookworm-slim
# curl runs the compose healthchecks against /readyz (and brings libcurl4 with it).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libcurl4 curl \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin quotaflow
COPY --from=builder /out/quotaflow-ingest /out/quotaflow-archiver /out/quotaflow-aggregator /out/quotaflow-alerter /out/quotaflow-decide /usr/local/bin/
USER quotaflow
# No ENTRYPOINT on purpose: one image, five services; each compose service sets its own.

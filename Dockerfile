# syntax=docker/dockerfile:1
#
# The costmap-operator image: one static binary (musl, rustls: no OpenSSL, no libc at run
# time) on distroless/static, running as the non-root user 65532. The same binary is the
# operator (`run`), the sidecar (`agent`) and the `check` and `crd` tools.
#
# Not built on the development machine (it has no container engine); build it with
# BuildKit (Docker 23+ or buildx):
#   docker build -t ghcr.io/costmap-operator/costmap-operator:0.1.0 .
# The Rust target follows the build platform: x86_64-unknown-linux-musl on linux/amd64,
# aarch64-unknown-linux-musl on linux/arm64
# (docker buildx build --platform linux/amd64,linux/arm64 ...).

# Pinned to the toolchain the project is tested with (Cargo.toml's rust-version is the floor).
FROM rust:1.95-bookworm AS build
# musl-gcc: ring (rustls' crypto) compiles C and assembly for the musl target.
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/*
RUN rustup target add "$(uname -m)-unknown-linux-musl"
WORKDIR /src
COPY . .
# Cache mounts keep the crates.io downloads and the compiled dependencies between builds,
# so a source change rebuilds only this crate. The binary is copied out of the cached
# target directory within the same step, and must come out fully static.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    set -eux; \
    target="$(uname -m)-unknown-linux-musl"; \
    export "CC_$(echo "$target" | tr - _)=musl-gcc"; \
    CARGO_PROFILE_RELEASE_STRIP=symbols \
        cargo build --release --locked --target "$target" --bin costmap-operator; \
    install -D -m 0755 "target/$target/release/costmap-operator" /out/costmap-operator; \
    if readelf -d /out/costmap-operator | grep -q NEEDED; then \
        echo "costmap-operator is dynamically linked" >&2; exit 1; \
    fi; \
    /out/costmap-operator --version

# CA certificates (rustls also bundles Mozilla's roots), /etc/passwd with nonroot (65532),
# tzdata; no shell, no package manager.
FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="costmap-operator" \
      org.opencontainers.image.description="Keeps every LiteLLM proxy's model cost map current, with no restart" \
      org.opencontainers.image.source="https://github.com/costmap-operator/costmap-operator" \
      org.opencontainers.image.url="https://github.com/costmap-operator/costmap-operator" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/costmap-operator /costmap-operator
USER 65532:65532
# The operator's HTTP server (maps, /metrics, /healthz, /readyz); the agent uses 8090.
EXPOSE 8080
ENTRYPOINT ["/costmap-operator"]
CMD ["run"]

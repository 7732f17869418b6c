# syntax=docker/dockerfile:1
#
# Gatehouse container image: one statically linked binary on distroless static (CA certificates,
# tzdata, /etc/passwd with `nonroot`; no libc, no shell, no package manager), run as uid 65532.
#
#   docker build -t gatehouse .
#   docker run -d --name gatehouse -p 80:8080 -p 443:8443 \
#     -v gatehouse-state:/var/lib/gatehouse \
#     -v "$PWD/gatehouse.toml:/etc/gatehouse/gatehouse.toml:ro" gatehouse
#
# Why static glibc (crt-static) on distroless/static rather than a dynamic binary on
# distroless/cc: the stripped binary is about 9 MB, distroless/cc about 21 MB (glibc, libssl,
# libstdc++ we do not use), distroless/static about 2 MiB; only the second pair stays well under
# the 30 MB aim. glibc (not musl) keeps the allocator and the resolver we test with: name lookups
# use /etc/hosts and DNS built into the static libc (checked in a chroot with no shared library).
#
# Ports: the shipped config (config/docker.toml) listens on 8080 (and 8443 once a TLS site is
# set), so the non-root user needs no capability; publish them as 80/443 on the host. No setcap:
# file capabilities do not reliably survive COPY --from (moby/moby#38132, moby/buildkit#2250) and
# a binary carrying them fails to start under --cap-drop=ALL. Docker >= 20.10 lets any user bind
# ports below 1024 inside a container (ip_unprivileged_port_start=0), so a mounted config may use
# 80/443 directly there; Kubernetes and CRI-O do not by default.
# `tests/dockerfile.rs` checks the paths, the binary, the subcommands and the config named here;
# README "Install" has the figures.

ARG RUST_VERSION=1

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# The repo's release profile keeps line tables for profiling; the image wants neither them nor
# the symbols.
# crt-static: glibc linked in. With an explicit --target (the build machine's own triple), the
# flag applies to Gatehouse and its dependencies but not to build scripts and proc-macros, which
# cannot be static.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols \
    RUSTFLAGS="-C target-feature=+crt-static"

# Dependencies first, against placeholder sources: this layer is rebuilt only when Cargo.toml or
# Cargo.lock change, not on every source edit. benches/micro.rs must exist for the manifest
# (it names the bench target) and is never built.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > benches/micro.rs \
 && cargo build --release --locked --target "$(rustc -vV | sed -n 's/^host: //p')"

# Gatehouse itself. The placeholders' build is newer than the copied sources' mtimes: touch them
# so cargo rebuilds the crate instead of shipping the placeholder binary.
COPY src ./src
COPY config/docker.toml ./config/docker.toml
RUN touch src/main.rs src/lib.rs \
 && target="$(rustc -vV | sed -n 's/^host: //p')" \
 && cargo build --release --locked --target "$target" \
 && install -D -m 0755 "target/$target/release/gatehouse" /out/gatehouse \
 && /out/gatehouse check --config config/docker.toml \
 && install -d -m 0700 /out/var/lib/gatehouse

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/gatehouse /usr/local/bin/gatehouse
COPY config/docker.toml /etc/gatehouse/gatehouse.toml
# the state dir, owned by the user: a new named volume starts as a copy of it (a bind mount
# must be writable by uid 65532)
COPY --from=build --chown=65532:65532 /out/var/lib/ /var/lib/
USER 65532:65532
VOLUME /var/lib/gatehouse
EXPOSE 8080 8443
# /ready on the admin listener of config/docker.toml; exits 0 ready, 1 not ready, 69 no answer
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/gatehouse", "health", "--admin", "127.0.0.1:9900", "--timeout", "2s"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/gatehouse"]
CMD ["run", "--config", "/etc/gatehouse/gatehouse.toml"]

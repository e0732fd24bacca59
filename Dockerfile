# Multi-stage build: compile in the Rust image, run from a slim Debian.
#
#   docker build -t publishd .
#   docker run -d -p 8080:8080 \
#     -e PUBLISHD_API_TOKENS=... \                     # required: it listens on 0.0.0.0
#     -v /var/run/docker.sock:/var/run/docker.sock \   # the engine publishd drives
#     -v publishd-data:/data \                         # the SQLite database
#     -v $HOME/.docker:/docker-config:ro \             # registry credentials (config.json)
#     publishd
#
# publishd talks to the engine through the mounted socket: it tags, pushes and
# removes images there, so the engine's registry access is what matters, not
# the container's. Mounting the socket gives the container full control of
# that engine; run it only where that is intended.
#
# Two build arguments exist for scripts/container-test.sh, which builds the
# runtime stage where no base image can be pulled; a plain build needs
# neither:
#   BASE    the runtime stage's base image (a Debian bookworm)
#   BINARY  the stage or image that holds /usr/local/bin/publishd: `build`
#           (the stage below), or an image holding a binary built elsewhere.
#           With BuildKit, a build from such an image skips the build stage.

ARG BASE=debian:bookworm-slim
ARG BINARY=build

FROM rust:1-bookworm AS build
WORKDIR /src
# The whole workspace: the manifest names testkit as a member (cargo reads
# every member's manifest), and the crate embeds assets/ and migrations/.
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
COPY assets assets
COPY testkit testkit
RUN cargo build --release --locked -p publishd \
 && strip target/release/publishd \
 && cp target/release/publishd /usr/local/bin/publishd

FROM ${BINARY} AS binary

FROM ${BASE} AS runtime
# A base that already has the CA bundle (the test's) needs no package index.
RUN if [ ! -s /etc/ssl/certs/ca-certificates.crt ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends ca-certificates \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && mkdir -p /data /docker-config
COPY --from=binary /usr/local/bin/publishd /usr/local/bin/publishd
ENV PUBLISHD_LISTEN=0.0.0.0:8080 \
    PUBLISHD_DATABASE=/data/publishd.db \
    DOCKER_HOST=unix:///var/run/docker.sock \
    DOCKER_CONFIG=/docker-config
VOLUME /data
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["publishd"]
CMD ["serve"]

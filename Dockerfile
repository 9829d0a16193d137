# pilotfish container image: build with the Rust toolchain, run on distroless (glibc, no shell).
# docker build -t pilotfish . && docker run -p 8080:8080 -v $PWD/config:/etc/pilotfish pilotfish

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them: a stub crate with the real manifest.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && for b in route_lookup pick sni_resolve; do echo 'fn main() {}' > benches/$b.rs; done \
    && cargo build --release --locked \
    && rm -rf src benches target/release/deps/pilotfish* target/release/pilotfish*
COPY src ./src
COPY benches ./benches
# The same command and profile as `make build`: this is the binary the tests ran against.
RUN cargo build --release --locked && strip target/release/pilotfish

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/pilotfish /usr/local/bin/pilotfish
COPY config/example.toml /etc/pilotfish/pilotfish.toml
ENV PILOTFISH_CONFIG=/etc/pilotfish/pilotfish.toml
USER nonroot:nonroot
EXPOSE 8080 8443 9901
# SIGTERM starts the drain (readyz 503, connections close after their in-flight requests).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/pilotfish", "healthcheck", "http://127.0.0.1:9901/readyz"]
ENTRYPOINT ["/usr/local/bin/pilotfish"]
CMD ["run"]

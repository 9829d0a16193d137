# pilotfish: `make test` runs every test; `make lint` is what CI checks; `make bench` measures.
CARGO ?= cargo
PYTHON ?= python3
# The AWS emulator the discovery tests start (moto 5.2.x).
VENV ?= .venv
MOTO := $(VENV)/bin/moto_server

.PHONY: test lint bench build fmt venv fuzz

build:
	$(CARGO) build --release

# Installs what the tests need (a venv with moto[server] and boto3), then runs every test: the
# benches once in test mode (a smoke run each), then unit, integration and CLI tests.
test: $(MOTO)
	$(CARGO) test --benches --no-fail-fast
	PILOTFISH_VENV=$(abspath $(VENV)) $(CARGO) test --lib --bins --tests --no-fail-fast

venv: $(MOTO)

$(MOTO):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check 'moto[server]>=5.2,<5.3'
	@test -x $(MOTO)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

bench:
	$(CARGO) bench --bench route_lookup --bench pick --bench sni_resolve --bench proxy_e2e

# Fuzz targets (fuzz/, needs a nightly toolchain and `cargo install cargo-fuzz`), FUZZ_SECS each.
FUZZ_SECS ?= 60
fuzz:
	cd fuzz && for t in split_reads request_head; do \
	  $(CARGO) +nightly fuzz run --sanitizer none $$t -- -max_total_time=$(FUZZ_SECS) || exit 1; done

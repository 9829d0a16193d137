# pilotfish: `make test` runs every test; `make lint` is what CI checks; `make bench` measures.
CARGO ?= cargo
VENV ?= .venv

.PHONY: test lint bench build fmt clean-venv

build:
	$(CARGO) build --release

# Everything the tests need is installed here (the AWS emulator venv arrives with discovery).
test:
	$(CARGO) test --all-targets --no-fail-fast -- --test-threads=4

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

bench:
	$(CARGO) bench --bench route_lookup --bench pick --bench sni_resolve

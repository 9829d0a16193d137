# pilotfish: `make test` runs every test; `make lint` is what CI checks; `make bench` measures.
CARGO ?= cargo
PYTHON ?= python3
# The AWS emulator the discovery tests start (moto 5.2.x), and cfn-lint for deploy/.
VENV ?= .venv
MOTO := $(VENV)/bin/moto_server
CFN_LINT := $(VENV)/bin/cfn-lint

.PHONY: test lint bench build fmt venv fuzz screenshot

build:
	$(CARGO) build --release

# Installs what the tests need (a venv with moto[server] and cfn-lint), then runs every test: the
# benches once in test mode (a smoke run each), then unit, integration and CLI tests. The DNS
# discovery tests also need dnsmasq (Debian: dnsmasq-base), which .ci/run installs.
test: $(MOTO) $(CFN_LINT)
	$(CARGO) test --benches --no-fail-fast
	PILOTFISH_VENV=$(abspath $(VENV)) $(CARGO) test --lib --bins --tests --no-fail-fast

venv: $(MOTO) $(CFN_LINT)

$(MOTO):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check 'moto[server]>=5.2,<5.3'
	@test -x $(MOTO)

$(CFN_LINT): $(MOTO)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check 'cfn-lint>=1.58,<2'
	@test -x $(CFN_LINT)

# The README's picture of the dashboard: the browser test's screenshot, kept in docs/ (needs
# chromium: apt-get install chromium).
screenshot:
	PILOTFISH_REQUIRE_CHROMIUM=1 PILOTFISH_SCREENSHOT=$(abspath docs/dashboard.png) $(CARGO) test --test dashboard the_dashboard_renders -- --nocapture

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

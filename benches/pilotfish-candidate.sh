#!/usr/bin/env bash
# pilotfish as the candidate of lb-bench.sh (../shared/bench/): writes a config from the
# LB_BENCH_* environment the harness provides and runs the release binary in the foreground.
set -euo pipefail
: "${LB_BENCH_PORT:?}" "${LB_BENCH_BACKENDS:?}"
dir=$(mktemp -d)
IFS=, read -ra be <<<"$LB_BENCH_BACKENDS"
targets=$(printf '"%s", ' "${be[@]}")
cat >"$dir/pilotfish.toml" <<CONF
[server]
worker_threads = ${LB_BENCH_WORKERS:-1}
admin_bind = "127.0.0.1:0"

[access_log]
format = "off"

[[listeners]]
name = "bench"
bind = "127.0.0.1:${LB_BENCH_PORT}"
default_action = { forward = "backends" }

[[target_groups]]
name = "backends"
algorithm = "round_robin"
targets = [${targets%, }]
CONF
exec "${PILOTFISH_BIN:-$(dirname "$0")/../target/release/pilotfish}" run -c "$dir/pilotfish.toml"

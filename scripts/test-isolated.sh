#!/usr/bin/env bash
# The test phase of scripts/test.sh. It runs inside the private network and
# mount namespace of scripts/test-ns.sh, so it has no network but loopback:
# everything it uses is installed and compiled beforehand by scripts/test.sh.
#
#   scripts/test-ns.sh scripts/test-isolated.sh [CARGO_TEST_ARG...]
set -euo pipefail
cd "$(dirname "$0")/.."
: "${PUBLISHD_TEST_NS:?run through scripts/test.sh (or scripts/test-ns.sh)}"

env_dir=$(mktemp -d /tmp/publishd-test.XXXXXX)
trap 'scripts/test-env.sh down "$env_dir"' EXIT

# phase NAME: closes the phase before (its elapsed seconds) and opens NAME.
phase_name='' phase_started=$SECONDS suite_started=$SECONDS
phase() {
  if [ -n "$phase_name" ]; then
    echo "== ($((SECONDS - phase_started))s) $phase_name"
  fi
  phase_name=$1 phase_started=$SECONDS
  [ -z "$1" ] || echo "== $1"
}

phase "starting three dockerds (20.10 twice, 26 with the containerd store), podman, five registries, a token server and PostgreSQL under $env_dir"
scripts/test-env.sh up "$env_dir"
# shellcheck disable=SC1091
. "$env_dir/env"
# The store's PostgreSQL variants fail, not skip, without a server.
export PUBLISHD_TEST_REQUIRE_POSTGRES=1

phase "cargo test (publishing through dockerd 20.10, the classic store)"
cargo test --workspace --all-targets --locked --offline --no-fail-fast -- "$@" 2>&1 | tee "$env_dir/cargo-test.log"
phase "the publish group again, with the build tag method"
PUBLISHD_TEST_TAG_METHOD=build cargo test --test publish --locked --offline -- "$@" 2>&1 |
  tee -a "$env_dir/cargo-test.log"

phase "the publish, restart, crash, registry-side, registry-source and registry-index groups again, through dockerd 26 (the containerd store)"
PUBLISHD_TEST_ENGINE=docker26 cargo test --locked --offline --no-fail-fast \
  --test publish --test restart --test crash --test registry_side --test registry_sources \
  --test registry_indexes -- "$@" 2>&1 |
  tee -a "$env_dir/cargo-test.log"

phase "the API, publish, restart, crash, reliability, webhook and registry-trust groups again, on PostgreSQL"
# Each test instance gets a database of its own on the test server. A
# killed instance's targets come back when their lease runs out (there is
# no start-up recovery on a shared database): a short lease for the
# restarted binaries keeps the crash tests quick.
PUBLISHD_TEST_STORE=postgres PUBLISHD_LEASE=5 cargo test --locked --offline --no-fail-fast \
  --test api --test publish --test restart --test crash --test events --test untag \
  --test registry_sources --test registry_side --test access --test sources --test healing \
  --test webhooks --test registry_trust --test scopes --test browsers --test exposure -- "$@" 2>&1 |
  tee -a "$env_dir/cargo-test.log"

phase "schemathesis against openapi/openapi.json"
scripts/schemathesis.sh target/debug/publishd "$env_dir/schemathesis"

phase "the benchmark's smallest configuration (scripts/bench.sh --quick), so that it cannot rot"
# Fails the suite when a measurement breaks, never for a missed target.
scripts/bench.sh --quick

phase "the container image: the Dockerfile's runtime stage on a local Debian base, publishing a job (scripts/container-test.sh)"
scripts/container-test.sh
phase ""
echo "== test phase: $((SECONDS - suite_started))s"

# One closing line for the whole suite: cargo's results added up.
awk '/^test result:/ { passed += $4; failed += $6 }
     END { printf "tests: %d passed, %d failed\n", passed, failed }' "$env_dir/cargo-test.log"

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
echo "== starting two dockerds, podman, five registries, a token server and PostgreSQL under $env_dir"
scripts/test-env.sh up "$env_dir"
# shellcheck disable=SC1091
. "$env_dir/env"
# The store's PostgreSQL variants fail, not skip, without a server.
export PUBLISHD_TEST_REQUIRE_POSTGRES=1

echo "== cargo test"
cargo test --workspace --all-targets --locked --offline --no-fail-fast -- "$@" 2>&1 | tee "$env_dir/cargo-test.log"
echo "== the publish group again, with the build tag method"
PUBLISHD_TEST_TAG_METHOD=build cargo test --test publish --locked --offline -- "$@" 2>&1 |
  tee -a "$env_dir/cargo-test.log"

echo "== the API, publish, restart, crash, reliability, webhook and registry-trust groups again, on PostgreSQL"
# Each test instance gets a database of its own on the test server. A
# killed instance's targets come back when their lease runs out (there is
# no start-up recovery on a shared database): a short lease for the
# restarted binaries keeps the crash tests quick.
PUBLISHD_TEST_STORE=postgres PUBLISHD_LEASE=5 cargo test --locked --offline --no-fail-fast \
  --test api --test publish --test restart --test crash --test events --test untag \
  --test registry_sources --test access --test sources --test healing --test webhooks \
  --test registry_trust --test scopes --test browsers --test exposure -- "$@" 2>&1 |
  tee -a "$env_dir/cargo-test.log"

echo "== schemathesis against openapi/openapi.json"
scripts/schemathesis.sh target/debug/publishd "$env_dir/schemathesis"

echo "== the benchmark's smallest configuration (scripts/bench.sh --quick), so that it cannot rot"
# Fails the suite when a measurement breaks, never for a missed target.
scripts/bench.sh --quick

echo "== the container image: the Dockerfile's runtime stage on a local Debian base, publishing a job (scripts/container-test.sh)"
scripts/container-test.sh

# One closing line for the whole suite: cargo's results added up.
awk '/^test result:/ { passed += $4; failed += $6 }
     END { printf "tests: %d passed, %d failed\n", passed, failed }' "$env_dir/cargo-test.log"

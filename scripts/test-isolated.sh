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
echo "== starting two dockerds, podman, five registries and a token server under $env_dir"
scripts/test-env.sh up "$env_dir"
# shellcheck disable=SC1091
. "$env_dir/env"

echo "== cargo test"
cargo test --workspace --all-targets --locked --offline --no-fail-fast -- "$@" 2>&1 | tee "$env_dir/cargo-test.log"
echo "== the publish group again, with the build tag method"
PUBLISHD_TEST_TAG_METHOD=build cargo test --test publish --locked --offline -- "$@" 2>&1 |
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

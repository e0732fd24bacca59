#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine: formatting, lints, unit
# tests, and integration tests against a real Docker engine and real
# registries that this script starts privately and stops again.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

env_dir=$(mktemp -d /tmp/publishd-test.XXXXXX)
trap 'scripts/test-env.sh down "$env_dir"' EXIT
echo "== starting two dockerds and two registries under $env_dir"
scripts/test-env.sh up "$env_dir"
# shellcheck disable=SC1091
. "$env_dir/env"

echo "== cargo test"
cargo test --all-targets --locked -- "$@" 2>&1 | tee "$env_dir/cargo-test.log"

echo "== schemathesis against openapi/openapi.json"
scripts/schemathesis.sh target/debug/publishd "$env_dir/schemathesis"

# One closing line for the whole suite: cargo's results added up.
awk '/^test result:/ { passed += $4; failed += $6 }
     END { printf "tests: %d passed, %d failed\n", passed, failed }' "$env_dir/cargo-test.log"

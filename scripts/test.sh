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
echo "== starting dockerd and two registries under $env_dir"
scripts/test-env.sh up "$env_dir"
# shellcheck disable=SC1091
. "$env_dir/env"

echo "== cargo test"
cargo test --all-targets --locked -- "$@"

echo "== schemathesis against openapi/openapi.json"
scripts/schemathesis.sh target/debug/publishd "$env_dir/schemathesis"

#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine: formatting, lints, unit
# tests, and integration tests against real Docker engines, Podman and real
# registries that the scripts start privately and stop again.
#
# Two phases. First, with the network: install what the tests need, check
# formatting and lints, and compile everything. Then the tests, in a private
# network and mount namespace (scripts/test-ns.sh) where only loopback
# exists: scripts/test-isolated.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== installing what the tests need"
scripts/test-env.sh install
scripts/schemathesis.sh install
echo "== the container test's Debian base (debootstrap, cached in /var/cache/publishd-test)"
scripts/container-test.sh base

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build"
cargo build --workspace --all-targets --locked

echo "== tests, in a private network and mount namespace"
exec scripts/test-ns.sh scripts/test-isolated.sh "$@"

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

# phase NAME: closes the phase before (its elapsed seconds) and opens NAME.
phase_name='' phase_started=$SECONDS
phase() {
  if [ -n "$phase_name" ]; then
    echo "== ($((SECONDS - phase_started))s) $phase_name"
  fi
  phase_name=$1 phase_started=$SECONDS
  echo "== $1"
}

phase "installing what the tests need (and docker 26, cached in /var/cache/publishd-test)"
scripts/test-env.sh install
scripts/schemathesis.sh install
phase "the container test's Debian base (debootstrap, cached in /var/cache/publishd-test)"
scripts/container-test.sh base

phase "cargo fmt --check"
cargo fmt --all --check
phase "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
phase "cargo build"
cargo build --workspace --all-targets --locked

phase "tests, in a private network and mount namespace"
exec scripts/test-ns.sh scripts/test-isolated.sh "$@"

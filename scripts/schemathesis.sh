#!/usr/bin/env bash
# Fuzzes the running API against openapi/openapi.json with schemathesis:
# zero 5xx, and every answer (status, headers, body) must match the spec.
# Needs the environment of test-env.sh; the service under test drives the
# empty engine, so no generated job can ever push anything anywhere.
#
#   scripts/schemathesis.sh install                    install schemathesis
#                                                      (needs the network)
#   scripts/schemathesis.sh PUBLISHD_BINARY WORK_DIR   run it
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: schemathesis.sh install | PUBLISHD_BINARY WORK_DIR"

venv="${SCHEMATHESIS_VENV:-$HOME/.cache/publishd/schemathesis-4.32.5}"
install() {
  [ ! -x "$venv/bin/schemathesis" ] || return 0
  echo "installing schemathesis into $venv" >&2
  if ! python3 -m venv "$venv" 2>/dev/null; then
    # Debian's python3 keeps venv in a package of its own.
    apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install --quiet 'schemathesis==4.32.5'
}
if [ "${1:-}" = install ]; then
  install
  exit 0
fi

binary=${1:?$usage}
work=${2:?$usage}
: "${PUBLISHD_TEST_EMPTY_DOCKER_HOST:?run through scripts/test.sh}"
install

mkdir -p "$work"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# With an API token, as a shared install runs: every request carries it.
token="schemathesis-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
PUBLISHD_API_TOKENS="$token" \
"$binary" serve --listen "127.0.0.1:$port" --database "$work/schemathesis.db" \
  --docker-host "$PUBLISHD_TEST_EMPTY_DOCKER_HOST" --docker-config "$work/no-docker-config" \
  >"$work/schemathesis-serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done

# Run from the work directory: schemathesis keeps its caches in the working
# directory. One worker: its generator trips a CPython 3.11 ast.parse bug
# ("AST constructor recursion depth mismatch") when it runs in threads.
spec=$(pwd)/openapi/openapi.json
cd "$work"
"$venv/bin/schemathesis" run "$spec" \
  --url "http://127.0.0.1:$port" \
  --header "Authorization: Bearer $token" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
  --max-time "${SCHEMATHESIS_MAX_TIME:-90}" \
  --workers 1 \
  --suppress-health-check all

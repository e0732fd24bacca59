#!/usr/bin/env bash
# Publishing throughput on the private engine and registry of test-env.sh:
# one job of N targets (one small image, N custom tags), timed from the job's
# start to its finish, for each worker count given.
#
#   scripts/bench.sh [N] [WORKERS...]        e.g. scripts/bench.sh 60 1 2 4
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-60}; shift || true
workers=("${@:-1 2 4}")
[ ${#workers[@]} -gt 0 ] || workers=(1 2 4)

if [ -z "${PUBLISHD_TEST_NS:-}" ]; then
  cargo build --release --quiet
  # The private engine and registries live in the test namespace.
  exec scripts/test-ns.sh "$0" "$count" "${workers[@]}"
fi
dir=$(mktemp -d /tmp/publishd-bench.XXXXXX)
trap 'kill "${server:-0}" 2>/dev/null || true; scripts/test-env.sh down "$dir"' EXIT
scripts/test-env.sh up "$dir" 2>/dev/null
# shellcheck disable=SC1091
. "$dir/env"
export DOCKER_HOST=$PUBLISHD_TEST_DOCKER_HOST
mkdir -p "$dir/img" && head -c 4096 /dev/urandom >"$dir/img/blob"
tar -C "$dir/img" -c . | docker import - bench/src:1 >/dev/null

for n in ${workers[*]}; do
  rm -f "$dir"/bench.db*
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  ./target/release/publishd serve --listen "127.0.0.1:$port" --database "$dir/bench.db" \
    --workers "$n" --docker-config "$dir/none" >"$dir/serve.log" 2>&1 &
  server=$!
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  tags=$(python3 -c "import json; print(json.dumps([{'strategy':'custom','value':'t%d-%d' % ($n, i)} for i in range($count)]))")
  id=$(curl -sf -XPOST "http://127.0.0.1:$port/api/v1/jobs" \
    -d "{\"repo\":\"$PUBLISHD_TEST_REGISTRY/bench\",\"images\":[{\"name\":\"app\",\"source\":\"bench/src:1\"}],\"tags\":$tags}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  while :; do
    job=$(curl -sf "http://127.0.0.1:$port/api/v1/jobs/$id")
    status=$(echo "$job" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')
    case $status in succeeded|failed|cancelled) break ;; esac
    sleep 0.2
  done
  echo "$job" | python3 -c "
import json, sys
from datetime import datetime
job = json.load(sys.stdin)
t = lambda s: datetime.fromisoformat(s.replace('Z', '+00:00'))
secs = (t(job['finished_at']) - t(job['started_at'])).total_seconds()
ok = sum(1 for x in job['targets'] if x['status'] == 'succeeded')
print(f'workers=$n targets={len(job[\"targets\"])} succeeded={ok} seconds={secs:.2f} targets/s={len(job[\"targets\"])/secs:.1f}')
"
  kill "$server"; wait "$server" 2>/dev/null || true
done
